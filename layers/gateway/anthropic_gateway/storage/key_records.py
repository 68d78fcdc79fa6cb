"""Key records: a virtual key's settings and counters, its alias, and the pointers a regenerate leaves.

  pk=KEY#<key_id>  sk=KEY        the key record: settings, spend, token counts, budget bookkeeping (budgets.py).
                                 key_id is the hash the key was created with and never changes, so spend and
                                 counters survive /key/regenerate.
  pk=KEY#<hash>    sk=KEY        after a regenerate: a pointer {points_to: key_id} for the current hash
  pk=ALIAS#<alias> sk=ALIAS      makes key_alias unique (written in the same transaction as the record)
  gsi1pk=KEY, gsi1sk=<created_at>#<key_id> on key records: lists keys in creation order
  pk=TEAM#<team_id> or USER#<user_id>, sk=KEY#<key_id>: the key's team and user (key_links.py), written in the
                                 same transaction as the record

A presented key is valid when the record found through its hash still has that hash as `token`: a regenerated
key's old hash leads to a record whose token has moved on, so the old key stops working at once.

A key is a scope (`scope`): its rate counters and parallel slots are under its pk (rates.py), its budget on the
record. Every write here that changes max_budget or spend keeps `budget_headroom = (max_budget or 0) - spend -
reserved` true.

Admin changes are optimistic: a write is conditional on the record being as it was read (`updated_at`, `token`), and
raises Conflict when it is not, for the caller to read again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from . import key_links, table
from .outcomes import Refused
from .scopes import Scope
from .table import Conflict as Conflict  # raised here by update, regenerate, delete

_MONEY = frozenset({"max_budget", "spend", "total_spend", "reserved"})
_ZERO = Decimal(0)
_NEW = "attribute_not_exists(pk)"


class AliasTaken(Exception):
    pass


class KeyExists(Exception):
    """The key (or a key with the same hash, possibly a retired one) is already stored."""


class LinkRefused(Exception):
    """The key's new team or user is missing, being deleted, or the user is not a member of the team."""

    def __init__(self, refused: Refused):
        super().__init__(refused)
        self.refused = refused


@dataclass
class KeyRecord:
    token: str  # the current hash (changes on regenerate)
    key_name: str
    key_id: str = ""  # the hash the key was created with: the record's permanent identity
    key_alias: str | None = None
    created_at: str = ""
    updated_at: str = ""
    expires: str | None = None
    blocked: bool = False
    models: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    max_budget: Decimal | None = None
    budget_duration: str | None = None
    budget_reset_at: str | None = None
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    max_parallel_requests: int | None = None
    upstreams: list[str] | None = None  # failover order, e.g. ["anthropic", "bedrock"]; None: DEFAULT_UPSTREAMS
    team_id: str | None = None  # the team and the user the key belongs to (key_links.py)
    user_id: str | None = None
    # Who was handed the plain key for its user, when that was not its user nor a proxy_admin (an audit actor:
    # a team admin's key or session, or whoever moved the key to this user): such a key has no role on the admin
    # API (access.py) until its user or a proxy_admin regenerates it. None: the key acts with its user's role.
    delegated_by: str | None = None
    spend: Decimal = _ZERO  # USD in the current budget period (all time without budget_duration)
    total_spend: Decimal = _ZERO  # all time
    reserved: Decimal = _ZERO  # estimates held by admitted requests that have not settled yet
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    requests: int = 0

    def __post_init__(self) -> None:
        self.key_id = self.key_id or self.token

    @classmethod
    def from_item(cls, item: table.Item) -> KeyRecord:
        # Money stays exact Decimal; every other number becomes the int (or float, in metadata) JSON holds.
        known = {
            name: item[name] if name in _MONEY else table.plain(item[name])
            for name in cls.__dataclass_fields__
            if name in item
        }
        return cls(**known)

    def to_item(self) -> table.Item:
        item = {name: table.stored(value) for name, value in asdict(self).items() if value is not None}
        item["budget_headroom"] = (self.max_budget or _ZERO) - self.spend - self.reserved
        item["reservations"] = {}  # request id -> {amount, until}: the budget holds in flight (budgets.py)
        item.update(pk=record_pk(self.key_id), sk="KEY", gsi1pk="KEY", gsi1sk=f"{self.created_at}#{self.key_id}")
        return item

    def expired(self, now: datetime) -> bool:
        return self.expires is not None and datetime.fromisoformat(self.expires) <= now

    @property
    def scope(self) -> Scope:
        """The key as a scope: its record, its limits, and the token a hold requires."""
        return Scope(
            kind="key",
            id=self.key_id,
            pk=record_pk(self.key_id),
            sk="KEY",
            rpm_limit=self.rpm_limit,
            tpm_limit=self.tpm_limit,
            max_parallel_requests=self.max_parallel_requests,
            max_budget=self.max_budget,
            token=self.token,
            models=tuple(self.models),
        )


