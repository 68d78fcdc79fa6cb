"""What a virtual key may do, checked on every pass-through request before it goes upstream; spend at the end.

`admit` runs after authentication (blocked and expired keys never get here) and refuses, in this order:
  - a model outside the key's `models` allowlist            -> 403 permission_error   (no I/O)
  - more than `rpm_limit` requests or `tpm_limit` tokens in the current minute -> 429 rate_limit_error
  - a spent budget (`max_budget` in the current `budget_duration` period)  -> 402 billing_error
  - more than `max_parallel_requests` in flight             -> 429 rate_limit_error
Keys without budget or limits cost no DynamoDB call here: the common case stays one cached lookup.

All counters live in the gateway table, changed only by conditional atomic writes, so limits hold across any
number of Lambda instances. `settle` (called exactly once per request, after the body ended) adds the spend and
tokens with ADD, releases what `admit` reserved, and counts tokens for tpm.

Budget (see docs/keys.md for the guarantees): the key record keeps `budget_headroom = max_budget - spend -
reserved`. Admission is one UpdateItem `ADD budget_headroom -estimate, reserved +estimate` on the condition
`budget_headroom > 0`; settle adds `spend +cost, reserved -estimate, budget_headroom +(estimate - cost)`. The
estimate is an upper bound of the request's cost for nearly every request, so spend can pass max_budget by at
most the cost of the request admitted last (plus whatever in-flight requests cost beyond their estimates).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import anyio.to_thread
from aws_lambda_powertools import Logger

from . import keys, pricing, table
from .errors import GatewayError
from .exchange import Exchange
from .keys import KeyRecord
from .ledger import ledger
from .request_body import RequestBody
from .table import Number
from .usage import Usage

logger = Logger(child=True)

# Paths whose JSON body names the model (the allowlist is checked there), and the batch create path.
MODEL_PATHS = frozenset({"/v1/messages", "/v1/messages/count_tokens", "/v1/complete"})
BATCH_PATH = "/v1/messages/batches"
ESTIMATED_PATH = "/v1/messages"  # the only path whose response carries a cost the gateway sees
RATE_WINDOW_SECONDS = 60
# A parallel slot not released by then is taken to be leaked (an instance died mid-request) and may be reused.
# Lambda stops any invocation after 900 s, so a live request on Lambda never holds a slot that long.
PARALLEL_SLOT_LEASE_SECONDS = 960
_SNAPSHOT = re.compile(r"(.+)-\d{8}")
_ZERO = Decimal(0)


@dataclass
class Admission:
    """What a request holds between admit and settle."""

    key_id: str
    reserved: Decimal | None = None  # budget estimate held on the key record (None: nothing held)
    slot: str | None = None  # parallel slot id held on the key's PARALLEL item


# -- admission --------------------------------------------------------------------------------------------------


async def admit(exchange: Exchange, body: RequestBody) -> None:
    """Refuse the request (GatewayError), or admit it; what it holds until settle goes on `exchange.admission`.
    Master key: no limits."""
    record = exchange.principal.record if exchange.principal else None
    if record is None:
        return
    checks_models = bool(record.models) and _names_models(exchange)
    estimates = record.max_budget is not None and (exchange.method, exchange.path) == ("POST", ESTIMATED_PATH)
    parsed = await body.parsed(strict=checks_models) if checks_models or estimates else None
    if isinstance(parsed, dict) and isinstance(parsed.get("model"), str) and exchange.model is None:
        exchange.model = parsed["model"][:200]
    if checks_models:
        check_models(record.models, exchange.path, parsed)
    if not record.governed:
        return
    admission = Admission(key_id=record.key_id)
    # Set before the checks that can refuse: settle then releases whatever was taken, refused or not.
    exchange.admission = admission
    estimate = estimate_cost(parsed, len(body.raw)) if estimates else _ZERO
    try:
        await anyio.to_thread.run_sync(_acquire, record, admission, estimate, exchange.request_id)
    except GatewayError:
        raise
    except Exception as exc:
        # Fail closed: a limit that cannot be checked is not waived. 503 tells SDKs to retry.
        logger.exception("admission failed", extra={"request_id": exchange.request_id})
        raise GatewayError(
            503, f"The gateway cannot check this key's limits right now ({type(exc).__name__}); retry."
        ) from None


def _names_models(exchange: Exchange) -> bool:
    return exchange.method == "POST" and (exchange.path in MODEL_PATHS or exchange.path == BATCH_PATH)


def model_allowed(model: str, allowlist: list[str]) -> bool:
    """Exact name, a `prefix*` pattern, or a dated snapshot (`<allowed>-YYYYMMDD`) of an allowed name."""
    snapshot = _SNAPSHOT.fullmatch(model)
    for allowed in allowlist:
        if model == allowed or (allowed.endswith("*") and model.startswith(allowed[:-1])):
            return True
        if snapshot and snapshot.group(1) == allowed:
            return True
    return False


def check_models(allowlist: list[str], path: str, parsed: object) -> None:
    if path == BATCH_PATH:
        requests = parsed.get("requests") if isinstance(parsed, dict) else None
        if not isinstance(requests, list):
            raise GatewayError(400, "requests: expected a list of batch requests.")
        for index, entry in enumerate(requests):
            params = entry.get("params") if isinstance(entry, dict) else None
            model = params.get("model") if isinstance(params, dict) else None
            _check_model(allowlist, model, f"requests[{index}].params.model")
        return
    model = parsed.get("model") if isinstance(parsed, dict) else None
    _check_model(allowlist, model, "model")


def _check_model(allowlist: list[str], model: object, where: str) -> None:
    if not isinstance(model, str):
        raise GatewayError(400, f"{where}: expected a string naming the model.")
    if not model_allowed(model, allowlist):
        shown = ", ".join(allowlist[:20]) + (", ..." if len(allowlist) > 20 else "")
        raise GatewayError(403, f"This key may not use model {model[:200]!r} ({where}). Allowed models: {shown}.")


def estimate_cost(parsed: object, body_bytes: int) -> Decimal:
    """An upper bound of what a Messages request can cost: body bytes / 4 prompt tokens at the model's highest
    input-side rate (the 1-hour cache write, 2x input), plus max_tokens at the output rate."""
    request = parsed if isinstance(parsed, dict) else {}
    model = request.get("model") if isinstance(request.get("model"), str) else None
    max_tokens = request.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 0:
        max_tokens = 0
    prompt_tokens = body_bytes // 4 + 1
    rates = pricing.rates_for(model).for_prompt(prompt_tokens)
    input_rate = max(rates.input, rates.cache_write_5m, rates.cache_write_1h)
    return (prompt_tokens * input_rate + max_tokens * rates.output) / 1_000_000


def _acquire(record: KeyRecord, admission: Admission, estimate: Decimal, request_id: str) -> None:
    """The DynamoDB side of admission (blocking: runs in a worker thread)."""
    now = keys.utcnow()
    if record.rpm_limit is not None or record.tpm_limit is not None:
        _count_request(record, now)
    if record.max_budget is not None:
        _reserve(record, admission, estimate, now)
    if record.max_parallel_requests is not None:
        _take_slot(record, admission, request_id, now)


def _window(now: datetime) -> int:
    return int(now.timestamp()) // RATE_WINDOW_SECONDS * RATE_WINDOW_SECONDS


def _count_request(record: KeyRecord, now: datetime) -> None:
    """rpm and tpm in one conditional write on the minute's counter item: count this request if both allow it."""
    window = _window(now)
    wait = max(1, math.ceil(window + RATE_WINDOW_SECONDS - now.timestamp()))
    if record.rpm_limit == 0 or record.tpm_limit == 0:  # a paused key: no counter item would say so
        raise GatewayError(429, "Rate limit reached: this key's limit is 0.", headers={"retry-after": str(wait)})
    names = {"#requests": "requests", "#ttl": "ttl"}
    values = {":one": 1, ":ttl": window + 2 * RATE_WINDOW_SECONDS}
    conditions: list[str] = []
    if record.rpm_limit is not None:
        conditions.append("(attribute_not_exists(#requests) OR #requests < :rpm)")
        values[":rpm"] = record.rpm_limit
    if record.tpm_limit is not None:
        conditions.append("(attribute_not_exists(#tokens) OR #tokens < :tpm)")
        names["#tokens"], values[":tpm"] = "tokens", record.tpm_limit
    update, condition = "ADD #requests :one SET #ttl = :ttl", " AND ".join(conditions)
    seen = table.update_if(keys.record_pk(record.key_id), f"RATE#{window}", update, condition, names, values)
    if seen is None:
        return
    if record.rpm_limit is not None and seen.get("requests", 0) >= record.rpm_limit:
        message = f"Rate limit reached: this key may make {record.rpm_limit} requests per minute."
    else:
        message = (
            f"Rate limit reached: this key may use {record.tpm_limit} tokens per minute and has used "
            f"{int(seen.get('tokens', 0))} in this one."
        )
    raise GatewayError(429, f"{message} Retry in {wait} s.", headers={"retry-after": str(wait)})


