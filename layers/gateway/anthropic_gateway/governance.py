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
reserved`. Admission is one UpdateItem `ADD budget_headroom -estimate, reserved +estimate SET
reservations.<request id> = {amount, until}` on the condition `budget_headroom > 0`; settle first adds `spend
+cost, budget_headroom -cost` (exactly once: `table.add_counters_once`), then releases the reservation: `REMOVE
reservations.<request id> ADD reserved -estimate, budget_headroom +estimate`, on the condition that the entry is
still there. That condition makes the release safe to retry and safe against the sweep: a reservation whose lease
(`until`) has passed was left by a process that died, and is released by whichever admission finds the budget
exhausted. The estimate is an upper bound of the request's cost for nearly every request, so spend can pass
max_budget by at most the cost of the request admitted last (plus whatever in-flight requests cost beyond their
estimates).

Bounded: admission's DynamoDB work runs under the request's AWS deadline (aws.call); past it the request gets a
503 and settle waits for the late work before it releases what that work took. A settle write that fails is
handed to the ledger, which retries it (each step applies once) until DynamoDB answers.

For other callers (batches): `reserve_budget` holds an amount on a key's budget under an id and a lease;
`settle_budget` records the exact cost once and releases the hold.
"""

from __future__ import annotations

import asyncio
import math
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from aws_lambda_powertools import Logger

from . import aws, keys, pricing, table
from .bedrock_models import model_table
from .errors import GatewayError
from .exchange import Exchange
from .keys import KeyRecord
from .ledger import Write, ledger
from .request_body import RequestBody
from .settings import get_settings
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
# The same for a budget reservation: past its lease, an admission that finds the budget exhausted releases it.
RESERVATION_LEASE_SECONDS = 960
_SNAPSHOT = re.compile(r"(.+)-\d{8}")
_ZERO = Decimal(0)


@dataclass
class Admission:
    """What a request holds between admit and settle."""

    key_id: str
    request_id: str = field(default_factory=lambda: "gwreq_" + secrets.token_hex(12))  # names its reservation
    reserved: Decimal | None = None  # budget estimate held on the key record (None: nothing held)
    slot: str | None = None  # parallel slot id held on the key's PARALLEL item
    late: asyncio.Future[object] | None = None  # admission work still running after the deadline answered 503


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
    admission = Admission(key_id=record.key_id, request_id=exchange.request_id)
    # Set before the checks that can refuse: settle then releases whatever was taken, refused or not.
    exchange.admission = admission
    estimate = estimate_cost(parsed, len(body.raw)) if estimates else _ZERO
    try:
        await aws.call(_acquire, record, admission, estimate, exchange.request_id)
    except GatewayError:
        raise
    except aws.Unavailable as exc:
        admission.late = exc.late  # settle waits for it, then releases what it took
        logger.warning("admission timed out", extra={"request_id": exchange.request_id})
        raise GatewayError(503, "The gateway cannot check this key's limits right now (timeout); retry.") from None
    except Exception as exc:
        # Fail closed: a limit that cannot be checked is not waived. 503 tells SDKs to retry.
        logger.exception("admission failed", extra={"request_id": exchange.request_id})
        raise GatewayError(
            503, f"The gateway cannot check this key's limits right now ({type(exc).__name__}); retry."
        ) from None


def _names_models(exchange: Exchange) -> bool:
    return exchange.method == "POST" and (exchange.path in MODEL_PATHS or exchange.path == BATCH_PATH)


def model_allowed(model: str, allowlist: list[str]) -> bool:
    """Exact name, a `prefix*` pattern, or a dated snapshot (`<allowed>-YYYYMMDD`) of an allowed name; a Bedrock id
    (`anthropic.claude-...`) is also allowed as the Anthropic model it serves (bedrock_models)."""
    served = model_table(get_settings().bedrock_model_ids).anthropic_model(model)
    return _allowed(model, allowlist) or (served is not None and _allowed(served, allowlist))


def _allowed(model: str, allowlist: list[str]) -> bool:
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


def _reserve(record: KeyRecord, admission: Admission, estimate: Decimal, now: datetime) -> None:
    """Take `estimate` out of the budget headroom, on the condition that some headroom is left, recorded as the
    reservation `admission.request_id` with a lease.

    The same condition refuses keys that were blocked, deleted or regenerated meanwhile (the record's token must
    still be the one presented), so for budgeted keys those changes apply at once on every instance.
    """
    _hold_budget(record, admission, estimate, now, RESERVATION_LEASE_SECONDS)


def _hold_budget(
    record: KeyRecord, admission: Admission, amount: Decimal, now: datetime, lease: int, whole: bool = False
) -> None:
    """`whole`: only if all of `amount` fits in the headroom (a batch), not merely some headroom is left."""
    condition = (
        ("#headroom >= :estimate AND " if whole else "")
        + "#headroom > :zero AND #token = :token AND (attribute_not_exists(#blocked) OR #blocked = :no)"
        " AND (attribute_not_exists(#reset) OR #reset > :now) AND attribute_exists(#res)"
        " AND attribute_not_exists(#res.#rid)"
    )
    names = {
        "#headroom": "budget_headroom",
        "#reserved": "reserved",
        "#token": "token",
        "#blocked": "blocked",
        "#reset": "budget_reset_at",
        "#res": "reservations",
        "#rid": admission.request_id,
    }
    values = {
        ":minus": -amount,
        ":estimate": amount,
        ":zero": 0,
        ":token": record.token,
        ":no": False,
        ":now": keys.iso_seconds(now),
        ":lease": {"amount": amount, "until": int(now.timestamp()) + lease},
    }
    update = "ADD #headroom :minus, #reserved :estimate SET #res.#rid = :lease"
    # Held from here on as far as settle knows: if the write applies but its answer is lost, settle still
    # releases it, and releasing a reservation that was never written changes nothing.
    admission.reserved = amount
    pk = keys.record_pk(record.key_id)
    for _ in range(4):
        item = table.update_if(pk, "KEY", update, condition, names, values)
        if item is None:
            return
        reservations = item.get("reservations")
        if isinstance(reservations, dict) and admission.request_id in reservations:
            return  # botocore retried our write after it had applied
        admission.reserved = None
        if item.get("token") != record.token:  # deleted or regenerated
            keys.key_cache.invalidate(record.token)
            raise GatewayError(401, "Invalid API key.")
        if item.get("blocked"):
            keys.key_cache.invalidate(record.token)
            raise GatewayError(401, "This key is blocked.")
        if item.get("max_budget") is None:
            return  # the budget was removed since this process cached the record
        admission.reserved = amount
        if not isinstance(reservations, dict):  # a record from before reservations had leases
            table.update_if(
                pk, "KEY", "SET #res = :empty", "attribute_not_exists(#res)", {"#res": "reservations"}, {":empty": {}}
            )
            continue
        if reset_budget_if_due(item, now):
            continue
        if _sweep_expired(record.key_id, reservations, int(now.timestamp())):
            continue
        admission.reserved = None
        raise _budget_exceeded(item)
    admission.reserved = None
    raise GatewayError(503, "The key's budget is being reset; retry the request.")


def _sweep_expired(key_id: str, reservations: dict[str, object], now_ts: int) -> bool:
    """Release reservations whose lease has passed (their process died); whether any was."""
    expired = [
        (rid, lease["amount"])
        for rid, lease in reservations.items()
        if isinstance(lease, dict) and lease.get("until", 0) < now_ts
    ][:25]
    for rid, amount in expired:
        _release_reservation(key_id, rid, Decimal(amount))
    if expired:
        logger.info("expired budget reservations released", extra={"count": len(expired)})
    return bool(expired)


def _release_reservation(key_id: str, reservation_id: str, amount: Decimal) -> None:
    """Give a reservation back to the headroom, if it is still held: safe to repeat, and against the sweep."""
    table.update_if(
        keys.record_pk(key_id),
        "KEY",
        "REMOVE #res.#rid ADD #reserved :minus, #headroom :amount",
        "attribute_exists(#res.#rid)",
        {"#res": "reservations", "#rid": reservation_id, "#reserved": "reserved", "#headroom": "budget_headroom"},
        {":minus": -amount, ":amount": amount},
    )


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
    admission.slot = slot  # held as far as settle knows, until refused: a write whose answer was lost is released
    for _ in range(4):
        update, condition = "SET #slots.#slot = :lease, #ttl = :ttl", "attribute_exists(#slots) AND size(#slots) < :max"
        seen = table.update_if(pk, "PARALLEL", update, condition, names, {":lease": lease, ":ttl": ttl, ":max": limit})
        if seen is None:
            return
        slots = seen.get("slots")
        if isinstance(slots, dict) and slot in slots:
            return  # botocore retried our write after it had applied
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
                return
            continue
        stale = [name for name, until in slots.items() if until < now_ts]
        if not stale:
            break
        _release_slots(record.key_id, stale[:50])
    admission.slot = None
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
    """Write the request's spend and tokens, release its reservation and slot. Never raises: what cannot be
    written now is handed to the ledger and retried (each step applies once)."""
    admission = exchange.admission if isinstance(exchange.admission, Admission) else None
    if admission is not None and admission.late is not None:
        await asyncio.gather(admission.late, return_exceptions=True)  # bounded by the client config
    if (write := settle_now(exchange, cost)) is not None:
        await apply(write, exchange.request_id)


def settle_waits(exchange: Exchange) -> bool:
    """Whether settling must first wait for admission work that outlived its deadline (`settle` does)."""
    admission = exchange.admission
    return isinstance(admission, Admission) and admission.late is not None


def settle_now(exchange: Exchange, cost: Decimal) -> Write | None:
    """`settle` without I/O, for a request whose admission has finished: counters that can wait go to the ledger;
    what cannot (held on the key record: the budget's spend, a reservation, a slot, tpm tokens) is returned as
    one Write for `apply`."""
    record = exchange.principal.record if exchange.principal else None
    if record is None:
        return None
    admission = exchange.admission if isinstance(exchange.admission, Admission) else None
    # Only requests that got an answer from Anthropic count; refusals by the gateway itself do not.
    forwarded = exchange.status is not None and exchange.error_source != "gateway"
    usage = exchange.usage
    holds = admission is not None and (admission.reserved is not None or admission.slot is not None)
    if not (forwarded or usage or holds):
        return None
    budgeted = admission is not None and admission.reserved is not None
    counters = spend_increments(cost, usage, forwarded) if forwarded or usage else {}
    if not budgeted and counters:
        # Nothing held on the record: the counters can wait for the ledger's next flush.
        ledger.add(keys.record_pk(record.key_id), "KEY", counters, only_if_exists=True)
    return settle_write(record, admission, counters if budgeted else {}, usage)


async def apply(write: Write, operation: str) -> None:
    """Apply a settle write (of a request or a reservation: `operation`) in a worker thread; if DynamoDB does not
    take it, the ledger retries it. Never raises."""
    try:
        await aws.run(write.apply)
    except Exception as exc:
        logger.warning(
            "key settle failed; the ledger retries it", extra={"operation": operation, "error": type(exc).__name__}
        )
        ledger.retry_later(write)


def settle_write(
    record: KeyRecord, admission: Admission | None, counters: dict[str, Number], usage: Usage | None
) -> Write | None:
    """The writes that cannot wait, as one Write whose every step is safe to repeat, in this order:
    1. the key's counters (spend, headroom -cost) once, by operation id: before the release, so the headroom
       is never more than the invariant allows while the two are apart;
    2. tokens toward tpm, once;
    3. the reservation released, if still held (conditional on its entry);
    4. the parallel slot released (REMOVE of a map entry).
    """
    request_id = admission.request_id if admission else "gwreq_" + secrets.token_hex(12)
    steps: list[Callable[[], None]] = []
    marker_ttl = int(time.time()) + table.OPERATION_MARKER_SECONDS
    pk = keys.record_pk(record.key_id)
    if counters:
        steps.append(lambda: _add_once(f"settle-{request_id}", pk, "KEY", counters, marker_ttl, only_if_exists=True))
    if record.tpm_limit is not None and usage is not None and usage.total_tokens:
        window = _window(keys.utcnow())
        tokens: dict[str, Number] = {"tokens": usage.total_tokens}
        ttl = window + 2 * RATE_WINDOW_SECONDS
        steps.append(lambda: _add_once(f"tpm-{request_id}", pk, f"RATE#{window}", tokens, marker_ttl, ttl=ttl))
    if admission is not None and admission.reserved is not None:
        amount = admission.reserved
        steps.append(lambda: _release_reservation(record.key_id, request_id, amount))
    if admission is not None and admission.slot:
        slot = admission.slot
        steps.append(lambda: _release_slots(record.key_id, [slot]))
    if not steps:
        return None

    def apply() -> None:
        for step in steps:
            step()

    return Write(f"settle {request_id}", apply)


def _add_once(
    operation: str,
    pk: str,
    sk: str,
    increments: dict[str, Number],
    marker_ttl: int,
    *,
    only_if_exists: bool = False,
    ttl: int | None = None,
) -> None:
    if not table.add_counters_once(
        operation, pk, sk, increments, marker_ttl=marker_ttl, only_if_exists=only_if_exists, ttl=ttl
    ):
        logger.info("spend not recorded: the key was deleted while the request ran")


def spend_increments(cost: Decimal, usage: Usage | None, forwarded: bool) -> dict[str, Number]:
    """What one request adds to its key record; keeps budget_headroom = max_budget - spend - reserved."""
    increments: dict[str, Number] = {"spend": cost, "total_spend": cost, "budget_headroom": -cost}
    if forwarded:
        increments["requests"] = 1
    if usage is not None:
        increments.update({name: getattr(usage, name) for name in keys.TOKEN_COUNTERS})
    return {name: amount for name, amount in increments.items() if amount}


# -- holds for other callers (batches) ---------------------------------------------------------------------------


async def reserve_budget(
    record: KeyRecord, amount: Decimal, reservation_id: str, *, lease_seconds: int, whole: bool = False
) -> None:
    """Hold `amount` on the key's budget under `reservation_id` (unique, e.g. the batch id) for up to
    `lease_seconds` (past it, an admission that finds the budget exhausted releases it). Raises GatewayError:
    402 when the budget is spent, 401 for a key blocked/deleted meanwhile, 503 when DynamoDB does not answer.
    Safe to repeat with the same id. A key without a budget holds nothing."""
    if record.max_budget is None:
        return
    admission = Admission(key_id=record.key_id, request_id=reservation_id)
    try:
        await aws.call(_hold_budget, record, admission, amount, keys.utcnow(), lease_seconds, whole)
    except GatewayError:
        raise
    except Exception as exc:
        if isinstance(exc, aws.Unavailable) and exc.late is not None:
            await asyncio.gather(exc.late, return_exceptions=True)
        # Whatever the write did, the hold is released: the caller refuses the work.
        await settle_budget(record, reservation_id, amount, _ZERO)
        raise GatewayError(503, "The gateway cannot check this key's budget right now; retry.") from None


async def settle_budget(
    record: KeyRecord, reservation_id: str, reserved: Decimal, cost: Decimal, usage: Usage | None = None
) -> None:
    """Record `cost` (and `usage`) on the key once for `reservation_id`, then release its hold of `reserved`.
    Never raises; what DynamoDB does not take now the ledger retries. Safe to call again (it applies once)."""
    admission = Admission(key_id=record.key_id, request_id=reservation_id, reserved=reserved)
    counters = spend_increments(cost, usage, forwarded=False) if cost or usage else {}
    if (write := settle_write(record, admission, counters, None)) is not None:
        await apply(write, reservation_id)
