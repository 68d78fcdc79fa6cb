"""Budget holds and reservations, on the record of any budgeted scope (a key, team, user, membership or tag).

Every budgeted record carries the same bookkeeping: `max_budget` (absent: no budget), `budget_duration`,
`budget_reset_at`, `spend` (this period), `total_spend`, `reserved` (held by requests in flight), `reservations`
(request id -> {amount, until}) and `budget_headroom`, kept equal to `max_budget - spend - reserved` (0 for an
absent max_budget) by every write: DynamoDB conditions cannot do arithmetic, so the headroom is kept ready-made.

  - a hold (`BudgetHold`): `ADD budget_headroom -amount, reserved +amount SET reservations.<id> = {amount, until}`
    on the condition that headroom is left (all of `amount`, for a batch), the record is not blocked, its period
    has not ended, and (a key) it is still opened by the presented key;
  - its release (`release`), with the spend it settles in the same write: `REMOVE reservations.<id> ADD reserved
    -amount, budget_headroom +amount -cost, spend +cost, ...`, on the condition that the entry is still there, so
    a release applies once, whether it is retried or races the sweep;
  - the sweep: a reservation whose lease (`until`) has passed was left by a process that died; the next hold that
    finds the budget exhausted releases it;
  - the period reset (`reset_if_due`): spend back to 0 and the headroom up by what was spent, once, conditional on
    `budget_reset_at` being unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from aws_lambda_powertools import Logger

from . import table
from .scopes import Blocked, Gone, OverBudget, Refusal, Scope, Verdict
from .table import Number

logger = Logger(child=True)

# Past its lease, a reservation may be released by an admission that finds the budget exhausted. Lambda stops any
# invocation after 900 s, so a live request on Lambda never holds one that long.
RESERVATION_LEASE_SECONDS = 960
_SWEPT_AT_ONCE = 25  # expired reservations released per sweep
_ZERO = Decimal(0)


@dataclass(frozen=True)
class BudgetHold:
    """Hold `amount` on the scope's budget as the reservation `reservation_id`, leased for `lease_seconds`.
    `whole`: only if all of `amount` fits in the headroom (a batch), not merely some headroom is left."""

    scope: Scope
    reservation_id: str
    amount: Decimal
    now: datetime
    lease_seconds: int = RESERVATION_LEASE_SECONDS
    whole: bool = False

    def refused_at_once(self) -> Refusal | None:
        return None

    def action(self) -> table.Update:
        condition = (
            ("#headroom >= :amount AND " if self.whole else "")
            + "#headroom > :zero AND (attribute_not_exists(#blocked) OR #blocked = :no)"
            " AND (attribute_not_exists(#reset) OR #reset > :now) AND attribute_exists(#res)"
            " AND attribute_not_exists(#res.#rid)"
        )
        names = {
            "#headroom": "budget_headroom",
            "#reserved": "reserved",
            "#blocked": "blocked",
            "#reset": "budget_reset_at",
            "#res": "reservations",
            "#rid": self.reservation_id,
        }
        values: dict[str, Any] = {
            ":minus": -self.amount,
            ":amount": self.amount,
            ":zero": 0,
            ":no": False,
            ":now": table.iso_seconds(self.now),
            ":lease": {"amount": self.amount, "until": int(self.now.timestamp()) + self.lease_seconds},
        }
        if self.scope.token is not None:
            condition += " AND #token = :token"
            names["#token"], values[":token"] = "token", self.scope.token
        expression = "ADD #headroom :minus, #reserved :amount SET #res.#rid = :lease"
        return table.Update(self.scope.pk, self.scope.sk, expression, condition, names, values)

    def holds(self, item: table.Item) -> bool:
        reservations = item.get("reservations")
        return isinstance(reservations, dict) and self.reservation_id in reservations

    def failed(self, item: table.Item) -> Verdict | Refusal:
        reservations = item.get("reservations")
        if not item and self.scope.optional:
            return Verdict.DROP
        if not item or (self.scope.token is not None and item.get("token") != self.scope.token):
            return Gone(self.scope)
        if item.get("blocked"):
            return Blocked(self.scope)
        if item.get("max_budget") is None:
            return Verdict.DROP  # the budget was removed since the caller read the scope
        if not isinstance(reservations, dict):  # a record from before reservations had leases
            self._create_map()
            return Verdict.RETRY
        if reset_if_due(self.scope.pk, self.scope.sk, item, self.now):
            return Verdict.RETRY
        if _sweep_expired(self.scope, reservations, int(self.now.timestamp())):
            return Verdict.RETRY
        return OverBudget(
            self.scope,
            max_budget=Decimal(item["max_budget"]),
            spend=Decimal(item.get("spend", 0)),
            reserved=Decimal(item.get("reserved", 0)),
            reset_at=item.get("budget_reset_at") or None,
        )

    def _create_map(self) -> None:
        values: dict[str, Any] = {":empty": {}}
        update = "SET #res = :empty"
        condition = "attribute_not_exists(#res)"
        table.write([table.Update(self.scope.pk, self.scope.sk, update, condition, {"#res": "reservations"}, values)])


def release(scope: Scope, reservation_id: str, amount: Decimal, counters: Mapping[str, Number]) -> table.Update:
    """Give the reservation back to the headroom and add `counters` (the spend it settles; a `budget_headroom`
    among them is merged), if the reservation is still held: its condition fails once released, or swept."""
    increments: dict[str, Number] = {**counters, "reserved": -amount}
    increments["budget_headroom"] = counters.get("budget_headroom", _ZERO) + amount
    names = {"#res": "reservations", "#rid": reservation_id, **{f"#n{i}": name for i, name in enumerate(increments)}}
    values = {f":v{i}": value for i, value in enumerate(increments.values())}
    expression = "REMOVE #res.#rid ADD " + ", ".join(f"#n{i} :v{i}" for i in range(len(increments)))
    return table.Update(scope.pk, scope.sk, expression, "attribute_exists(#res.#rid)", names, values)


def reset_if_due(pk: str, sk: str, item: Mapping[str, Any], now: datetime) -> bool:
    """Start a new budget period on the record (pk, sk) if `item` (as read) says the current one is over: spend
    back to 0, headroom up by what was spent, `budget_reset_at` forward by whole periods (so periods do not drift).

    Conditional on budget_reset_at being unchanged, so when many instances notice at once exactly one resets.
    Returns whether a reset was due (done here or by someone else).
    """
    duration, reset_at = item.get("budget_duration"), item.get("budget_reset_at")
    if not duration or not reset_at or reset_at > table.iso_seconds(now):
        return False
    period = table.parse_duration(duration)
    current = datetime.fromisoformat(reset_at)
    periods = math.floor((now - current) / period) + 1
    names = {"#headroom": "budget_headroom", "#spend": "spend", "#reset": "budget_reset_at"}
    values = {":zero": 0, ":next": table.iso_seconds(current + periods * period), ":seen": reset_at}
    expression = "SET #headroom = #headroom + #spend, #spend = :zero, #reset = :next"
    table.write([table.Update(pk, sk, expression, "#reset = :seen", names, values)])  # failed: reset by another
    return True


def _sweep_expired(scope: Scope, reservations: Mapping[str, object], now: int) -> bool:
    """Release reservations whose lease has passed (their process died); whether any was."""
    expired = [
        (rid, Decimal(lease["amount"]))
        for rid, lease in reservations.items()
        if isinstance(lease, dict) and lease.get("until", 0) < now
    ][:_SWEPT_AT_ONCE]
    for rid, amount in expired:
        table.write([release(scope, rid, amount, {})])  # failed: released meanwhile
    if expired:
        logger.info("expired budget reservations released", extra={"count": len(expired)})
    return bool(expired)
