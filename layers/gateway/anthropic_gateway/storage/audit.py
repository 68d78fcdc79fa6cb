"""The audit log: one item per change made through the admin API or by a single sign-on, written in the change's
own transaction.

  pk=AUDIT#<YYYY-MM-DD>  sk=<at>#<id>       an entry, in the partition of its UTC day
  gsi1pk=AUDIT#<target>  gsi1sk=<at>#<id>   the same entry, listed by what it changed (key:<key_id>, team:<id>...)
  ttl                                       when DynamoDB deletes it (AUDIT_RETENTION_DAYS after `at`)

Every read is a Query of a bounded range: one target's entries between two times (gsi1), or the day partitions
of a date range, newest first; actor and action narrow either with a filter. `page` reads at most MAX_QUERIES
Queries per call and hands back a cursor where it stopped, so no call scans the table or runs long.

A change and its entry are one transaction (`entry.put()` is an action of the change's write): either both are
stored or neither, so no change exists without its record.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from . import table

PREFIX = "AUDIT#"
MAX_QUERIES = 40  # Queries one page may read (day partitions with nothing to show count too)


@dataclass(frozen=True)
class Entry:
    """One change: when, who (`actor`: master, key:<alias or token>, sso:<subject> for a console session,
    idp:<subject> for what the identity provider changed at that person's sign-in; and the user behind it), what
    (`action`, e.g. key.update), to what (`target`, e.g. key:<key_id>), and the changed fields before and after
    (None: the thing did not exist before, or does not after). Never a secret: the caller builds before/after
    from public fields only (audit.py)."""

    at: str  # ISO 8601, UTC, microseconds
    actor: str
    action: str
    target: str
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    actor_user_id: str | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])

    @property
    def day(self) -> str:
        return self.at[:10]

    @property
    def sort_key(self) -> str:
        return f"{self.at}#{self.id}"

    def item(self, retention_days: int) -> table.Item:
        expires = datetime.fromisoformat(self.at) + timedelta(days=retention_days)
        item: table.Item = {
            "pk": PREFIX + self.day,
            "sk": self.sort_key,
            "gsi1pk": PREFIX + self.target,
            "gsi1sk": self.sort_key,
            "ttl": int(expires.timestamp()),
            "id": self.id,
            "at": self.at,
            "actor": self.actor,
            "action": self.action,
            "target": self.target,
        }
        for name in ("actor_user_id", "before", "after"):
            if (value := getattr(self, name)) is not None:
                item[name] = table.stored(value)
        return item

    def put(self, retention_days: int) -> table.Put:
        """The action that stores the entry, for the transaction of the change it records."""
        return table.Put(self.item(retention_days), "attribute_not_exists(pk)")

    @classmethod
    def from_item(cls, item: table.Item) -> Entry:
        return cls(
            at=str(item["at"]),
            actor=str(item["actor"]),
            action=str(item["action"]),
            target=str(item["target"]),
            before=item.get("before"),
            after=item.get("after"),
            actor_user_id=item.get("actor_user_id"),
            id=str(item["id"]),
        )


@dataclass(frozen=True)
class Filters:
    start: date
    end: date  # inclusive
    actor: str | None = None  # an actor as recorded, or the user id behind it
    target: str | None = None
    action: str | None = None  # an action, or its start ("key" for every key action)


@dataclass(frozen=True)
class Page:
    entries: list[Entry]
    cursor: str | None  # where the next page starts; None: nothing more in the range


class BadCursor(ValueError):
    pass


def page(filters: Filters, size: int, cursor: str | None) -> Page:
    """Up to `size` entries matching `filters`, newest first, from `cursor` (a previous page's) on."""
    position = _decode(cursor) if cursor else {}
    if filters.target is not None:
        return _target_page(filters, filters.target, size, position)
    return _days_page(filters, size, position)


def _range(filters: Filters) -> tuple[str, str]:
    # Sort keys are <ISO time>#<id>: every entry of the range sorts between these two.
    return filters.start.isoformat(), (filters.end + timedelta(days=1)).isoformat()


def _query(key_condition: str, values: dict[str, Any], filters: Filters) -> dict[str, Any]:
    """A Query's conditions: `key_condition` on `values` (:low and :high, the range's ends, added here), then the
    filters' (action is one of DynamoDB's reserved words: names go through placeholders)."""
    low, high = _range(filters)
    values = {**values, ":low": low, ":high": high}
    names: dict[str, str] = {}
    conditions: list[str] = []
    if filters.actor is not None:
        names |= {"#actor": "actor", "#actor_user_id": "actor_user_id"}
        values[":actor"] = filters.actor
        conditions.append("(#actor = :actor OR #actor_user_id = :actor)")
    if filters.action is not None:
        names["#action"] = "action"
        values[":action"] = filters.action
        conditions.append("begins_with(#action, :action)")
    query: dict[str, Any] = {"KeyConditionExpression": key_condition, "ExpressionAttributeValues": values}
    if conditions:
        query |= {"FilterExpression": " AND ".join(conditions), "ExpressionAttributeNames": names}
    return query


def _target_page(filters: Filters, target: str, size: int, position: dict[str, Any]) -> Page:
    query: dict[str, Any] = {
        "IndexName": "gsi1",
        **_query("gsi1pk = :target AND gsi1sk BETWEEN :low AND :high", {":target": PREFIX + target}, filters),
        "ScanIndexForward": False,
    }
    entries: list[Entry] = []
    last = position.get("key")
    _check_start(last, "gsi1pk", PREFIX + target)
    for _ in range(MAX_QUERIES):
        if last is not None:
            query["ExclusiveStartKey"] = last
        query["Limit"] = size - len(entries)
        answer = table.handle().query(**query)
        entries += [Entry.from_item(item) for item in answer.get("Items", [])]
        last = answer.get("LastEvaluatedKey")
        if last is None or len(entries) >= size:
            break
    return Page(entries, _encode({"key": last}) if last is not None else None)


def _days_page(filters: Filters, size: int, position: dict[str, Any]) -> Page:
    day = date.fromisoformat(position["day"]) if "day" in position else filters.end
    last = position.get("key")
    _check_start(last, "pk", PREFIX + day.isoformat())
    entries: list[Entry] = []
    for _ in range(MAX_QUERIES):
        if day < filters.start or len(entries) >= size:
            break
        query: dict[str, Any] = {
            **_query("pk = :day AND sk BETWEEN :low AND :high", {":day": PREFIX + day.isoformat()}, filters),
            "ScanIndexForward": False,
            "ConsistentRead": True,
            "Limit": size - len(entries),
        }
        if last is not None:
            query["ExclusiveStartKey"] = last
        answer = table.handle().query(**query)
        entries += [Entry.from_item(item) for item in answer.get("Items", [])]
        last = answer.get("LastEvaluatedKey")
        if last is None:
            day -= timedelta(days=1)
    if day < filters.start:
        return Page(entries, None)
    return Page(entries, _encode({"day": day.isoformat(), "key": last}))


def _encode(position: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(position, separators=(",", ":")).encode()).decode()


def _decode(cursor: str) -> dict[str, Any]:
    """A cursor this module wrote; BadCursor for anything else (it names DynamoDB keys: checked, not trusted)."""
    try:
        position = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        if not isinstance(position, dict) or set(position) - {"day", "key"}:
            raise ValueError("unknown fields")
        if "day" in position:
            date.fromisoformat(str(position["day"]))
        key = position.get("key")
        if key is not None and not (
            isinstance(key, dict) and set(key) <= _KEY_NAMES and all(isinstance(v, str) for v in key.values())
        ):
            raise ValueError("not a table key")
    except (ValueError, binascii.Error):
        raise BadCursor("cursor: not a cursor this API gave; start without one") from None
    return position


def _check_start(key: dict[str, str] | None, name: str, value: str) -> None:
    """A cursor's key must be in the partition the Query reads (a cursor of another filter is not)."""
    if key is not None and key.get(name) != value:
        raise BadCursor("cursor: it belongs to other filters; start without one")


_KEY_NAMES = frozenset({"pk", "sk", "gsi1pk", "gsi1sk"})