def record_pk(key_id: str) -> str:
    return f"KEY#{key_id}"


def scope_of(key_id: str) -> Scope:
    """A key known only by its id, as a scope without limits: where its spend is recorded and its holds released."""
    return Scope(kind="key", id=key_id, pk=record_pk(key_id), sk="KEY")


def _alias(alias: str, key_id: str, condition: str | None = _NEW) -> table.Put:
    return table.Put({"pk": f"ALIAS#{alias}", "sk": "ALIAS", "key_id": key_id}, condition)


def _forget_alias(alias: str) -> table.Delete:
    return table.Delete(f"ALIAS#{alias}", "ALIAS")


def _now() -> str:
    # When the record was written: a write time, not the gateway's (test-movable) clock.
    return datetime.now(UTC).isoformat()


def _audited(actions: list[table.Action], audit: table.Put | None) -> int:
    """Add the change's audit entry, if any, as the transaction's last action; its index (-1: none)."""
    if audit is None:
        return -1
    actions.append(audit)
    return len(actions) - 1


# -- reads --------------------------------------------------------------------------------------------------------


def _get(pk: str) -> table.Item | None:
    return table.get(pk, "KEY")


def load(token: str) -> KeyRecord | None:
    """The record a key hash opens, or None: unknown, deleted, or replaced by /key/regenerate."""
    item = _get(record_pk(token))
    if item is not None and "points_to" in item:
        item = _get(record_pk(item["points_to"]))
    if item is None or item.get("token") != token:
        return None
    return KeyRecord.from_item(item)


def load_by_key_id(key_id: str) -> KeyRecord | None:
    item = _get(record_pk(key_id))
    return KeyRecord.from_item(item) if item is not None and "points_to" not in item else None


def load_by_alias(alias: str) -> KeyRecord | None:
    pointer = table.get(f"ALIAS#{alias}", "ALIAS")
    if pointer is None:
        return None
    item = _get(record_pk(pointer["key_id"]))
    return KeyRecord.from_item(item) if item is not None else None


def list_records() -> list[KeyRecord]:
    """Every key record, newest first. Reads the whole index: fine for the thousands of keys an admin manages."""
    items = table.query_all(
        IndexName="gsi1",
        KeyConditionExpression="gsi1pk = :kind",
        ExpressionAttributeValues={":kind": "KEY"},
        ScanIndexForward=False,
    )
    return [KeyRecord.from_item(item) for item in items if "token" in item]  # a record without one opens nothing


def current_tokens() -> set[str]:
    """The hash every key record is opened by now: one paged Query of the index, reading only `token`."""
    items = table.query_all(
        IndexName="gsi1",
        KeyConditionExpression="gsi1pk = :kind",
        ExpressionAttributeValues={":kind": "KEY"},
        ProjectionExpression="#token",
        ExpressionAttributeNames={"#token": "token"},
    )
    return {item["token"] for item in items if "token" in item}


# -- writes -------------------------------------------------------------------------------------------------------


def put_new(record: KeyRecord, audit: table.Put | None = None) -> None:
    """Store a new key record; its hash must be unused (KeyExists), its alias, if any, free (AliasTaken), and its
    team and user, if any, ready to take it (LinkRefused): checked atomically. `audit`: the change's audit entry,
    stored in the same transaction (every write here takes one)."""
    actions: list[table.Action] = [table.Put(record.to_item(), _NEW)]
    if record.key_alias is not None:
        actions.append(_alias(record.key_alias, record.key_id))
    linked = len(actions)
    links = key_links.relink(record.key_id, (None, None), (record.team_id, record.user_id))
    actions += links.actions
    audited = _audited(actions, audit)
    # The token makes DynamoDB answer a retry (botocore's, after a lost answer) as the success it was.
    failed = table.write(
        actions, token=hashlib.sha256(f"{record.key_id}#{record.created_at}".encode()).hexdigest()[:36]
    )
    if not failed:
        return
    stored = _get(record_pk(record.key_id)) if 0 in failed else None
    if stored is not None and stored.get("created_at") == record.created_at:
        return  # our own write, retried after its answer was lost
    if 0 in failed:
        raise KeyExists()
    if audited in failed:
        raise Conflict()
    if failed_links := [index - linked for index in failed if index >= linked]:
        raise LinkRefused(links.refusal(failed_links))
    raise AliasTaken(record.key_alias)


