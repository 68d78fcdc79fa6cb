"""Message Batches billed to the key that created them: reserved at create, settled once from the results.

  - **create** (`admit`, before the request goes upstream): an upper bound of the whole batch at batch prices
    (each request's prompt bytes and `max_tokens`, as governance estimates one Message, times pricing's batch
    multiplier) is reserved on the key's budget if all of it fits, else 402. Keys without a budget reserve nothing.
  - **the answer** (`observe`, before it goes back to the client): a created batch is remembered, one item
    `BATCH#<id>`/`BATCH` {key_id, estimate, reserved, state}; an upstream refusal releases the reservation (`settle`).
  - **results** (`results_tap`): `GET .../results` is summed line by line as it is relayed (JSONL, one line held at
    a time); once the stream has ended normally the batch is settled at the exact cost of its `succeeded` results.
  - **never fetched**: a batch seen `ended` by a retrieve or list through the gateway may still be fetched for
    BATCH_SETTLE_GRACE_HOURS (24); after that, or 29 days after its creation (when Anthropic deletes the results),
    it is settled at its estimate. Due batches are found by a sweep of the open batches (gsi1 `BATCH#OPEN`, by due
    time) that any pass-through request starts, at most once a minute per instance.
Settling is one transaction: the batch's state `open` -> `settled` (its condition makes it exactly once, however
many fetches and sweeps race) with the key's spend, tokens and the released reservation.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_CEILING, Decimal
from typing import Any

import anyio.to_thread
from aws_lambda_powertools import Logger

from . import background, governance, keys, pricing, table
from .errors import GatewayError
from .exchange import Exchange
from .settings import get_settings
from .usage import Usage, UsageTap

logger = Logger(child=True)

CREATE_PATH = "/v1/messages/batches"
_RESULTS_PATH = re.compile(r"/v1/messages/batches/([^/]+)/results")
OPEN_INDEX = "BATCH#OPEN"  # gsi1pk of the batches not settled yet; gsi1sk = <due time>#<batch id>
RESULTS_RETENTION = timedelta(days=29)  # Anthropic deletes a batch's results 29 days after its creation
ITEM_TTL = timedelta(days=30)
# The budget hold of a batch outlives the batch and its grace, so no admission sweeps it while it may still settle.
RESERVATION_LEASE = ITEM_TTL + timedelta(days=2)
SWEEP_INTERVAL = timedelta(seconds=60)
_SWEEP_LIMIT = 25  # batches settled per sweep; the next sweep takes the rest
_MAX_NOTED = 20  # ended batches noted per list answer: bounds the writes one list request can cause
_MAX_TOKENS_COUNTED = 1_000_000  # no model writes more; bounds the estimate of an absurd max_tokens
_ZERO = Decimal(0)
_MICRO_DOLLAR = Decimal("0.000001")


@dataclass
class CreateHold:
    """A batch create in flight: what it reserved, and what became of it."""

    key_id: str
    estimate: Decimal
    reserved: Decimal  # on the key's budget; 0 without a budget
    reservation_id: str  # names the hold on the key's budget (governance.reserve_budget)
    batch_id: str | None = None
    remembered: bool = False


@dataclass
class SeenEnded:
    """Batches a retrieve or list answer showed ended: their grace period starts."""

    batch_ids: list[str]


@dataclass
class ResultsTap(UsageTap):
    """Sums the usage of a batch's JSONL results as they are relayed. Its own `usage` stays unseen: fetching
    results costs nothing; the batch's cost is settled on the batch (`settle`)."""

    batch_id: str = ""
    standard_cost: Decimal = _ZERO  # at standard prices; the batch multiplier applies once, at settle
    total: Usage = field(default_factory=Usage)
    _line: bytearray = field(default_factory=bytearray)

    def feed(self, chunk: bytes) -> None:
        self._line += chunk
        end = self._line.rfind(b"\n")
        if end < 0:
            return
        lines, self._line = bytes(self._line[:end]), self._line[end + 1 :]
        for line in lines.split(b"\n"):
            self._result(line)

    def close(self) -> None:
        if self._line:
            self._result(bytes(self._line))
            self._line.clear()

    def _result(self, line: bytes) -> None:
        if b'"succeeded"' not in line:  # errored, canceled, expired: not billed
            return
        try:
            entry = json.loads(line)
            result = entry["result"]
            message = result["message"]
            if result["type"] != "succeeded" or not isinstance(message["usage"], dict):
                return
        except (ValueError, TypeError, KeyError, RecursionError):
            return
        usage = Usage()
        usage.update(message["usage"])
        model = message.get("model") if isinstance(message.get("model"), str) else None
        self.standard_cost += pricing.cost_usd(model, usage)
        for name in keys.TOKEN_COUNTERS:
            setattr(self.total, name, getattr(self.total, name) + getattr(usage, name))


