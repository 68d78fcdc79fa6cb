"""Registered tags: pk=TAG#<name> sk=TAG (listed by gsi1pk=TAG).

A registered tag is a budgeted scope (its budget and limits apply to every request that carries it, whatever its
key or team) and a CloudWatch `Tag` dimension value of its own (metrics.py). The registry is bounded
(MAX_REGISTERED), so the dimension values it adds are too.

`registry` keeps the registered tags in memory, so the request path reads them without I/O.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aws_lambda_powertools import Logger

from ..settings import get_settings
from . import table
from .layout import TAG_SK, list_all, listed, put_new, tag_pk
from .outcomes import Refused
from .scope_items import ScopeRecord, Transaction, apply, change, why_not

logger = Logger(child=True)
# Each registered tag is a CloudWatch dimension value (about 11 custom metrics, billed monthly): a bound the
# operator can plan for. /tag/new refuses past it; the registry never reads more.
MAX_REGISTERED = 1000


@dataclass(kw_only=True)
class TagRecord(ScopeRecord):
    name: str
    description: str | None = None

    def to_item(self) -> table.Item:
        item = self.attributes()
        item.update(pk=tag_pk(self.name), sk=TAG_SK, **listed("TAG", self.created_at, self.name))
        return item


def get(name: str) -> TagRecord | None:
    item = table.get(tag_pk(name), TAG_SK)
    return TagRecord.from_item(item) if item is not None else None


def list_tags() -> list[TagRecord]:
    """Every registered tag, oldest first (one paged Query of gsi1)."""
    return [TagRecord.from_item(item) for item in reversed(list_all("TAG"))]


def create(tag: TagRecord, audit: table.Put | None = None) -> Refused | None:
    transaction = Transaction()
    transaction.add(put_new(tag.to_item()), Refused("exists", "tag", tag.name))
    transaction.audited(audit)
    refused = transaction.run(idempotency=f"tag-new#{tag.name}#{tag.created_at}")
    if refused is not None:
        stored = get(tag.name)
        if stored is None or stored.created_at != tag.created_at:
            return refused
    registry.put(tag)
    return None


def update(tag: TagRecord, changes: dict[str, Any], now: str, audit: table.Put | None = None) -> Refused | None:
    pk = tag_pk(tag.name)
    if not apply(change(pk, TAG_SK, tag, changes, now), audit):
        return why_not(pk, TAG_SK, Refused("missing", "tag", tag.name))
    if (stored := get(tag.name)) is not None:
        registry.put(stored)
    return None


def delete(name: str, audit: table.Put | None = None) -> Refused | None:
    transaction = Transaction()
    transaction.add(table.Delete(tag_pk(name), TAG_SK, "attribute_exists(pk)"), Refused("missing", "tag", name))
    transaction.audited(audit)
    refused = transaction.run()
    if refused is None:
        registry.discard(name)
    return refused


class TagRegistry:
    """The registered tags as this process last read them (at most MAX_REGISTERED, oldest first).

    `snapshot()` answers from memory at once. When its copy is older than KEY_CACHE_TTL it starts one refresh in
    a thread of its own (one paged Query of gsi1) and answers with the copy it has: a tag registered on another
    instance counts here from the refresh on, within KEY_CACHE_TTL and one read. Tags registered, changed or
    deleted through this process apply here at once. A refresh that fails is tried again after KEY_CACHE_TTL.
    """

    def __init__(self) -> None:
        self._tags: dict[str, TagRecord] = {}
        self._checked_at: float | None = None  # when the last refresh started
        self._refreshing = False
        self._local: dict[str, tuple[float, TagRecord | None]] = {}  # changes made here: name -> (when, record)
        self._lock = threading.Lock()

    def snapshot(self) -> Mapping[str, TagRecord]:
        with self._lock:
            now = time.monotonic()
            stale = self._checked_at is None or now - self._checked_at > get_settings().key_cache_ttl
            if stale and not self._refreshing:
                self._refreshing = True
                threading.Thread(target=self.refresh, name="tag-registry", daemon=True).start()
            return self._tags

    def refresh(self) -> None:
        """Blocking: read the registered tags again."""
        started = time.monotonic()
        with self._lock:
            self._checked_at = started
        try:
            read = {tag.name: tag for tag in list_tags()[:MAX_REGISTERED]}
        except Exception as exc:
            logger.warning("registered tags not read", extra={"error": type(exc).__name__})
            return
        finally:
            with self._lock:
                self._refreshing = False
        with self._lock:
            # Changes made here while the read ran stay: it may have missed them.
            for name, (at, record) in self._local.items():
                if at >= started and record is None:
                    read.pop(name, None)
                elif at >= started and record is not None:
                    read[name] = record
            self._local = {name: change for name, change in self._local.items() if change[0] >= started}
            self._tags = read  # a new dict: snapshots handed out before stay as they were

    def put(self, tag: TagRecord) -> None:
        with self._lock:
            self._local[tag.name] = (time.monotonic(), tag)
            if tag.name in self._tags or len(self._tags) < MAX_REGISTERED:
                self._tags = {**self._tags, tag.name: tag}

    def discard(self, name: str) -> None:
        with self._lock:
            self._local[name] = (time.monotonic(), None)
            self._tags = {key: value for key, value in self._tags.items() if key != name}

    def clear(self) -> None:
        with self._lock:
            self._tags, self._local, self._checked_at = {}, {}, None


registry = TagRegistry()
