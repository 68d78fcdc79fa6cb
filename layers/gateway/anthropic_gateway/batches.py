"""Message Batches billed to the key that created them, and to its team, membership, user and tags: reserved at
create, settled once from the results.

  - **create** (`admit`, before the request goes upstream): an upper bound of the whole batch at batch prices
    (each request's prompt bytes and `max_tokens`, as governance estimates one Message, times pricing's batch
    multiplier) is reserved on every budget of the create's scopes (governance.scopes) if all of it fits in each,
    in one call, else 402 naming the budget. Scopes without a budget reserve nothing.
  - **the answer** (`observe`, before it goes back to the client): a created batch is remembered, one item
    `BATCH#<id>`/`BATCH` {key_id, estimate, reserved, state}; an upstream refusal releases the reservation (`settle`).
  - **results** (`results_tap`): `GET .../results` is summed line by line as it is relayed (JSONL, one line held at
    a time); once the stream has ended normally the batch is settled at the exact cost of its `succeeded` results.
  - **never fetched**: a batch seen `ended` by a retrieve or list through the gateway may still be fetched for
    BATCH_SETTLE_GRACE_HOURS (24); after that, or 29 days after its creation (when Anthropic deletes the results),
    it is settled at its estimate. Due batches are found by a sweep of the open batches (gsi1 `BATCH#OPEN`, by due
    time) that any pass-through request starts, at most once a minute per instance.
Settling is one transaction: the batch's state `open` -> `settled` with the spend and tokens on each scope and the
released reservations. Its condition (the batch is still open) makes it exactly once, however many fetches and
sweeps race and however often it is retried; a settle that dies on the way leaves the batch open, for the next
fetch or sweep.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from decimal import ROUND_CEILING, Decimal
from functools import partial
from typing import Any, Protocol

import anyio.to_thread
from aws_lambda_powertools import Logger

from . import governance, keys, pricing
from .aws import AwsCalls
from .background import Background
from .batch_state import BatchState, CreateHold, ResultsTap
from .errors import GatewayError
from .exchange import Exchange
from .ledger import Write
from .settings import Settings
from .storage import batch_items, holds
from .storage.spend import OPERATION_MARKER_SECONDS
from .usage import Usage

logger = Logger(child=True)

CREATE_PATH = "/v1/messages/batches"
_RESULTS_PATH = re.compile(r"/v1/messages/batches/([^/]+)/results")
RESULTS_RETENTION = timedelta(days=29)  # Anthropic deletes a batch's results 29 days after its creation
# The budget hold of a batch outlives the batch and its grace, so no admission sweeps it while it may still settle.
RESERVATION_LEASE = batch_items.ITEM_TTL + timedelta(days=2)
SWEEP_INTERVAL = timedelta(seconds=60)
_SWEEP_LIMIT = 25  # batches settled per sweep; the next sweep takes the rest
_MAX_NOTED = 20  # ended batches noted per list answer: bounds the writes one list request can cause
_MAX_TOKENS_COUNTED = 1_000_000  # no model writes more; bounds the estimate of an absurd max_tokens
_ZERO = Decimal(0)
_MICRO_DOLLAR = Decimal("0.000001")


class Parts(governance.Parts, Protocol):
    """What batches use of the running gateway (runtime.py's `Runtime` has them)."""

    settings: Settings
    background: Background
    batch_sweeps: SweepClock


# -- create -------------------------------------------------------------------------------------------------------


async def admit(runtime: Parts, exchange: Exchange, body: bytes) -> None:
    """Before a batch create goes upstream: reserve its estimate on the key's budget, or refuse (402). Any request
    also starts a sweep of the batches due to be settled at their estimate, when the runtime's `batch_sweeps`
    started none in the last minute."""
    runtime.batch_sweeps.start_if_due(runtime)
    record = exchange.principal.record if exchange.principal else None
    if record is None or (exchange.method, exchange.path) != ("POST", CREATE_PATH):
        return  # the master key is not billed
    estimate = await anyio.to_thread.run_sync(estimate_batch, body, runtime.unknown_models)
    reservation_id = "batch-" + exchange.request_id
    admission = exchange.admission
    scopes = admission.scopes if admission is not None and admission.scopes else (record.scope,)
    try:  # scopes without a budget hold nothing
        held = await governance.reserve_budget(
            runtime, scopes, estimate, reservation_id, lease_seconds=int(RESERVATION_LEASE.total_seconds()), whole=True
        )
    except GatewayError as exc:
        if exc.status != 402:
            raise
        raise GatewayError(
            402,
            f"This batch may cost up to ${estimate:.6f} at batch prices (each request's prompt and max_tokens), "
            f"more than a budget it falls under has left. {exc.message}",
            headers=exc.headers,
        ) from None
    exchange.batch = BatchState(
        hold=CreateHold(record.key_id, estimate, estimate if held else _ZERO, reservation_id, scopes=scopes, held=held)
    )


def estimate_batch(body: bytes, unknown_models: pricing.UnknownModels) -> Decimal:
    """An upper bound of what a batch can cost: each request estimated as a Message, at batch prices (a model
    pricing.json does not know: at `unknown_models`' rate)."""
    try:
        parsed = json.loads(body, object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError):
        raise GatewayError(400, "A batch must be a JSON object with a `requests` list, each name once.") from None
    requests = parsed.get("requests") if isinstance(parsed, dict) else None
    if not isinstance(requests, list):
        raise GatewayError(400, "requests: expected a list of batch requests.")
    total = _ZERO
    for entry in requests:
        params = entry.get("params") if isinstance(entry, dict) else None
        params = params if isinstance(params, dict) else {}
        counted = dict(params)
        if isinstance(counted.get("max_tokens"), int):
            counted["max_tokens"] = min(counted["max_tokens"], _MAX_TOKENS_COUNTED)
        prompt_bytes = len(json.dumps(params, ensure_ascii=False, separators=(",", ":")).encode())
        total += governance.estimate_cost(counted, prompt_bytes, unknown_models)
    # Rounded up to a micro-dollar: still an upper bound, and a reservation that returns to exactly 0 is stored as
    # 0.000000 (moto's arithmetic cannot read back the 0E-7 a finer amount would leave).
    return (total * pricing.batch_multiplier()).quantize(_MICRO_DOLLAR, rounding=ROUND_CEILING)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # A name given twice could be read one way here and another way upstream: refuse rather than guess.
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate name")
    return result


# -- answers ------------------------------------------------------------------------------------------------------


async def observe(aws: AwsCalls, settings: Settings, exchange: Exchange, content: bytes) -> None:
    """A batch create, retrieve, list or cancel answer on its way to the client (small JSON, in hand)."""
    if exchange.status is None or not 200 <= exchange.status < 300:
        return
    try:
        answer = json.loads(content)
    except (ValueError, RecursionError):
        return
    if not isinstance(answer, dict):
        return
    hold = exchange.batch.hold if exchange.batch else None
    if hold is not None:
        if isinstance(answer.get("id"), str):
            hold.batch_id = answer["id"][:200]
            try:  # before the answer goes out, so no results fetch can come before the batch is known
                hold.remembered = await aws.run(_remember, hold, _ended(answer), _grace(settings))
            except Exception:
                logger.exception("batch not remembered; it is settled at its estimate", extra={"batch": hold.batch_id})
        return
    listed = answer.get("data")
    shown: list[Any] = listed if isinstance(listed, list) else [answer]
    ended = [batch["id"][:200] for batch in shown if isinstance(batch, dict) and _ended(batch)]
    if exchange.method == "GET" and ended:
        exchange.batch = BatchState(seen_ended=ended[:_MAX_NOTED])


def _ended(batch: dict[str, Any]) -> bool:
    return batch.get("processing_status") == "ended" and isinstance(batch.get("id"), str)


def _remember(hold: CreateHold, ended: bool, grace: timedelta) -> bool:
    now = keys.utcnow()
    return batch_items.remember(
        hold.batch_id or "",
        key_id=hold.key_id,
        estimate=hold.estimate,
        reserved=hold.reserved,
        reservation_id=hold.reservation_id,
        now=now,
        due=now + grace if ended else now + RESULTS_RETENTION,
        ended=ended,
        scopes=hold.scopes,
        held=hold.held,
    )


def results_tap(
    unknown_models: pricing.UnknownModels, exchange: Exchange, status: int, content_type: str
) -> ResultsTap | None:
    """The tap for a batch's results being fetched (a 200 on GET .../results), or None for any other response; it
    prices models pricing.json does not know at `unknown_models`' rate."""
    match = _RESULTS_PATH.fullmatch(exchange.path)
    if exchange.method != "GET" or status != 200 or match is None:
        return None
    tap = ResultsTap(content_type, batch_id=match.group(1), unknown_models=unknown_models)
    exchange.batch = BatchState(results=tap)
    return tap


# -- after the response -------------------------------------------------------------------------------------------


async def settle(runtime: Parts, exchange: Exchange) -> None:
    """What a finished batch request leaves to do (accounting calls it for every request with batch state).
    Never raises."""
    state = exchange.batch or BatchState()
    hold, results = state.hold, state.results
    record = exchange.principal.record if exchange.principal else None
    try:
        if hold is not None and not hold.remembered and record is not None:
            # Created but not remembered: billed at its estimate now. Refused or never answered: released.
            cost = hold.estimate if hold.batch_id else _ZERO
            scopes = hold.scopes or (record.scope,)
            await governance.settle_budget(runtime, scopes, hold.held, hold.reservation_id, hold.reserved, cost)
        for batch_id in state.seen_ended:
            await runtime.aws.run(_note_ended, batch_id, _grace(runtime.settings))
        if results is not None and exchange.completed and exchange.status == 200:
            # The whole results file went through: billed exactly.
            await settle_batch(
                runtime, results.batch_id, results.standard_cost * pricing.batch_multiplier(), results.total
            )
    except Exception:
        logger.exception("batch accounting failed", extra={"request_id": exchange.request_id})


def _note_ended(batch_id: str, grace: timedelta) -> None:
    now = keys.utcnow()
    batch_items.note_ended(batch_id, now, now + grace)


async def settle_batch(runtime: Parts, batch_id: str, cost: Decimal | None, usage: Usage | None) -> bool:
    """Settle an open batch once: `cost` (None: its estimate) on its key's spend, its reservation released, the
    batch marked settled, all in one transaction. False when it was unknown or already settled.

    Exactly once: the transaction is conditional on the batch being open, so one fetch or sweep wins, and a retry
    of a settle that applied changes nothing. One that DynamoDB does not take is retried by the ledger; if the
    process dies first, the batch is still open and the next fetch or the sweep settles it.
    """
    item = await runtime.aws.run(batch_items.get, batch_id)
    if item is None or item.get("state") != "open":
        return False
    cost = Decimal(item["estimate"]) if cost is None else cost
    covered, holders = batch_items.scopes_of(item)  # a deleted key, team...: nothing billed on it
    now = keys.utcnow()
    changes = [batch_items.settled(batch_id, cost, now)]
    changes += governance.settle_changes(
        covered,
        hold_id=str(item.get("reservation_id") or "batch-" + batch_id),
        reserved=Decimal(item.get("reserved", 0)),
        holders=holders,
        counters=governance.spend_increments(cost, usage, forwarded=False),
        now=now,
    )
    operation = f"batch-settle-{batch_id}"
    write = partial(
        holds.settle, changes, operation=operation, marker_ttl=int(now.timestamp()) + OPERATION_MARKER_SECONDS
    )
    try:
        settled = await runtime.aws.run(write)
    except Exception as exc:
        logger.warning(
            "batch settle failed; the ledger retries it", extra={"batch": batch_id, "error": type(exc).__name__}
        )
        runtime.ledger.retry_later(Write(operation, write))
        return False
    if settled is holds.Settled.ALREADY_APPLIED:
        return False  # settled meanwhile by another fetch or sweep
    logger.info("batch settled", extra={"batch": batch_id, "cost_usd": float(cost), "exact": usage is not None})
    return True


# -- batches never fetched ----------------------------------------------------------------------------------------


class SweepClock:
    """When a runtime last started a sweep (runtime.py holds one): at most one every SWEEP_INTERVAL."""

    def __init__(self) -> None:
        self._last: datetime | None = None

    def start_if_due(self, runtime: Parts) -> None:
        now = keys.utcnow()
        # A clock that went backwards (tests move it) also allows a sweep.
        if self._last is not None and timedelta(0) <= now - self._last < SWEEP_INTERVAL:
            return
        self._last = now
        runtime.background.spawn(_sweep(runtime, now))


async def _sweep(runtime: Parts, now: datetime) -> None:
    try:
        await sweep(runtime, now)
    except Exception:
        logger.exception("batch sweep failed")


async def sweep(runtime: Parts, now: datetime) -> int:
    """Settle at their estimate the open batches whose due time has passed; how many were settled."""
    due = await runtime.aws.run(batch_items.due, now, _SWEEP_LIMIT)
    return sum([await settle_batch(runtime, batch_id, None, None) for batch_id in due])


def _grace(settings: Settings) -> timedelta:
    return timedelta(hours=settings.batch_settle_grace_hours)