BatchState = CreateHold | SeenEnded | ResultsTap


# -- create -------------------------------------------------------------------------------------------------------


async def admit(exchange: Exchange, body: bytes) -> None:
    """Before a batch create goes upstream: reserve its estimate on the key's budget, or refuse (402). Any request
    also starts a sweep of the batches due to be settled at their estimate, when none ran in the last minute."""
    _start_sweep_if_due()
    record = exchange.principal.record if exchange.principal else None
    if record is None or (exchange.method, exchange.path) != ("POST", CREATE_PATH):
        return  # the master key is not billed
    estimate = await anyio.to_thread.run_sync(estimate_batch, body)
    reservation_id = "batch-" + exchange.request_id
    try:  # a key without a budget holds nothing
        await governance.reserve_budget(
            record, estimate, reservation_id, lease_seconds=int(RESERVATION_LEASE.total_seconds()), whole=True
        )
    except GatewayError as exc:
        if exc.status != 402:
            raise
        raise GatewayError(
            402,
            f"This batch may cost up to ${estimate:.6f} at batch prices (each request's prompt and max_tokens), "
            f"more than this key's budget has left. {exc.message}",
            headers=exc.headers,
        ) from None
    reserved = estimate if record.max_budget is not None else _ZERO
    exchange.batch = CreateHold(record.key_id, estimate, reserved, reservation_id)


def estimate_batch(body: bytes) -> Decimal:
    """An upper bound of what a batch can cost: each request estimated as a Message, at batch prices."""
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
        total += governance.estimate_cost(counted, prompt_bytes)
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


async def observe(exchange: Exchange, content: bytes) -> None:
    """A batch create, retrieve, list or cancel answer on its way to the client (small JSON, in hand)."""
    if exchange.status is None or not 200 <= exchange.status < 300:
        return
    try:
        answer = json.loads(content)
    except (ValueError, RecursionError):
        return
    if not isinstance(answer, dict):
        return
    hold = exchange.batch
    if isinstance(hold, CreateHold):
        if isinstance(answer.get("id"), str):
            hold.batch_id = answer["id"][:200]
            try:  # before the answer goes out, so no results fetch can come before the batch is known
                await anyio.to_thread.run_sync(_remember, hold, _ended(answer))
                hold.remembered = True
            except Exception:
                logger.exception("batch not remembered; it is settled at its estimate", extra={"batch": hold.batch_id})
        return
    listed = answer.get("data")
    shown: list[Any] = listed if isinstance(listed, list) else [answer]
    ended = [batch["id"][:200] for batch in shown if isinstance(batch, dict) and _ended(batch)]
    if exchange.method == "GET" and ended:
        exchange.batch = SeenEnded(ended[:_MAX_NOTED])


def _ended(batch: dict[str, Any]) -> bool:
    return batch.get("processing_status") == "ended" and isinstance(batch.get("id"), str)


def _remember(hold: CreateHold, ended: bool) -> None:
    now = keys.utcnow()
    due = now + _grace() if ended else now + RESULTS_RETENTION
    item: table.Item = {
        "pk": _pk(hold.batch_id or ""),
        "sk": "BATCH",
        "key_id": hold.key_id,
        "estimate": hold.estimate,
        "reserved": hold.reserved,
        "reservation_id": hold.reservation_id,
        "state": "open",
        "created_at": keys.iso_seconds(now),
        "ttl": int((now + ITEM_TTL).timestamp()),
        "gsi1pk": OPEN_INDEX,
        "gsi1sk": f"{keys.iso_seconds(due)}#{hold.batch_id}",
    }
    if ended:
        item["ended_seen_at"] = keys.iso_seconds(now)
    table.handle().put_item(Item=item, ConditionExpression="attribute_not_exists(pk)")


def results_tap(exchange: Exchange, status: int, content_type: str) -> ResultsTap | None:
    """The tap for a batch's results being fetched (a 200 on GET .../results), or None for any other response."""
    match = _RESULTS_PATH.fullmatch(exchange.path)
    if exchange.method != "GET" or status != 200 or match is None:
        return None
    exchange.batch = tap = ResultsTap(content_type, batch_id=match.group(1))
    return tap


# -- after the response -------------------------------------------------------------------------------------------


