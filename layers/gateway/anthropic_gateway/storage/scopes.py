"""A scope: one thing a request is governed by, as storage sees it.

A request belongs to its key, and to the key's team, user and membership in that team, and to each registered tag
it carries: each is a scope. Each has a record item (pk, sk) that carries the budget bookkeeping every budgeted
scope shares (`max_budget`, `spend`, `reserved`, `budget_headroom`, `reservations`, ...: budgets.py), and may have
limits. Its rate counters (`<pk>`/`RATE#<minute>`) and parallel slots (`<pk>`/`PARALLEL`) live under its pk, so a
scope with rate or parallel limits has a pk of its own (a membership, which shares its team's pk, has a budget
only).

Admission (holds.py) makes checks on scopes, all in one call: a request counted on a rate counter (rates.py), a
parallel slot taken (rates.py), a budget hold (budgets.py). Each check is one conditional write, and knows what
its failed condition means (`Check.failed`): a refusal (the outcomes below, which policy turns into errors), or a
`Verdict`.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from enum import Enum
from typing import Literal, Protocol

from .table import Item, Update


@dataclass(frozen=True)
class Scope:
    kind: str  # "key", "team", "user", "member", "tag": how a refusal names it
    id: str  # the key's id, the team's, the user's (also of a membership), the tag's name
    pk: str  # the record that carries the scope's budget bookkeeping
    sk: str
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    max_parallel_requests: int | None = None
    max_budget: Decimal | None = None
    # Keys only: a hold is taken only while the record's `token` is still this one (the presented key), so a key
    # deleted or regenerated on another instance stops holding at once.
    token: str | None = None
    models: tuple[str, ...] = ()  # the scope's model allowlist (empty: every model); policy checks it
    within: str | None = None  # a membership's team
    # A tag: if its record is gone (unregistered meanwhile), it no longer governs the request, so a hold on it is
    # dropped, not refused.
    optional: bool = False

    @property
    def rate_limited(self) -> bool:
        return self.rpm_limit is not None or self.tpm_limit is not None

    @property
    def parallel_limited(self) -> bool:
        return self.max_parallel_requests is not None

    @property
    def budgeted(self) -> bool:
        return self.max_budget is not None

    @property
    def governed(self) -> bool:
        """Whether admission has anything to check on DynamoDB for this scope."""
        return self.rate_limited or self.parallel_limited or self.budgeted


class Verdict(Enum):
    """What a failed check's condition means, when it is not a refusal."""

    RETRY = "retry"  # the item was repaired (a budget period reset, leases swept, a missing map created)
    DROP = "drop"  # there is nothing to hold on this scope any more (its budget was removed): go on without it


# -- refusals ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RateLimited:
    scope: Scope
    limit: Literal["rpm", "tpm"]  # the one that refused
    retry_after: int  # seconds until the next minute
    used: int  # requests or tokens counted in this minute (0 when the limit is 0)


@dataclass(frozen=True)
class OverBudget:
    scope: Scope
    max_budget: Decimal
    spend: Decimal
    reserved: Decimal  # held by requests in flight
    reset_at: str | None  # when the budget period ends, if it has one


@dataclass(frozen=True)
class TooManyParallel:
    scope: Scope
    limit: int


@dataclass(frozen=True)
class Gone:
    """The scope's record is gone, or (a key) no longer opened by the presented key: deleted or regenerated."""

    scope: Scope


@dataclass(frozen=True)
class Blocked:
    scope: Scope


Refusal = RateLimited | OverBudget | TooManyParallel | Gone | Blocked


class Check(Protocol):
    @property
    def scope(self) -> Scope: ...

    def refused_at_once(self) -> Refusal | None:
        """A refusal that needs no I/O (a limit of 0), or None."""

    def action(self) -> Update:
        """The conditional write that takes the hold (or counts the request)."""

    def holds(self, item: Item) -> bool:
        """Whether `item` (as it was when the condition failed) shows this check's own hold: the same write had
        applied before (its answer was lost, and it was retried)."""

    def failed(self, item: Item) -> Verdict | Refusal:
        """What the failed condition means, given the item as it was ({}: none): a Verdict or a refusal. Blocking:
        may repair the item first (then RETRY)."""
