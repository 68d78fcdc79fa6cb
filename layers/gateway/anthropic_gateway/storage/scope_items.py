"""What every budgeted item of the organisation (team, membership, user, tag) shares: budget bookkeeping, admin
changes, transactions and outcomes (layout.py says where the items live).

Every budgeted item carries the budget bookkeeping of a key record, with the same names and meaning, so budget
holds work on any of them unchanged: `max_budget` (absent: no budget), `budget_duration`, `budget_reset_at`,
`spend` (this period), `total_spend`, `reserved`, `reservations` (request id -> {amount, until}) and
`budget_headroom = (max_budget or 0) - spend - reserved`, kept true by every write; and the limits `models`,
`rpm_limit`, `tpm_limit`, `max_parallel_requests`. A period that has ended starts over in budgets.reset_if_due,
as a key's does.

Admin changes are conditional on `updated_at` as read (requests settling meanwhile never touch it), so a change
of max_budget moves the headroom by exactly the difference. Storage answers with outcomes (`Refused`, or None
for done), never with HTTP errors: the routes decide what a refusal means to the caller.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any, Self

from . import key_links, key_records, table
from .layout import KEY_PREFIX
from .outcomes import CONFLICT, Refused
from .scopes import Scope

ZERO = Decimal(0)
MONEY = frozenset({"max_budget", "spend", "total_spend", "reserved"})
# A transaction's attempts when it meets another write to one of its items (a budget hold on a team, say).
_ATTEMPTS = 3


# -- records ------------------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class ScopeRecord:
    """The settings and budget bookkeeping every budgeted item has; subclasses add their own fields."""

    created_at: str = ""
    updated_at: str = ""
    models: list[str] = field(default_factory=list)
    max_budget: Decimal | None = None
    budget_duration: str | None = None
    budget_reset_at: str | None = None
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    max_parallel_requests: int | None = None
    spend: Decimal = ZERO
    total_spend: Decimal = ZERO
    reserved: Decimal = ZERO

    @classmethod
    def from_item(cls, item: table.Item) -> Self:
        # Money stays exact Decimal; every other number becomes the int (or float, in metadata) JSON holds.
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{name: item[name] if name in MONEY else table.plain(item[name]) for name in names & item.keys()})

    def as_scope(
        self, kind: str, id: str, pk: str, sk: str, *, within: str | None = None, optional: bool = False
    ) -> Scope:
        """The record as a scope of the requests it governs. A membership (`within` its team) shares its team's
        pk, where the team's rate counters and slots are: it has a budget, never rates or slots of its own.
        `optional`: see Scope."""
        own_pk = within is None
        return Scope(
            kind=kind,
            id=id,
            pk=pk,
            sk=sk,
            rpm_limit=self.rpm_limit if own_pk else None,
            tpm_limit=self.tpm_limit if own_pk else None,
            max_parallel_requests=self.max_parallel_requests if own_pk else None,
            max_budget=self.max_budget,
            models=tuple(self.models),
            within=within,
            optional=optional,
        )

    def attributes(self) -> table.Item:
        """The record as the attributes of a new item: unset fields left out, budget bookkeeping started."""
        item = {name: table.stored(value) for name, value in asdict(self).items() if value is not None}
        item["budget_headroom"] = (self.max_budget or ZERO) - self.spend - self.reserved
        item["reservations"] = {}
        return item


# -- changes ------------------------------------------------------------------------------------------------------


def change(
    pk: str, sk: str, seen: ScopeRecord, changes: Mapping[str, Any], now: str, *, live: bool = False
) -> table.Update:
    """The Update (for `apply` or a transaction) that applies admin `changes` (name -> value, None removes) to the
    item as `seen`, if nobody changed it since. A change of max_budget moves budget_headroom by the same amount, so
    the headroom stays max_budget - spend - reserved whatever settles meanwhile. `live`: also only while the item
    is not being deleted."""
    names = {"#updated_at": "updated_at"}
    values: dict[str, Any] = {":now": now, ":seen": seen.updated_at}
    sets, removes = ["#updated_at = :now"], []
    for index, (name, value) in enumerate(changes.items()):
        names[f"#f{index}"] = name
        if value is None:
            removes.append(f"#f{index}")
        else:
            values[f":f{index}"] = table.stored(value)
            sets.append(f"#f{index} = :f{index}")
    expression = "SET " + ", ".join(sets)
    if removes:
        expression += " REMOVE " + ", ".join(removes)
    if "max_budget" in changes:
        names["#headroom"] = "budget_headroom"
        values[":delta"] = (changes["max_budget"] or ZERO) - (seen.max_budget or ZERO)
        expression += " ADD #headroom :delta"
    condition = "#updated_at = :seen"
    if live:
        names["#deleting"] = "deleting"
        condition += " AND attribute_not_exists(#deleting)"
    return table.Update(pk, sk, expression, condition, names, values)


def apply(update: table.Update, audit: table.Put | None = None) -> bool:
    """One conditional UpdateItem built by `change` (with `audit`, the change's audit entry, one transaction);
    False when its condition failed (read again)."""
    return not table.write([update, *([audit] if audit is not None else [])])


# -- transactions -------------------------------------------------------------------------------------------------


class Transaction:
    """TransactWriteItems whose failed conditions are answers: each action says what its failure means."""

    MAX_ACTIONS = 100  # DynamoDB's limit per transaction

    def __init__(self) -> None:
        self.actions: list[table.Action] = []
        self._meanings: list[Refused] = []

    def audited(self, audit: table.Put | None) -> None:
        """Add the change's audit entry, if any: stored with the change or not at all."""
        if audit is not None:
            self.add(audit)

    def add(self, action: table.Action, if_failed: Refused = CONFLICT) -> None:
        if len(self.actions) >= self.MAX_ACTIONS:
            raise ValueError(f"a transaction holds at most {self.MAX_ACTIONS} actions")
        self.actions.append(action)
        self._meanings.append(if_failed)

    def run(self, *, idempotency: str | None = None) -> Refused | None:
        """Apply every action or none. None when applied; else the meaning of the first failed condition, or
        CONFLICT when other writes kept meeting it. `idempotency`: a string unique to this change, so DynamoDB
        answers a retry of an applied transaction (botocore's, after a lost answer) as the success it was."""
        token = hashlib.sha256(idempotency.encode()).hexdigest()[:36] if idempotency else None
        for _ in range(_ATTEMPTS):
            try:
                failed = table.write(self.actions, token=token)
            except table.Conflict:
                continue
            return self._meanings[min(failed)] if failed else None
        return CONFLICT


def mark_deleting(pk: str, sk: str, now: str, audit: table.Put | None = None) -> bool:
    """Mark the item as being deleted (and blocked, so its keys stop while the cascade runs); False if it is gone.
    Marking it again is harmless: a delete that stopped half-way is finished by the next one. `audit`: the
    delete's audit entry, stored with the mark (the delete starts with its record, or not at all)."""
    names = {"#deleting": "deleting", "#blocked": "blocked", "#updated_at": "updated_at"}
    values = {":yes": True, ":now": now}
    expression = "SET #deleting = :yes, #blocked = :yes, #updated_at = :now"
    mark = table.Update(pk, sk, expression, "attribute_exists(pk)", names, values)
    return not table.write([mark, *([audit] if audit is not None else [])])


def why_not(pk: str, sk: str, gone: Refused) -> Refused:
    """Why a conditional change of item (pk, sk) failed, read back: `gone`, being deleted, or changed meanwhile."""
    item = table.get(pk, sk)
    if item is None:
        return gone
    if item.get("deleting"):
        return Refused("deleting", gone.what, gone.name, gone.team)
    return CONFLICT


def remove(pk: str, sk: str, *, only_if: str = "attribute_exists(pk)") -> bool:
    """Delete one item if `only_if` holds; whether it did."""
    return not table.write([table.Delete(pk, sk, only_if)])


@dataclass
class Cascade:
    """What one admin call may still delete (keys, memberships), so that it answers within seconds: a delete
    that reaches the bound stops, leaves its team or user marked, and the next call carries on from there.
    `tokens`: the hashes of the keys it deleted, for the caller to drop from its key cache."""

    remaining: int
    keys: int = 0
    members: int = 0
    tokens: list[str] = field(default_factory=list)

    def take(self) -> bool:
        if self.remaining <= 0:
            return False
        self.remaining -= 1
        return True


def delete_keys(pk: str, cascade: Cascade, unfinished: Refused, **owner: str) -> Refused | None:
    """Delete the keys indexed under `pk` (a team's or a user's; only `owner`'s, as key_links.key_ids), each in
    its own record's transaction (key_records.delete: pointers, alias and index items too). `unfinished` when the
    cascade's bound stopped it first, CONFLICT when a key kept changing under it."""
    for key_id in key_links.key_ids(pk, **owner):
        if not cascade.take():
            return unfinished
        for _ in range(_ATTEMPTS):
            record = key_records.load_by_key_id(key_id)
            if record is None:  # no record behind the index item: only the item is left to remove
                remove(pk, KEY_PREFIX + key_id)
                break
            try:
                key_records.delete(record)
            except key_records.Conflict:  # regenerated or changed meanwhile: read it again
                continue
            cascade.tokens.append(record.token)
            cascade.keys += 1
            break
        else:
            return CONFLICT
    return None