async def settle(exchange: Exchange) -> None:
    """What a finished batch request leaves to do (accounting calls it for every request with batch state).
    Never raises."""
    state = exchange.batch
    record = exchange.principal.record if exchange.principal else None
    try:
        if isinstance(state, CreateHold) and not state.remembered and record is not None:
            # Created but not remembered: billed at its estimate now. Refused or never answered: released.
            cost = state.estimate if state.batch_id else _ZERO
            await governance.settle_budget(record, state.reservation_id, state.reserved, cost)
        elif isinstance(state, SeenEnded):
            for batch_id in state.batch_ids:
                await anyio.to_thread.run_sync(_note_ended, batch_id)
        elif isinstance(state, ResultsTap) and exchange.completed and exchange.status == 200:
            # The whole results file went through: billed exactly.
            await settle_batch(state.batch_id, state.standard_cost * pricing.batch_multiplier(), state.total)
    except Exception:
        logger.exception("batch accounting failed", extra={"request_id": exchange.request_id})


def _note_ended(batch_id: str) -> None:
    due = keys.utcnow() + _grace()
    table.update_if(  # a failed condition: unknown, settled, or already noted
        _pk(batch_id),
        "BATCH",
        "SET #ended = :now, #due = :due",
        "#state = :open AND attribute_not_exists(#ended)",
        {"#ended": "ended_seen_at", "#due": "gsi1sk", "#state": "state"},
        {":now": keys.iso_seconds(keys.utcnow()), ":due": f"{keys.iso_seconds(due)}#{batch_id}", ":open": "open"},
    )


async def settle_batch(batch_id: str, cost: Decimal | None, usage: Usage | None) -> bool:
    """Settle an open batch once: `cost` (None: its estimate) on its key's spend, its reservation released.
    False when it was unknown or already settled.

    Exactly once: the batch item flips from open to settled on a condition (one fetch or sweep wins), and the
    winner's spend write is governance's, applied once per reservation id and retried by the ledger.
    """
    item = await anyio.to_thread.run_sync(table.get, _pk(batch_id), "BATCH")
    if item is None or item.get("state") != "open":
        return False
    cost = Decimal(item["estimate"]) if cost is None else cost
    lost = await anyio.to_thread.run_sync(
        table.update_if,
        _pk(batch_id),
        "BATCH",
        "SET #state = :settled, #cost = :cost, #at = :now REMOVE gsi1pk, gsi1sk",
        "#state = :open",
        {"#state": "state", "#cost": "settled_cost", "#at": "settled_at"},
        {":settled": "settled", ":open": "open", ":cost": cost, ":now": keys.iso_seconds(keys.utcnow())},
    )
    if lost is not None:
        return False  # settled meanwhile by another fetch or sweep
    record = await anyio.to_thread.run_sync(keys.load_by_key_id, str(item["key_id"]))
    if record is not None:  # a deleted key has nothing left to bill
        reservation = str(item.get("reservation_id") or "batch-" + batch_id)
        await governance.settle_budget(record, reservation, Decimal(item.get("reserved", 0)), cost, usage)
    logger.info("batch settled", extra={"batch": batch_id, "cost_usd": float(cost), "exact": usage is not None})
    return True


# -- batches never fetched ----------------------------------------------------------------------------------------

_last_sweep: list[datetime] = []


def _start_sweep_if_due() -> None:
    now = keys.utcnow()
    # A clock that went backwards (tests move it) also allows a sweep.
    if _last_sweep and timedelta(0) <= now - _last_sweep[0] < SWEEP_INTERVAL:
        return
    _last_sweep[:] = [now]
    background.spawn(_sweep(now))


async def _sweep(now: datetime) -> None:
    try:
        await sweep(now)
    except Exception:
        logger.exception("batch sweep failed")


async def sweep(now: datetime) -> int:
    """Settle at their estimate the open batches whose due time has passed; how many were settled."""
    due = await anyio.to_thread.run_sync(_due, now)
    return sum([await settle_batch(str(item["pk"]).removeprefix("BATCH#"), None, None) for item in due])


def _due(now: datetime) -> list[table.Item]:
    from boto3.dynamodb.conditions import Key

    page = table.handle().query(
        IndexName="gsi1",
        KeyConditionExpression=Key("gsi1pk").eq(OPEN_INDEX) & Key("gsi1sk").lt(keys.iso_seconds(now)),
        Limit=_SWEEP_LIMIT,
    )
    return list(page.get("Items", []))


def _grace() -> timedelta:
    return timedelta(hours=get_settings().batch_settle_grace_hours)


def _pk(batch_id: str) -> str:
    return f"BATCH#{batch_id}"