def update(
    record: KeyRecord,
    changes: Mapping[str, Any],
    *,
    new_alias: str | None = None,
    alias_change: bool = False,
    audit: table.Put | None = None,
) -> None:
    """Apply admin `changes` (name -> value, None removes) to the record as read; Conflict if it changed since.

    A change of max_budget moves budget_headroom by the same amount in the same write, so the headroom stays
    equal to max_budget - spend - reserved whatever requests are settling meanwhile. A change of team_id or
    user_id moves the key's index items in the same transaction (LinkRefused if the new owners cannot take it).
    """
    names = {"#updated_at": "updated_at", "#token": "token"}
    values: dict[str, Any] = {":now": _now(), ":seen": record.updated_at, ":token": record.token}
    sets, removes, adds = ["#updated_at = :now"], [], []
    for index, (name, value) in enumerate(changes.items()):
        names[f"#f{index}"] = name
        if value is None:
            removes.append(f"#f{index}")
        else:
            values[f":f{index}"] = table.stored(value)
            sets.append(f"#f{index} = :f{index}")
    if "max_budget" in changes:
        names["#headroom"] = "budget_headroom"
        values[":delta"] = (table.stored(changes["max_budget"]) or _ZERO) - (record.max_budget or _ZERO)
        adds.append("#headroom :delta")
    expression = "SET " + ", ".join(sets)
    if removes:
        expression += " REMOVE " + ", ".join(removes)
    if adds:
        expression += " ADD " + ", ".join(adds)
    condition = "#updated_at = :seen AND #token = :token"
    actions: list[table.Action] = [table.Update(record_pk(record.key_id), "KEY", expression, condition, names, values)]
    moves_alias = alias_change and new_alias != record.key_alias
    if moves_alias and new_alias is not None:
        actions.append(_alias(new_alias, record.key_id))
    if moves_alias and record.key_alias is not None:
        actions.append(_forget_alias(record.key_alias))
    linked = len(actions)
    owners = (changes.get("team_id", record.team_id), changes.get("user_id", record.user_id))
    links = key_links.relink(record.key_id, (record.team_id, record.user_id), owners)
    actions += links.actions
    audited = _audited(actions, audit)
    failed = table.write(actions)
    if 0 in failed or audited in failed:
        raise Conflict()
    if failed_links := [index - linked for index in failed if index >= linked and index != audited]:
        raise LinkRefused(links.refusal(failed_links))
    if moves_alias and new_alias is not None and 1 in failed:
        raise AliasTaken(new_alias)
    if failed:
        raise Conflict()


def regenerate(
    record: KeyRecord,
    new_token: str,
    new_name: str,
    audit: table.Put | None = None,
    *,
    delegated_by: str | None = None,
) -> KeyRecord:
    """Give the record a new key (its hash and display name); the old one stops opening it in the same transaction.
    Settings, spend and counters stay where they are (on KEY#<key_id>), so requests in flight settle normally;
    `delegated_by` says who the new key was handed to (KeyRecord), None when its user or a proxy_admin.

    The old key's pointer item stays (it leads to a record whose token moved on, so it opens nothing): no key
    that was ever used can be chosen again. The record lists those pointers in `retired`, for delete.
    """
    if new_token in (record.key_id, record.token):  # its own current or original key: never reused
        raise KeyExists()
    now = _now()
    names = {"#token": "token", "#updated_at": "updated_at"}
    values: dict[str, Any] = {":new": new_token, ":name": new_name, ":now": now, ":old": record.token}
    expression = "SET #token = :new, key_name = :name, #updated_at = :now"
    if delegated_by is not None:
        expression += ", delegated_by = :delegated_by"
        values[":delegated_by"] = delegated_by
    else:
        expression += " REMOVE delegated_by"
    if record.token != record.key_id:  # the previous hash was itself a pointer
        expression += " ADD #retired :retired"
        names["#retired"], values[":retired"] = "retired", {record.token}
    pointer = {"pk": record_pk(new_token), "sk": "KEY", "points_to": record.key_id, "token": new_token}
    actions: list[table.Action] = [
        table.Put(pointer, _NEW),
        table.Update(record_pk(record.key_id), "KEY", expression, "#token = :old", names, values),
    ]
    _audited(actions, audit)
    failed = table.write(actions)
    if 0 in failed:
        raise KeyExists()
    if failed:
        raise Conflict()
    record.token, record.key_name, record.updated_at = new_token, new_name, now
    record.delegated_by = delegated_by
    return record


def delete(record: KeyRecord, audit: table.Put | None = None) -> None:
    """Remove the record, its pointers, its alias and its team and user index items. Counters expire on their own
    (TTL)."""
    actions: list[table.Action] = [
        table.Delete(record_pk(record.key_id), "KEY", "#token = :token", {"#token": "token"}, {":token": record.token})
    ]
    if record.token != record.key_id:
        actions.append(table.Delete(record_pk(record.token), "KEY"))
    if record.key_alias is not None:
        actions.append(_forget_alias(record.key_alias))
    actions += key_links.unlink(record.key_id, record.team_id, record.user_id)
    _audited(actions, audit)
    # Read before the delete: its condition (same token) guarantees no regenerate added to the list meanwhile.
    retired = (_get(record_pk(record.key_id)) or {}).get("retired") or set()
    if table.write(actions):
        raise Conflict()
    # Pointers of earlier keys open nothing once the record is gone; removing them is housekeeping.
    table.delete_all((record_pk(token), "KEY") for token in retired)
