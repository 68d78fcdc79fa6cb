"""A bounded set of admin-created records (registered tags, teams) kept in a runtime's memory, so the request path
and the metrics read them without I/O (tags.py's TagRegistry, teams.py's TeamRegistry; runtime.py holds one of
each).

`snapshot()` answers from memory at once. When its copy is older than `ttl` (KEY_CACHE_TTL) it starts one refresh
in a thread of its own (one paged Query of gsi1) and answers with the copy it has: a record created on another
instance counts here from the refresh on, within KEY_CACHE_TTL and one read. Records created, changed or deleted
through this runtime apply here at once (the admin routes `put` and `discard` them after their writes). A refresh
that fails is tried again after KEY_CACHE_TTL. At most `limit` records are kept, the oldest ones (teams: each kept
one is a CloudWatch dimension value, so the bound is what an operator can plan for); no `limit` keeps every one
(tags: each one's limits apply to requests, so none may be left out; the table bounds them).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping

from aws_lambda_powertools import Logger

logger = Logger(child=True)


class Registry[Record]:
    def __init__(
        self, name: str, read: Callable[[], list[Record]], key: Callable[[Record], str], limit: int | None, ttl: float
    ) -> None:
        """`read`: every record, oldest first (blocking); `key`: a record's name; `limit`: how many are kept (None:
        all); `ttl`: the age (seconds) past which a snapshot starts a refresh."""
        self.name = name
        self.ttl = ttl
        self.limit = limit
        self._read = read
        self._key = key
        self._records: dict[str, Record] = {}
        self._checked_at: float | None = None  # when the last refresh started
        self._loaded_at: float | None = None  # when the read that made the copy started
        self._refreshing = False
        self._local: dict[str, tuple[float, Record | None]] = {}  # changes made here: name -> (when, record)
        self._lock = threading.Lock()

    def snapshot(self) -> Mapping[str, Record]:
        with self._lock:
            now = time.monotonic()
            stale = self._checked_at is None or now - self._checked_at > self.ttl
            if stale and not self._refreshing:
                self._refreshing = True
                threading.Thread(target=self.refresh, name=self.name, daemon=True).start()
            return self._records

    def current(self, max_age: float) -> Mapping[str, Record] | None:
        """The records if they were read within the last `max_age` seconds (as `snapshot`, which refreshes them in
        the background when they are older than KEY_CACHE_TTL); else None: the caller must `load()` them first
        (the request path, whose limits must not wait for a refresh in the background)."""
        with self._lock:
            loaded_at = self._loaded_at
        if loaded_at is None or time.monotonic() - loaded_at > max_age:
            return None
        return self.snapshot()

    def refresh(self) -> None:
        """Blocking: read the records again; a failure is logged (the copy stays as it was)."""
        try:
            self.load()
        except Exception as exc:
            logger.warning("registry not read", extra={"registry": self.name, "error": type(exc).__name__})
        finally:
            with self._lock:
                self._refreshing = False

    def load(self) -> None:
        """Blocking: read the records again; raises when they cannot be read."""
        started = time.monotonic()
        with self._lock:
            self._checked_at = started
        read = {self._key(record): record for record in self._read()[: self.limit]}  # [:None]: all
        with self._lock:
            if self._loaded_at is not None and started < self._loaded_at:
                return  # a read that started later already made the copy: this one's is older
            # Changes made here while the read ran stay: it may have missed them.
            for name, (at, record) in self._local.items():
                if at >= started and record is None:
                    read.pop(name, None)
                elif at >= started and record is not None and (name in read or self._room(read)):
                    read[name] = record
            self._local = {name: change for name, change in self._local.items() if change[0] >= started}
            self._records = read  # a new dict: snapshots handed out before stay as they were
            self._loaded_at = started

    def put(self, record: Record) -> None:
        name = self._key(record)
        with self._lock:
            self._local[name] = (time.monotonic(), record)
            if name in self._records or self._room(self._records):
                self._records = {**self._records, name: record}

    def _room(self, records: Mapping[str, Record]) -> bool:
        return self.limit is None or len(records) < self.limit

    def discard(self, name: str) -> None:
        with self._lock:
            self._local[name] = (time.monotonic(), None)
            self._records = {key: value for key, value in self._records.items() if key != name}

    def clear(self) -> None:
        with self._lock:
            self._records, self._local, self._checked_at, self._loaded_at = {}, {}, None, None