def reserve_whole(record: KeyRecord, amount: Decimal) -> Decimal | None:
    """Reserve `amount` on the key's budget only if all of it fits in the headroom (blocking), else GatewayError
    (402 when it does not fit). What was reserved, or None when the key has no budget. Released by a spend write
    with `spend_increments(cost, usage, reserved, ...)`. Used by batches.py for a whole batch's estimate."""
    admission = Admission(key_id=record.key_id)
    _reserve(record, admission, amount, keys.utcnow(), whole=True)
    return admission.reserved


def _reserve(record: KeyRecord, admission: Admission, estimate: Decimal, now: datetime, whole: bool = False) -> None:
    """Take `estimate` out of the budget headroom, on the condition that some headroom is left (`whole`: that
    all of `estimate` fits in it).

    The same condition refuses keys that were blocked, deleted or regenerated meanwhile (the record's token must
    still be the one presented), so for budgeted keys those changes apply at once on every instance.
    """
    condition = (
        ("#headroom >= :estimate AND " if whole else "")
        + "#headroom > :zero AND #token = :token AND (attribute_not_exists(#blocked) OR #blocked = :no)"
        " AND (attribute_not_exists(#reset) OR #reset > :now)"
    )
    names = {
        "#headroom": "budget_headroom",
        "#reserved": "reserved",
        "#token": "token",
        "#blocked": "blocked",
        "#reset": "budget_reset_at",
    }
    values = {
        ":minus": -estimate,
        ":estimate": estimate,
        ":zero": 0,
        ":token": record.token,
        ":no": False,
        ":now": keys.iso_seconds(now),
    }
    update = "ADD #headroom :minus, #reserved :estimate"
    for _ in range(3):
        item = table.update_if(keys.record_pk(record.key_id), "KEY", update, condition, names, values)
        if item is None:
            admission.reserved = estimate
            return
        if item.get("token") != record.token:  # deleted or regenerated
            keys.key_cache.invalidate(record.token)
            raise GatewayError(401, "Invalid API key.")
        if item.get("blocked"):
            keys.key_cache.invalidate(record.token)
            raise GatewayError(401, "This key is blocked.")
        if item.get("max_budget") is None:
            return  # the budget was removed since this process cached the record
        if reset_budget_if_due(item, now):
            continue
        raise _budget_exceeded(item)
    raise GatewayError(503, "The key's budget is being reset; retry the request.")


