"""What happens once a request is over: its cost, the key's spend and token counters, metrics, spend per day (per
tag, team and user).

Runs after the last byte has gone to the client (the response that ends the request calls `after_response`:
responses.py), never in front of it.

Most requests need no I/O to settle: their counters go to the ledger and their metrics and access line to stdout.
Those are settled together, on the event loop's next turn after their responses end, with one write of all their
lines: no task per request (issue 11). A request that holds something on DynamoDB (a budget reservation, a
parallel slot, tpm tokens) or a batch gets its own task, which writes that down (governance.py, batches.py).
"""

from __future__ import annotations

import asyncio
from decimal import Decimal

from aws_lambda_powertools import Logger

from . import background, batches, day_spend, governance, metrics, pricing
from .exchange import Exchange

logger = Logger(child=True)
# Requests whose response has ended and which are not settled yet, per event loop (tests run several loops).
_queued: dict[asyncio.AbstractEventLoop, list[Exchange]] = {}


def cost_of(exchange: Exchange) -> Decimal:
    usage = exchange.usage
    return pricing.cost_usd(exchange.response_model, usage) if usage else Decimal(0)


def after_response(exchange: Exchange) -> None:
    """Settle `exchange` on the loop's next turn, with every other request that ended meanwhile. Never raises."""
    loop = asyncio.get_running_loop()
    queued = _queued.get(loop)
    if queued is None:
        queued = _queued[loop] = []
        loop.call_soon(settle_queued, loop)
    queued.append(exchange)


def settle_queued(loop: asyncio.AbstractEventLoop) -> None:
    """Settle every request queued on `loop` now (drain calls it too, so nothing waits for a turn that never
    comes). Failures are logged, never raised: the clients are already served."""
    lines: list[str] = []
    for exchange in _queued.pop(loop, ()):
        cost = Decimal(0)
        try:
            cost = cost_of(exchange)
            _settle_key(exchange, cost)
        except Exception:
            logger.exception("accounting failed", extra={"request_id": exchange.request_id})
        try:
            lines += metrics.lines(exchange, cost)  # EMF blobs + the access log line
        except Exception:
            logger.exception("metrics failed", extra={"request_id": exchange.request_id})
        try:
            day_spend.record(exchange, cost)  # per tag, team and user
        except Exception:
            logger.exception("spend per day failed", extra={"request_id": exchange.request_id})
    metrics.write(lines)


def _settle_key(exchange: Exchange, cost: Decimal) -> None:
    if exchange.batch is not None or governance.settle_waits(exchange):
        background.spawn(_settle_holds(exchange, cost))
    elif (write := governance.settle_now(exchange, cost)) is not None:
        background.spawn(governance.apply(write, exchange.request_id))


async def _settle_holds(exchange: Exchange, cost: Decimal) -> None:
    try:
        await governance.settle(exchange, cost)  # spend and tokens on the key; releases what admit reserved
    except Exception:
        logger.exception("accounting failed", extra={"request_id": exchange.request_id})
    await batches.settle(exchange)  # a batch create's reservation, or a batch settled from its results; never raises
