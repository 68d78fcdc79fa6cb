"""Admission of one request across every scope it belongs to, in one DynamoDB call; its settle, in one transaction.

`admit(checks)`: the checks of all the request's scopes (rates.RequestCount, budgets.BudgetHold, rates.ParallelSlot)
go in one write: one UpdateItem when there is one, one TransactWriteItems when there are several. Either every
hold is taken or none is. When conditions fail, the items as they were (returned with the failure) say why, and the
checks are judged in the order given, so the first refusal in that order is the answer, as if they had been made one
after the other. A failure that a repair can clear (a budget period to reset, expired leases to sweep, a missing
map) is repaired, and the write tried again, at most `ATTEMPTS` times in all.

`settle(changes)`: everything a finished request writes (its spend on each scope's record with the release of its
reservation, tpm tokens, its parallel slots released) in one transaction, with an operation marker when it adds
counters, so it applies exactly once however often it is retried. A change whose condition failed is replaced by
what it becomes then (a reservation already swept: the spend alone), and the transaction tried again.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from aws_lambda_powertools import Logger

from . import spend, table
from .scopes import Check, Refusal, Scope, Verdict

logger = Logger(child=True)

ATTEMPTS = 5


@dataclass(frozen=True)
class Admitted:
    holds: tuple[Check, ...]  # the checks whose holds were taken (what settle gives back)


@dataclass(frozen=True)
class Contended:
    """The checks kept failing for reasons a retry should clear (conflicting writes, periods reset meanwhile)."""

    scope: Scope


def admit(checks: Sequence[Check], *, request_id: str) -> Admitted | Refusal | Contended:
    """Take every check's hold in one call, or none: the outcome. Blocking. `request_id` names the attempts."""
    for check in checks:
        if (refusal := check.refused_at_once()) is not None:
            return refusal
    pending = list(checks)
    for attempt in range(ATTEMPTS):
        if not pending:
            break
        actions = [check.action() for check in pending]
        try:
            failed = table.write(actions, token=_token(f"admit-{request_id}", attempt, actions))
        except table.Conflict:
            _back_off(attempt)
            continue
        if not failed:
            return Admitted(tuple(pending))
        outcome = _judge(pending, failed)
        if outcome is not None:
            return outcome
    return Contended(checks[0].scope) if pending else Admitted(())


def _judge(pending: list[Check], failed: table.Failed) -> Admitted | Refusal | None:
    """What the failed conditions of one attempt mean: the outcome, or None to try again (`pending` updated)."""
    if any(pending[index].holds(item) for index, item in failed.items()):
        # Our own hold is there: this same write had applied, all of it (its answer was lost and the call retried).
        return Admitted(tuple(pending))
    repaired, kept = False, []
    for index, check in enumerate(pending):
        verdict = check.failed(failed[index]) if index in failed else None
        if isinstance(verdict, Verdict):
            repaired = True
        elif verdict is not None and not repaired:
            return verdict  # the first refusal in order, with no repair before it
        # A refusal after a repair is judged again on the next attempt: the repair may change it.
        if verdict is not Verdict.DROP:
            kept.append(check)
    pending[:] = kept
    return None


def _token(operation: str, attempt: int, actions: Sequence[table.Action]) -> str:
    # Names one request exactly: a repeat of it (botocore's retry after a lost answer, or the ledger's) is the same
    # request, and a different request never reuses it (DynamoDB refuses a token reused with other parameters).
    return spend.request_token(f"{operation}#{attempt}#{actions!r}")


def _back_off(attempt: int) -> None:
    # Jittered, a few milliseconds: DynamoDB cancels a transaction that meets another write, it does not queue it.
    time.sleep(random.uniform(0.005, 0.02) * (attempt + 1))


# -- settle -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """One item's part of a settle."""

    action: table.Action
    instead: Change | None = None  # what to write when `action`'s condition fails (None: nothing, it is moot)
    counts: bool = False  # adds counters (or its `instead` does): the settle must apply once, however retried
    guard: bool = False  # its condition failing means the whole settle had applied before (exactly once by itself)
    moot: str = ""  # logged when the change is dropped for a failed condition: why nothing was written


class Settled(Enum):
    APPLIED = "applied"
    ALREADY_APPLIED = "already applied"


def settle(changes: Sequence[Change], *, operation: str, marker_ttl: int) -> Settled:
    """Write `changes` in one transaction (one UpdateItem when that is all), exactly once for `operation` (a unique
    id the caller keeps across retries, with the same `marker_ttl`): changes that count go with the operation's
    marker, unless a guard among them already makes the settle apply once. Blocking; raises when DynamoDB does not
    take it (the caller retries later: every retry applies at most once)."""
    pending = list(changes)
    for attempt in range(ATTEMPTS):
        if not pending:
            return Settled.APPLIED
        unguarded = any(change.counts for change in pending) and not any(change.guard for change in pending)
        marker = [Change(spend.marker(operation, marker_ttl), guard=True)] if unguarded else []
        writing = marker + pending
        actions = [change.action for change in writing]
        try:
            failed = table.write(actions, token=_token(operation, attempt, actions))
        except table.Conflict:
            if attempt == ATTEMPTS - 1:
                raise
            _back_off(attempt)
            continue
        if not failed:
            return Settled.APPLIED
        if any(writing[index].guard for index in failed):
            return Settled.ALREADY_APPLIED
        offset = len(marker)
        pending = [
            replacement
            for index, change in enumerate(pending)
            if (replacement := _instead(change) if index + offset in failed else change) is not None
        ]
    raise table.Conflict()


def _instead(change: Change) -> Change | None:
    if change.instead is None and change.moot:
        logger.info(change.moot)
    return change.instead