def _budget_exceeded(item: table.Item) -> GatewayError:
    spend, reserved, budget = Decimal(item.get("spend", 0)), Decimal(item.get("reserved", 0)), item["max_budget"]
    message = f"Budget exceeded: this key has spent ${spend:.6f} of its ${budget} budget"
    if reserved > 0:
        message += f" (${reserved:.6f} more is reserved by requests in flight)"
    if item.get("budget_reset_at"):
        message += f"; the budget resets at {item['budget_reset_at']}"
    message += ". Raise max_budget with /key/update to continue."
    # 402, not 429: SDKs retry 429 on their own, which cannot help with a spent budget.
    return GatewayError(402, message, headers={"x-should-retry": "false"})


def reset_budget_if_due(item: table.Item, now: datetime) -> bool:
    """Start a new budget period if the current one is over: spend back to 0, headroom up by what was spent.

    Conditional on budget_reset_at being unchanged, so when many instances notice at once exactly one resets.
    Returns whether a reset was due (done here or by someone else).
    """
    duration, reset_at = item.get("budget_duration"), item.get("budget_reset_at")
    if not duration or not reset_at or reset_at > keys.iso_seconds(now):
        return False
    period = keys.parse_duration(duration)
    current = datetime.fromisoformat(reset_at)
    periods = math.floor((now - current) / period) + 1
    next_reset = keys.iso_seconds(current + periods * period)
    table.update_if(  # a failed condition: another instance reset it first
        keys.record_pk(item.get("key_id") or item["token"]),
        "KEY",
        "SET #headroom = #headroom + #spend, #spend = :zero, #reset = :next",
        "#reset = :seen",
        {"#headroom": "budget_headroom", "#spend": "spend", "#reset": "budget_reset_at"},
        {":zero": 0, ":next": next_reset, ":seen": reset_at},
    )
    return True


def _take_slot(record: KeyRecord, admission: Admission, slot: str, now: datetime) -> None:
    """A parallel slot: one entry slot -> lease expiry in the key's PARALLEL map, added while the map is small
    enough. Leases older than PARALLEL_SLOT_LEASE_SECONDS (their instance died) are swept when the map is full."""
    limit = record.max_parallel_requests or 0
    now_ts = int(now.timestamp())
    lease, ttl = now_ts + PARALLEL_SLOT_LEASE_SECONDS, now_ts + 2 * PARALLEL_SLOT_LEASE_SECONDS
    pk, names = keys.record_pk(record.key_id), {"#slots": "slots", "#slot": slot, "#ttl": "ttl"}
    for _ in range(4):
        update, condition = "SET #slots.#slot = :lease, #ttl = :ttl", "attribute_exists(#slots) AND size(#slots) < :max"
        seen = table.update_if(pk, "PARALLEL", update, condition, names, {":lease": lease, ":ttl": ttl, ":max": limit})
        if seen is None:
            admission.slot = slot
            return
        slots = seen.get("slots")
        if slots is None:
            if limit < 1:
                break
            created = table.update_if(  # the first slot creates the map
                pk,
                "PARALLEL",
                "SET #slots = :slots, #ttl = :ttl",
                "attribute_not_exists(#slots)",
                {"#slots": "slots", "#ttl": "ttl"},
                {":slots": {slot: lease}, ":ttl": ttl},
            )
            if created is None:
                admission.slot = slot
                return
            continue
        stale = [name for name, until in slots.items() if until < now_ts]
        if not stale:
            break
        _release_slots(record.key_id, stale[:50])
    raise GatewayError(
        429,
        f"Too many parallel requests: this key may have {limit} in flight at once. Retry in 1 s.",
        headers={"retry-after": "1"},
    )


