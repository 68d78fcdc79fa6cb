"""What a request may do, checked on every pass-through request before it goes upstream; spend at the end.

Policy: which scopes a request belongs to (`scopes`: its key, the key's team, its membership in that team, its
user, and each registered tag the request carries), and what storage's outcomes mean for the client. A request is
admitted only if every one of them allows it. `admit` runs after authentication (blocked and expired keys, and keys
of blocked teams and users, never get here) and refuses, in order, naming the scope that refused:
  - a model outside any scope's `models` allowlist           -> 403 permission_error   (no I/O)
  - more than `rpm_limit` requests or `tpm_limit` tokens in the current minute -> 429 rate_limit_error, retry-after
  - a spent budget (`max_budget` in the current `budget_duration` period)  -> 402 billing_error
  - more than `max_parallel_requests` in flight             -> 429 rate_limit_error, retry-after
  - a key deleted, regenerated or blocked, or a team, user or tag blocked or deleted, meanwhile (seen by the
    budget hold) -> 401 authentication_error
  - DynamoDB not answering within the request's deadline    -> 503 api_error (a limit that cannot be checked is
    not waived)
Requests whose scopes have no budget or limits cost no DynamoDB call here: the common case stays cached lookups
(the key's record, its team's, user's and membership's: owners.py; the registered tags: storage/tags.py). The
others cost one: the rate counts, the budget holds and the parallel slots of every scope are taken together
(storage/holds.py: one UpdateItem, or one TransactWriteItems for several), all or none, and when conditions fail
the refusal is the first in the order above, as if checked one by one.

The budget hold reserves an estimate of the request's cost (`estimate_cost`, an upper bound for nearly every
request) on every budgeted scope; `settle` (after the body ended) records the actual cost, tokens and requests on
every scope, gives the reservations back and frees the slots, in one transaction applied exactly once (docs/keys.md
"Budgets: the guarantee"). Requests that hold nothing leave their counters to the ledger, which writes them
coalesced.

Bounded: admission's DynamoDB work runs under the request's AWS deadline (AwsCalls.call); past it the request gets a
503 and settle waits for the late work before it releases what that work took. A settle write that fails is handed
to the ledger, which retries it (it applies once) until DynamoDB answers.

For other callers (batches): `reserve_budget` holds an amount on the budgets of a request's scopes under an id and
a lease; `settle_budget` and `settle_changes` record the exact cost once on each and release the holds.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from functools import partial
from typing import Protocol

from aws_lambda_powertools import Logger

from . import keys, money, pricing
from .auth import Principal
from .aws import AwsCalls, Unavailable
from .bedrock_models import model_table
from .errors import GatewayError
from .exchange import Admission, Exchange
from .keys import KeyCache
from .ledger import Ledger, Write
from .owners import OwnersCache
from .request_body import RequestBody
from .settings import Settings
from .storage import budgets, holds, key_records, rates, spend
from .storage.scopes import Blocked, Check, Gone, OverBudget, RateLimited, Refusal, Scope, TooManyParallel
from .storage.table import Number
from .storage.tags import TagRecord, TagRegistry
from .usage import Usage

logger = Logger(child=True)

# Paths whose JSON body names the model (the allowlist is checked there), and the batch create path.
MODEL_PATHS = frozenset({"/v1/messages", "/v1/messages/count_tokens", "/v1/complete"})
BATCH_PATH = "/v1/messages/batches"
ESTIMATED_PATH = "/v1/messages"  # the only path whose response carries a cost the gateway sees
_SNAPSHOT = re.compile(r"(.+)-\d{8}")
_ZERO = Decimal(0)


class Parts(Protocol):
    """What governance uses of the running gateway (runtime.py's `Runtime` has them)."""

    settings: Settings
    aws: AwsCalls
    ledger: Ledger
    unknown_models: pricing.UnknownModels
    key_cache: KeyCache
    owners: OwnersCache
    tag_registry: TagRegistry


def scopes(
    principal: Principal, tags: Sequence[str] = (), registered: Mapping[str, TagRecord] | None = None
) -> list[Scope]:
    """Every scope a request of this virtual key carrying `tags` belongs to: the key, its team, its membership in
    that team, its user, and each of `tags` that is `registered`. Each one's limits are checked, and the request's
    spend is recorded on each (so a team's spend is the sum of its keys' spend)."""
    record, found = principal.record, principal.owners
    assert record is not None, "the master key belongs to no scope"
    covered = [record.scope]
    covered += [owner.scope for owner in (found.team, found.member, found.user) if owner is not None]
    covered += [registered[tag].scope for tag in dict.fromkeys(tags) if registered and tag in registered]
    return covered


# -- admission --------------------------------------------------------------------------------------------------


async def admit(runtime: Parts, exchange: Exchange, body: RequestBody) -> None:
    """Refuse the request (GatewayError), or admit it; what it holds until settle goes on `exchange.admission`.
    Master key: no limits."""
    principal = exchange.principal
    if principal is None or principal.record is None:
        return
    covered = scopes(principal, exchange.tags, await registered_for(runtime, exchange.tags))
    governed = [scope for scope in covered if scope.governed]
    allowlists = [scope for scope in covered if scope.models]
    checks_models = bool(allowlists) and _names_models(exchange)
    budgeted = any(scope.budgeted for scope in governed)
    estimates = budgeted and (exchange.method, exchange.path) == ("POST", ESTIMATED_PATH)
    parsed = await body.parsed(strict=checks_models) if checks_models or estimates else None
    if checks_models:
        check_models(allowlists, exchange.path, parsed, runtime.settings.bedrock_model_ids)
    # Set before the checks that can refuse: settle then releases whatever was taken, refused or not, and records
    # the request's spend on the scopes it was admitted under.
    exchange.admission = admission = Admission(exchange.request_id, tuple(covered))
    if not governed:
        return
    estimate = estimate_cost(parsed, len(body.raw), runtime.unknown_models) if estimates else _ZERO
    try:
        outcome = await runtime.aws.call(_acquire, governed, admission, estimate)
    except Unavailable as exc:
        admission.late = exc.late  # settle waits for it, then releases what it took
        logger.warning("admission timed out", extra={"request_id": exchange.request_id})
        raise GatewayError(503, "The gateway cannot check this key's limits right now (timeout); retry.") from None
    except Exception as exc:
        # Fail closed: a limit that cannot be checked is not waived. 503 tells SDKs to retry.
        logger.exception("admission failed", extra={"request_id": exchange.request_id})
        raise GatewayError(
            503, f"The gateway cannot check this key's limits right now ({type(exc).__name__}); retry."
        ) from None
    if not isinstance(outcome, holds.Admitted):
        raise refusal(runtime, outcome)


def _acquire(
    governed: list[Scope], admission: Admission, estimate: Decimal
) -> holds.Admitted | Refusal | holds.Contended:
    """The DynamoDB side of admission (blocking: runs in a worker thread): rate counts first, then budget holds,
    then parallel slots, the order refusals come in."""
    now = keys.utcnow()
    request_id = admission.request_id
    checks: list[Check] = [rates.RequestCount(scope, now) for scope in governed if scope.rate_limited]
    checks += [budgets.BudgetHold(scope, request_id, estimate, now) for scope in governed if scope.budgeted]
    checks += [rates.ParallelSlot(scope, request_id, now) for scope in governed if scope.parallel_limited]
    # Held from here on as far as settle knows: if the write applies but its answer is lost, settle still releases
    # it, and releasing what was never taken changes nothing.
    admission.reserved = estimate if any(isinstance(check, budgets.BudgetHold) for check in checks) else None
    admission.slot = request_id if any(isinstance(check, rates.ParallelSlot) for check in checks) else None
    outcome = holds.admit(checks, request_id=request_id)
    held = outcome.holds if isinstance(outcome, holds.Admitted) else ()  # refused: nothing was taken
    if not any(isinstance(check, budgets.BudgetHold) for check in held):
        admission.reserved = None  # (or the budget was removed meanwhile)
    if not any(isinstance(check, rates.ParallelSlot) for check in held):
        admission.slot = None
    return outcome


async def registered_for(runtime: Parts, tags: Sequence[str]) -> Mapping[str, TagRecord]:
    """The registered tags, for a request that carries tags: from memory (refreshed in the background past
    KEY_CACHE_TTL); read now, under the request's deadline, when this process has no copy younger than
    KEY_CACHE_TTL + AWS_STALE_SECONDS (a cold start, or an outage that outlived it): a 503 when that fails, since a
    tag's limits that cannot be known are not waived."""
    if not tags:
        return {}
    settings, registered_tags = runtime.settings, runtime.tag_registry
    found = registered_tags.current(settings.key_cache_ttl + settings.stale_seconds)
    if found is not None:
        return found
    try:
        await runtime.aws.call_shared("registered-tags", registered_tags.load)
    except Exception as exc:
        logger.warning("registered tags not read", extra={"error": type(exc).__name__})
        raise GatewayError(503, "The gateway cannot read the registered tags' limits right now; retry.") from None
    return registered_tags.snapshot()


def _names_models(exchange: Exchange) -> bool:
    return exchange.method == "POST" and (exchange.path in MODEL_PATHS or exchange.path == BATCH_PATH)


def model_allowed(model: str, allowlist: list[str], bedrock_model_ids: str) -> bool:
    """Exact name, a `prefix*` pattern, or a dated snapshot (`<allowed>-YYYYMMDD`) of an allowed name; a Bedrock id
    (`anthropic.claude-...`) is also allowed as the Anthropic model it serves (bedrock_models, with the runtime's
    BEDROCK_MODEL_IDS)."""
    served = model_table(bedrock_model_ids).anthropic_model(model)
    return _allowed(model, allowlist) or (served is not None and _allowed(served, allowlist))


def _allowed(model: str, allowlist: list[str]) -> bool:
    snapshot = _SNAPSHOT.fullmatch(model)
    for allowed in allowlist:
        if model == allowed or (allowed.endswith("*") and model.startswith(allowed[:-1])):
            return True
        if snapshot and snapshot.group(1) == allowed:
            return True
    return False


def check_models(allowlists: Sequence[Scope], path: str, parsed: object, bedrock_model_ids: str) -> None:
    """403 unless every scope's allowlist (`models`: the request may use the intersection) allows the model of
    the request, or of each request in a batch (`bedrock_model_ids`: as for `model_allowed`)."""
    if path == BATCH_PATH:
        requests = parsed.get("requests") if isinstance(parsed, dict) else None
        if not isinstance(requests, list):
            raise GatewayError(400, "requests: expected a list of batch requests.")
        for index, entry in enumerate(requests):
            params = entry.get("params") if isinstance(entry, dict) else None
            model = params.get("model") if isinstance(params, dict) else None
            _check_model(allowlists, model, f"requests[{index}].params.model", bedrock_model_ids)
        return
    model = parsed.get("model") if isinstance(parsed, dict) else None
    _check_model(allowlists, model, "model", bedrock_model_ids)


def _check_model(allowlists: Sequence[Scope], model: object, where: str, bedrock_model_ids: str) -> None:
    if not isinstance(model, str):
        raise GatewayError(400, f"{where}: expected a string naming the model.")
    for scope in allowlists:
        if not model_allowed(model, list(scope.models), bedrock_model_ids):
            shown = ", ".join(scope.models[:20]) + (", ..." if len(scope.models) > 20 else "")
            who = _subject(scope)
            raise GatewayError(403, f"{who} may not use model {model[:200]!r} ({where}). Allowed models: {shown}.")


def estimate_cost(parsed: object, body_bytes: int, unknown_models: pricing.UnknownModels) -> Decimal:
    """An upper bound of what a Messages request can cost: body bytes / 4 prompt tokens at the model's highest
    input-side rate (the 1-hour cache write, 2x input), plus max_tokens at the output rate (a model pricing.json
    does not know: at `unknown_models`' rate)."""
    request = parsed if isinstance(parsed, dict) else {}
    model = request.get("model") if isinstance(request.get("model"), str) else None
    max_tokens = request.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 0:
        max_tokens = 0
    prompt_tokens = body_bytes // 4 + 1
    rates = pricing.rates_for(model, unknown_models).for_prompt(prompt_tokens)
    input_rate = max(rates.input, rates.cache_write_5m, rates.cache_write_1h)
    return (prompt_tokens * input_rate + max_tokens * rates.output) / 1_000_000


def refusal(runtime: Parts, outcome: Refusal | holds.Contended) -> GatewayError:
    """The Anthropic-shaped error a refusal is; a key, team or user found blocked or gone is forgotten by the
    runtime's caches."""
    who = _named(outcome.scope)
    if isinstance(outcome, RateLimited):
        wait = {"retry-after": str(outcome.retry_after)}
        limit = outcome.scope.rpm_limit if outcome.limit == "rpm" else outcome.scope.tpm_limit
        if limit == 0:  # paused
            return GatewayError(429, f"Rate limit reached: {who}'s limit is 0.", headers=wait)
        if outcome.limit == "rpm":
            message = f"Rate limit reached: {who} may make {_count(limit, 'request')} per minute."
        else:
            message = (
                f"Rate limit reached: {who} may use {_count(limit, 'token')} per minute and has used "
                f"{outcome.used} in this one."
            )
        return GatewayError(429, f"{message} Retry in {outcome.retry_after} s.", headers=wait)
    if isinstance(outcome, OverBudget):
        return _over_budget(outcome)
    if isinstance(outcome, TooManyParallel):
        return GatewayError(
            429,
            f"Too many parallel requests: {who} may have {outcome.limit} in flight at once. Retry in 1 s.",
            headers={"retry-after": "1"},
        )
    if isinstance(outcome, Gone | Blocked):
        scope = outcome.scope
        if scope.token is not None:  # a key: this instance stops serving it at once
            runtime.key_cache.invalidate(scope.token)
            return GatewayError(401, "This key is blocked." if isinstance(outcome, Blocked) else "Invalid API key.")
        runtime.owners.forget()  # its team or user changed on another instance: read them again
        if scope.kind == "member":
            return GatewayError(401, f"This key's user {scope.id!r} is no longer in team {scope.within!r}.")
        state = "is blocked" if isinstance(outcome, Blocked) else "has been deleted"
        return GatewayError(401, f"This key's {scope.kind} {scope.id!r} {state}.")
    return GatewayError(503, f"The limits of {who} kept changing while this request was admitted; retry the request.")


def _count(number: int | None, noun: str) -> str:
    """ "1 request", "3 requests"."""
    return f"{number} {noun}" + ("" if number == 1 else "s")


def _named(scope: Scope) -> str:
    """The scope as a refusal names it: this key, team 'search', user 'ana' (in team 'search'), tag 'app:x'."""
    if scope.kind == "key":
        return "this key"
    name = {"member": "user"}.get(scope.kind, scope.kind)
    return f"{name} {scope.id!r}" + (f" in team {scope.within!r}" if scope.within is not None else "")


def _subject(scope: Scope) -> str:
    """`_named` to start a sentence with."""
    named = _named(scope)
    return named[0].upper() + named[1:]


# Where an admin raises each kind of scope's budget.
_RAISE = {
    "key": "Raise max_budget with /key/update to continue.",
    "team": "An admin can raise the team's max_budget with /team/update.",
    "user": "An admin can raise the user's max_budget with /user/update.",
    "member": "An admin can raise max_budget_in_team with /team/member_update.",
    "tag": "An admin can raise the tag's max_budget with /tag/update.",
}


def _over_budget(outcome: OverBudget) -> GatewayError:
    scope = outcome.scope
    its = "their" if scope.kind in ("user", "member") else "its"
    period = " for this period" if outcome.reset_at else ""
    message = f"{_subject(scope)} has reached {its} budget of ${_dollars(outcome.max_budget)}{period}"
    message += f" (spent ${outcome.spend:.6f}"
    if outcome.reserved > 0:
        message += f", ${outcome.reserved:.6f} more reserved by requests in flight"
    if outcome.reset_at:
        message += f"; the budget resets at {outcome.reset_at}"
    message += "). " + _RAISE.get(scope.kind, "")
    # 402, not 429: SDKs retry 429 on their own, which cannot help with a spent budget.
    return GatewayError(402, message.strip(), headers={"x-should-retry": "false"})


def _dollars(amount: Decimal) -> str:
    """An amount as written for people: cents when it is whole cents ($5000.00), else exact ($0.0005)."""
    cents = amount.quantize(Decimal("0.01"))
    return f"{cents:.2f}" if cents == amount else money.plain(amount)


def reset_budget_if_due(period: Mapping[str, object], now: datetime) -> bool:
    """Start the key's new budget period if its current one is over (`period`: the record's key_id,
    budget_duration and budget_reset_at); whether one was due. /key/info calls it for a key left idle."""
    key = key_records.scope_of(str(period["key_id"]))
    return budgets.reset_if_due(key.pk, key.sk, period, now)


# -- settle ------------------------------------------------------------------------------------------------------


async def settle(runtime: Parts, exchange: Exchange, cost: Decimal) -> None:
    """Write the request's spend and tokens, release its reservation and slot. Never raises: what cannot be
    written now is handed to the ledger and retried (it applies once)."""
    admission = exchange.admission
    if admission is not None and admission.late is not None:
        await asyncio.gather(admission.late, return_exceptions=True)  # bounded by the client config
    if (write := settle_now(runtime.ledger, exchange, cost)) is not None:
        await apply(runtime, write, exchange.request_id)


def settle_waits(exchange: Exchange) -> bool:
    """Whether settling must first wait for admission work that outlived its deadline (`settle` does)."""
    return exchange.admission is not None and exchange.admission.late is not None


def settle_now(ledger: Ledger, exchange: Exchange, cost: Decimal) -> Write | None:
    """`settle` without I/O, for a request whose admission has finished: counters that can wait go to the ledger;
    what cannot (the spend that goes with a reservation, its release, a slot, tpm tokens) is returned as one Write
    for `apply`."""
    record = exchange.principal.record if exchange.principal else None
    if record is None:
        return None
    admission = exchange.admission
    forwarded = exchange.forwarded  # refusals by the gateway itself do not count as requests
    usage = exchange.usage
    reserved = admission.reserved if admission else None
    slot = admission.slot if admission else None
    if not (forwarded or usage or reserved is not None or slot is not None):
        return None
    counters = spend_increments(cost, usage, forwarded) if forwarded or usage else {}
    # The scopes it was admitted under (a refused request never got that far: its key alone, with nothing to write).
    covered = list(admission.scopes) if admission is not None and admission.scopes else [record.scope]
    if reserved is None and counters:
        # Nothing held on a record: the counters can wait for the ledger's next flush.
        for scope in covered:
            ledger.add(scope.pk, scope.sk, counters, only_if_exists=True)
        counters = {}
    holders = [scope for scope in covered if scope.budgeted] if reserved is not None else []
    changes = settle_changes(
        covered,
        hold_id=exchange.request_id if admission is None else admission.request_id,
        reserved=reserved,
        holders=holders,
        slot=slot,
        counters=counters,
        tokens=usage.total_tokens if usage is not None else 0,
        now=keys.utcnow(),
    )
    return _write(f"settle-{exchange.request_id}", changes)


def settle_changes(
    covered: Sequence[Scope],
    *,
    hold_id: str,
    reserved: Decimal | None,
    holders: Sequence[Scope],
    slot: str | None = None,
    counters: Mapping[str, Number],
    tokens: int = 0,
    now: datetime,
) -> list[holds.Change]:
    """What settling writes on each scope in `covered`: `counters` on its record, the reservation `hold_id` of
    `reserved` given back on `holders`, `tokens` toward tpm, the parallel `slot` freed."""
    changes: list[holds.Change] = []
    for scope in covered:
        add = None
        if counters:
            added = spend.add(scope.pk, scope.sk, counters, condition="attribute_exists(pk)")
            moot = f"spend not recorded: the {scope.kind} was deleted while the request ran"
            add = holds.Change(added, counts=True, moot=moot)
        if reserved is not None and scope in holders:
            # Spend and release in one write; once the reservation is gone (swept after its lease), the spend alone.
            release = budgets.release(scope, hold_id, reserved, counters)
            changes.append(holds.Change(release, instead=add, counts=bool(counters)))
        elif add is not None:
            changes.append(add)
        if tokens and scope.tpm_limit is not None:
            changes.append(holds.Change(rates.add_tokens(scope, tokens, now), counts=True))
        if slot is not None and scope.parallel_limited:
            changes.append(holds.Change(rates.release_slots(scope, [slot])))
    return changes


def _write(operation: str, changes: list[holds.Change]) -> Write | None:
    """The changes as one Write the ledger can retry: every retry is the same request, applied at most once."""
    if not changes:
        return None
    marker_ttl = int(time.time()) + spend.OPERATION_MARKER_SECONDS
    return Write(operation, partial(holds.settle, changes, operation=operation, marker_ttl=marker_ttl))


async def apply(runtime: Parts, write: Write, operation: str) -> None:
    """Apply a settle write (of a request or a reservation: `operation`) in a worker thread; if DynamoDB does not
    take it, the ledger retries it. Never raises."""
    try:
        await runtime.aws.run(write.apply)
    except Exception as exc:
        logger.warning(
            "key settle failed; the ledger retries it", extra={"operation": operation, "error": type(exc).__name__}
        )
        runtime.ledger.retry_later(write)


def spend_increments(cost: Decimal, usage: Usage | None, forwarded: bool) -> dict[str, Number]:
    """What one request adds to each scope's record; keeps budget_headroom = max_budget - spend - reserved."""
    increments: dict[str, Number] = {"spend": cost, "total_spend": cost, "budget_headroom": -cost}
    if forwarded:
        increments["requests"] = 1
    if usage is not None:
        increments.update({name: getattr(usage, name) for name in spend.TOKEN_COUNTERS})
    return {name: amount for name, amount in increments.items() if amount}


# -- holds for other callers (batches) ---------------------------------------------------------------------------


async def reserve_budget(
    runtime: Parts,
    covered: Sequence[Scope],
    amount: Decimal,
    reservation_id: str,
    *,
    lease_seconds: int,
    whole: bool = False,
) -> tuple[Scope, ...]:
    """Hold `amount` on the budget of every scope in `covered` that has one (a request's key, team, membership,
    user, tags), all in one call or none, under `reservation_id` (unique, e.g. the batch's) for up to
    `lease_seconds` (past it, an admission that finds the budget exhausted releases it); the scopes held (none
    without budgets). Raises GatewayError: 402 naming the budget that is spent, 401 for a key, team or user blocked
    or deleted meanwhile, 503 when DynamoDB does not answer. Safe to repeat with the same id."""
    budgeted = [scope for scope in covered if scope.budgeted]
    if not budgeted:
        return ()
    now = keys.utcnow()
    checks = [budgets.BudgetHold(scope, reservation_id, amount, now, lease_seconds, whole) for scope in budgeted]
    try:
        outcome = await runtime.aws.call(partial(holds.admit, checks, request_id=reservation_id))
    except Exception as exc:
        if isinstance(exc, Unavailable) and exc.late is not None:
            await asyncio.gather(exc.late, return_exceptions=True)
        # Whatever the write did, the holds are released: the caller refuses the work.
        await settle_budget(runtime, covered, budgeted, reservation_id, amount, _ZERO)
        raise GatewayError(503, "The gateway cannot check the budgets of this request right now; retry.") from None
    if not isinstance(outcome, holds.Admitted):
        raise refusal(runtime, outcome)
    return tuple(check.scope for check in outcome.holds)


async def settle_budget(
    runtime: Parts,
    covered: Sequence[Scope],
    holders: Sequence[Scope],
    reservation_id: str,
    reserved: Decimal,
    cost: Decimal,
    usage: Usage | None = None,
) -> None:
    """Record `cost` (and `usage`) once for `reservation_id` on every scope in `covered`, and release the hold of
    `reserved` on `holders`, in one transaction. Never raises; what DynamoDB does not take now the ledger retries.
    Safe to call again (it applies once)."""
    counters = spend_increments(cost, usage, forwarded=False) if cost or usage else {}
    changes = settle_changes(
        covered, hold_id=reservation_id, reserved=reserved, holders=holders, counters=counters, now=keys.utcnow()
    )
    if (write := _write(f"settle-{reservation_id}", changes)) is not None:
        await apply(runtime, write, reservation_id)
