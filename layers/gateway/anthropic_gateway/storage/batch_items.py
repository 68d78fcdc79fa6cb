"""Batch items: the Message Batches a key created, from the create's answer until they are settled.

  pk=BATCH#<batch id>  sk=BATCH  {key_id, scopes, estimate, reserved, reservation_id, state: open|settled,
                                  created_at, ended_seen_at, settled_cost, settled_at, ttl}
  `scopes`: [{kind, id, pk, sk, held}], the records its cost is recorded on (its key's, team's, membership's,
  user's, tags'), and which of them hold `reserved` on their budget.
  gsi1pk=BATCH#OPEN, gsi1sk=<due time>#<batch id> while open: the sweep finds the batches due, oldest first

Settling flips `state` from open to settled on the condition that it is open, in the same transaction as the key's
spend (`settled` is a guard change of holds.settle): one fetch or sweep settles a batch, exactly once, or none does.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from decimal import Decimal

from . import key_records, table
from .holds import Change
from .scopes import Scope

OPEN_INDEX = "BATCH#OPEN"  # gsi1pk of the batches not settled yet
ITEM_TTL = timedelta(days=30)


def _pk(batch_id: str) -> str:
    return f"BATCH#{batch_id}"


def _due_key(due: datetime, batch_id: str) -> str:
    return f"{table.iso_seconds(due)}#{batch_id}"


def remember(
    batch_id: str,
    *,
    key_id: str,
    estimate: Decimal,
    reserved: Decimal,
    reservation_id: str,
    now: datetime,
    due: datetime,
    ended: bool,
    scopes: Sequence[Scope] = (),
    held: Sequence[Scope] = (),
) -> bool:
    """Store a new open batch, due to be settled at its estimate at `due`. False when another batch item has its
    id (never ours: a write retried after its answer was lost finds its own item, and that counts as stored)."""
    item: table.Item = {
        "pk": _pk(batch_id),
        "sk": "BATCH",
        "key_id": key_id,
        "estimate": estimate,
        "reserved": reserved,
        "reservation_id": reservation_id,
        "state": "open",
        "created_at": table.iso_seconds(now),
        "ttl": int((now + ITEM_TTL).timestamp()),
        "gsi1pk": OPEN_INDEX,
        "gsi1sk": _due_key(due, batch_id),
    }
    if scopes:
        item["scopes"] = [
            {"kind": scope.kind, "id": scope.id, "pk": scope.pk, "sk": scope.sk, "held": scope in held}
            for scope in scopes
        ]
    if ended:
        item["ended_seen_at"] = table.iso_seconds(now)
    failed = table.write([table.Put(item, "attribute_not_exists(pk)")])
    return not failed or failed[0].get("reservation_id") == reservation_id


def note_ended(batch_id: str, now: datetime, due: datetime) -> None:
    """The batch was seen ended: it is due at `due` now. Nothing changes for a batch unknown, settled, or already
    noted (its condition fails)."""
    names = {"#ended": "ended_seen_at", "#due": "gsi1sk", "#state": "state"}
    values = {":now": table.iso_seconds(now), ":due": _due_key(due, batch_id), ":open": "open"}
    condition = "#state = :open AND attribute_not_exists(#ended)"
    table.write([table.Update(_pk(batch_id), "BATCH", "SET #ended = :now, #due = :due", condition, names, values)])


def scopes_of(item: table.Item) -> tuple[list[Scope], list[Scope]]:
    """The scopes a batch's cost is recorded on, and those whose budget holds its reservation. A batch stored
    before batches had scopes: its key, which holds the reservation if it has one."""
    stored = item.get("scopes")
    if not isinstance(stored, list):
        key = key_records.scope_of(str(item["key_id"]))
        return [key], [key]
    covered = [Scope(kind=str(s["kind"]), id=str(s["id"]), pk=str(s["pk"]), sk=str(s["sk"])) for s in stored]
    return covered, [scope for scope, s in zip(covered, stored, strict=True) if s.get("held")]


def get(batch_id: str) -> table.Item | None:
    return table.get(_pk(batch_id), "BATCH")


def due(now: datetime, limit: int) -> list[str]:
    """The ids of up to `limit` open batches whose due time has passed, the longest due first."""
    items = table.query_page(
        IndexName="gsi1",
        KeyConditionExpression="gsi1pk = :open AND gsi1sk < :now",
        ExpressionAttributeValues={":open": OPEN_INDEX, ":now": table.iso_seconds(now)},
        Limit=limit,
    )
    return [str(item["pk"]).removeprefix("BATCH#") for item in items]


def settled(batch_id: str, cost: Decimal, now: datetime) -> Change:
    """The batch's part of its settle: open -> settled at `cost`, out of the open index. A guard: its condition
    fails when the batch was settled before (or is unknown), and then the whole settle is not applied."""
    names = {"#state": "state", "#cost": "settled_cost", "#at": "settled_at"}
    values = {":settled": "settled", ":open": "open", ":cost": cost, ":now": table.iso_seconds(now)}
    expression = "SET #state = :settled, #cost = :cost, #at = :now REMOVE gsi1pk, gsi1sk"
    return Change(table.Update(_pk(batch_id), "BATCH", expression, "#state = :open", names, values), guard=True)