def _release_slots(key_id: str, slots: list[str]) -> None:
    names = {"#slots": "slots", **{f"#s{i}": slot for i, slot in enumerate(slots)}}
    update = "REMOVE " + ", ".join(f"#slots.#s{i}" for i in range(len(slots)))
    table.update_if(keys.record_pk(key_id), "PARALLEL", update, "attribute_exists(#slots)", names)  # gone: none held


# -- settle ------------------------------------------------------------------------------------------------------


async def settle(exchange: Exchange, cost: Decimal) -> None:
    """Write the request's spend and tokens, release its reservation and slot. Never raises."""
    record = exchange.principal.record if exchange.principal else None
    if record is None:
        return
    admission = exchange.admission if isinstance(exchange.admission, Admission) else None
    # Only requests that got an answer from Anthropic count; refusals by the gateway itself do not.
    forwarded = exchange.status is not None and exchange.error_source != "gateway"
    usage = exchange.usage
    holds = admission is not None and (admission.reserved is not None or admission.slot is not None)
    if not (forwarded or usage or holds):
        return
    reserved = admission.reserved if admission else None
    if reserved is None and (forwarded or usage):
        # Nothing held on the record: the counters can wait for the ledger's next flush.
        increments = spend_increments(cost, usage, _ZERO, forwarded)
        ledger.add(keys.record_pk(record.key_id), "KEY", increments, only_if_exists=True)
    counts_tokens = record.tpm_limit is not None and usage is not None and usage.total_tokens > 0
    if reserved is None and not counts_tokens and not (admission and admission.slot):
        return
    try:
        await anyio.to_thread.run_sync(_settle, record, admission, cost, usage, forwarded)
    except Exception:
        logger.exception("key settle failed", extra={"request_id": exchange.request_id})


def _settle(
    record: KeyRecord, admission: Admission | None, cost: Decimal, usage: Usage | None, forwarded: bool
) -> None:
    """The writes that cannot wait, each on its own: one failing must not keep the others from being released."""
    failures: list[Exception] = []
    reserved = admission.reserved if admission else None
    if reserved is not None:
        try:
            _add_spend(record.key_id, spend_increments(cost, usage, reserved, forwarded))
        except Exception as exc:
            failures.append(exc)
    if record.tpm_limit is not None and usage and usage.total_tokens:
        try:
            _add_tokens(record.key_id, usage.total_tokens)
        except Exception as exc:
            failures.append(exc)
    if admission and admission.slot:
        try:
            _release_slots(record.key_id, [admission.slot])
        except Exception as exc:
            failures.append(exc)
    if failures:
        raise failures[0]


def spend_increments(cost: Decimal, usage: Usage | None, reserved: Decimal, forwarded: bool) -> dict[str, Number]:
    """What one request adds to its key record; keeps budget_headroom = max_budget - spend - reserved."""
    increments: dict[str, Number] = {
        "spend": cost,
        "total_spend": cost,
        "budget_headroom": reserved - cost,
        "reserved": -reserved,
    }
    if forwarded:
        increments["requests"] = 1
    if usage is not None:
        increments.update({name: getattr(usage, name) for name in keys.TOKEN_COUNTERS})
    return {name: amount for name, amount in increments.items() if amount}


def _add_spend(key_id: str, increments: dict[str, Number]) -> None:
    """One atomic ADD on the key record, at once: it releases a budget reservation."""
    if not increments:  # a zero reservation, released by a request refused after admission: nothing to write
        return
    if not table.add_counters(keys.record_pk(key_id), "KEY", increments, only_if_exists=True):
        logger.info("spend not recorded: the key was deleted while the request ran")


def _add_tokens(key_id: str, tokens: int) -> None:
    """Tokens count toward tpm in the minute the request ends (that is when Anthropic reports them)."""
    window = _window(keys.utcnow())
    table.add_counters(
        keys.record_pk(key_id), f"RATE#{window}", {"tokens": tokens}, ttl=window + 2 * RATE_WINDOW_SECONDS
    )
