"""Registered tags: pk=TAG#<name> sk=TAG (listed by gsi1pk=TAG), and how many there are: pk=TAGS sk=COUNT.

A registered tag is a budgeted scope (its budget and limits apply to every request that carries it, whatever its
key or team) and a CloudWatch `Tag` dimension value of its own (metrics.py). The registry is bounded
(MAX_REGISTERED), so the dimension values it adds are too. The bound is exact: a tag is created in one transaction
with the count's conditional increment (and deleted with its decrement), so concurrent creates cannot pass it. A
table whose tags were registered before the count existed gets it on the next create or delete (`_counted`).

A `TagRegistry` keeps the registered tags in a runtime's memory (runtime.py holds one, and the admin routes keep it
current after their writes), so the request path reads them without I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..settings import Settings
from . import table
from .layout import TAG_SK, list_all, listed, put_new, tag_pk
from .outcomes import Refused
from .registry import Registry
from .scope_items import ScopeRecord, Transaction, apply, change, why_not
from .scopes import Scope

# Each registered tag is a CloudWatch dimension value (about 11 custom metrics, billed monthly): a bound the
# operator can plan for. `create` refuses past it (read when called: tests lower it).
MAX_REGISTERED = 1000
COUNT_PK, COUNT_SK = "TAGS", "COUNT"


@dataclass(kw_only=True)
class TagRecord(ScopeRecord):
    name: str
    description: str | None = None

    @property
    def scope(self) -> Scope:
        return self.as_scope("tag", self.name, tag_pk(self.name), TAG_SK, optional=True)

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
    """Register the tag, unless it exists ("exists") or MAX_REGISTERED tags are ("full")."""
    _counted()
    transaction = Transaction()
    transaction.add(put_new(tag.to_item()), Refused("exists", "tag", tag.name))
    names, values = {"#count": "registered"}, {":one": 1, ":max": MAX_REGISTERED}
    count = table.Update(COUNT_PK, COUNT_SK, "ADD #count :one", "#count < :max", names, values)
    transaction.add(count, Refused("full", "tag", tag.name))
    transaction.audited(audit)
    refused = transaction.run(idempotency=f"tag-new#{tag.name}#{tag.created_at}")
    if refused is not None:
        stored = get(tag.name)
        if stored is None or stored.created_at != tag.created_at:
            return refused
    return None


def update(tag: TagRecord, changes: dict[str, Any], now: str, audit: table.Put | None = None) -> Refused | None:
    pk = tag_pk(tag.name)
    if not apply(change(pk, TAG_SK, tag, changes, now), audit):
        return why_not(pk, TAG_SK, Refused("missing", "tag", tag.name))
    return None


def delete(name: str, audit: table.Put | None = None) -> Refused | None:
    _counted()
    transaction = Transaction()
    transaction.add(table.Delete(tag_pk(name), TAG_SK, "attribute_exists(pk)"), Refused("missing", "tag", name))
    names, values = {"#count": "registered"}, {":minus": -1}
    transaction.add(table.Update(COUNT_PK, COUNT_SK, "ADD #count :minus", None, names, values))
    transaction.audited(audit)
    return transaction.run()


def _counted() -> None:
    """Make the count of registered tags if there is none yet (a new table, or tags registered before it existed):
    the tags there are now. Every create and delete goes through here first and changes the count in its own
    transaction, so none can happen between the listing and the count's creation unless that creation fails
    (another caller made the count first)."""
    if table.get(COUNT_PK, COUNT_SK) is None:
        item = {"pk": COUNT_PK, "sk": COUNT_SK, "registered": len(list_all("TAG"))}
        table.write([table.Put(item, "attribute_not_exists(pk)")])  # a failed condition: made meanwhile, as wanted


class TagRegistry(Registry[TagRecord]):
    """The registered tags as a runtime last read them, every one (oldest first): registry.py. Never cut to a
    bound: a tag left out would have its limits skipped (the table holds at most MAX_REGISTERED: `create`)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__("tag-registry", list_tags, lambda tag: tag.name, None, settings.key_cache_ttl)
