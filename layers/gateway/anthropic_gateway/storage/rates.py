"""Rate counters and parallel slots of a scope.

  pk=<scope pk>  sk=RATE#<minute start>  {requests, tokens, ttl}: the UTC minute's requests (counted at admission)
                                         and tokens (added at settle); expires two minutes after its minute
  pk=<scope pk>  sk=PARALLEL             {slots: {slot id: lease expiry}, ttl}: requests in flight

A request is counted if the minute's `requests < rpm_limit` and `tokens < tpm_limit`, in one conditional ADD. A
parallel slot is an entry added while the map has fewer than `max_parallel_requests`; settle removes it. A slot
whose lease has passed was left by an instance that died: it is swept when the full map would refuse a request.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from aws_lambda_powertools import Logger

from . import table
from .scopes import RateLimited, Refusal, Scope, TooManyParallel, Verdict

logger = Logger(child=True)

RATE_WINDOW_SECONDS = 60
# A parallel slot not released by then is taken to be leaked (an instance died mid-request) and may be reused.
# Lambda stops any invocation after 900 s, so a live request on Lambda never holds a slot that long.
PARALLEL_SLOT_LEASE_SECONDS = 960
PARALLEL = "PARALLEL"
_SWEPT_AT_ONCE = 50  # stale slots removed per write


def window(now: datetime) -> int:
    """The start of `now`'s minute, in epoch seconds."""
    return int(now.timestamp()) // RATE_WINDOW_SECONDS * RATE_WINDOW_SECONDS


def _rate_sk(now: datetime) -> str:
    return f"RATE#{window(now)}"


def _counter_ttl(now: datetime) -> int:
    return window(now) + 2 * RATE_WINDOW_SECONDS


@dataclass(frozen=True)
class RequestCount:
    """Count one request on the scope's counter for the minute, if rpm and tpm both allow it."""

    scope: Scope
    now: datetime

    def refused_at_once(self) -> Refusal | None:
        # A paused scope (a limit of 0): no counter item would say so.
        if self.scope.rpm_limit == 0:
            return RateLimited(self.scope, "rpm", self._retry_after(), 0)
        if self.scope.tpm_limit == 0:
            return RateLimited(self.scope, "tpm", self._retry_after(), 0)
        return None

    def action(self) -> table.Update:
        names = {"#requests": "requests", "#ttl": "ttl"}
        values = {":one": 1, ":ttl": _counter_ttl(self.now)}
        conditions: list[str] = []
        if self.scope.rpm_limit is not None:
            conditions.append("(attribute_not_exists(#requests) OR #requests < :rpm)")
            values[":rpm"] = self.scope.rpm_limit
        if self.scope.tpm_limit is not None:
            conditions.append("(attribute_not_exists(#tokens) OR #tokens < :tpm)")
            names["#tokens"], values[":tpm"] = "tokens", self.scope.tpm_limit
        expression = "ADD #requests :one SET #ttl = :ttl"
        return table.Update(self.scope.pk, _rate_sk(self.now), expression, " AND ".join(conditions), names, values)

    def holds(self, item: table.Item) -> bool:
        return False  # a count leaves no trace of whose it is (a retried count may count twice: stricter)

    def failed(self, item: table.Item) -> Verdict | Refusal:
        requests = int(item.get("requests", 0))
        if self.scope.rpm_limit is not None and requests >= self.scope.rpm_limit:
            return RateLimited(self.scope, "rpm", self._retry_after(), requests)
        return RateLimited(self.scope, "tpm", self._retry_after(), int(item.get("tokens", 0)))

    def _retry_after(self) -> int:
        return max(1, math.ceil(window(self.now) + RATE_WINDOW_SECONDS - self.now.timestamp()))


def add_tokens(scope: Scope, tokens: int, now: datetime) -> table.Update:
    """Tokens a finished request used, toward tpm, on the counter of the minute it ended in (no condition)."""
    names = {"#tokens": "tokens", "#ttl": "ttl"}
    values = {":tokens": tokens, ":ttl": _counter_ttl(now)}
    return table.Update(scope.pk, _rate_sk(now), "ADD #tokens :tokens SET #ttl = :ttl", None, names, values)


@dataclass(frozen=True)
class ParallelSlot:
    """Take the parallel slot `slot` (an entry slot -> lease expiry), if the map has room."""

    scope: Scope
    slot: str
    now: datetime

    def refused_at_once(self) -> Refusal | None:
        return None  # a limit of 0 refuses too, but after the checks before it (their refusals come first)

    def action(self) -> table.Update:
        now = int(self.now.timestamp())
        names = {"#slots": "slots", "#slot": self.slot, "#ttl": "ttl"}
        values = {
            ":lease": now + PARALLEL_SLOT_LEASE_SECONDS,
            ":ttl": now + 2 * PARALLEL_SLOT_LEASE_SECONDS,
            ":max": self._limit,
        }
        expression, condition = (
            "SET #slots.#slot = :lease, #ttl = :ttl",
            "attribute_exists(#slots) AND size(#slots) < :max",
        )
        return table.Update(self.scope.pk, PARALLEL, expression, condition, names, values)

    def holds(self, item: table.Item) -> bool:
        slots = item.get("slots")
        return isinstance(slots, dict) and self.slot in slots

    def failed(self, item: table.Item) -> Verdict | Refusal:
        slots = item.get("slots")
        if not isinstance(slots, dict):
            if self._limit < 1:
                return TooManyParallel(self.scope, self._limit)
            self._create_map()
            return Verdict.RETRY
        now = int(self.now.timestamp())
        stale = [name for name, until in slots.items() if until < now]
        if not stale:
            return TooManyParallel(self.scope, self._limit)
        table.write([release_slots(self.scope, stale[:_SWEPT_AT_ONCE])])
        logger.info("expired parallel slots released", extra={"count": min(len(stale), _SWEPT_AT_ONCE)})
        return Verdict.RETRY

    @property
    def _limit(self) -> int:
        return self.scope.max_parallel_requests or 0

    def _create_map(self) -> None:
        # The first slot after the item expired (an idle scope) or ever. A failed condition: another request
        # created it first.
        names = {"#slots": "slots", "#ttl": "ttl"}
        values = {":empty": {}, ":ttl": int(self.now.timestamp()) + 2 * PARALLEL_SLOT_LEASE_SECONDS}
        update = "SET #slots = :empty, #ttl = :ttl"
        table.write([table.Update(self.scope.pk, PARALLEL, update, "attribute_not_exists(#slots)", names, values)])


def release_slots(scope: Scope, slots: list[str]) -> table.Update:
    """Remove the slots from the scope's map; its condition fails only when the map is gone (none held)."""
    names = {"#slots": "slots", **{f"#s{i}": slot for i, slot in enumerate(slots)}}
    expression = "REMOVE " + ", ".join(f"#slots.#s{i}" for i in range(len(slots)))
    return table.Update(scope.pk, PARALLEL, expression, "attribute_exists(#slots)", names)
