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
from typing import Protocol

from aws_lambda_powertools import Logger

from . import batches, day_spend, governance, pricing
from .exchange import Exchange
from .metrics import Metrics

logger = Logger(child=True)


class Parts(batches.Parts, Protocol):
    """What accounting uses of the running gateway (runtime.py's `Runtime` has them): what governance and batches
    settle with, and the metrics writer."""

    metrics: Metrics


class Accounting:
    """One runtime's accounting: the requests whose response has ended and which are not settled yet, and the
    runtime they are settled with (metrics, unknown-model prices, after-response tasks, the ledger, AWS calls)."""

    def __init__(self, runtime: Parts) -> None:
        self._runtime = runtime
        self._queued: list[Exchange] = []

    def cost_of(self, exchange: Exchange) -> Decimal:
        usage = exchange.usage
        unknown_models = self._runtime.unknown_models
        return pricing.cost_usd(exchange.response_model, usage, unknown_models) if usage else Decimal(0)

    def after_response(self, exchange: Exchange) -> None:
        """Settle `exchange` on the loop's next turn, with every other request that ended meanwhile. Never
        raises."""
        if not self._queued:
            asyncio.get_running_loop().call_soon(self.settle_queued)
        self._queued.append(exchange)

    def settle_queued(self) -> None:
        """Settle every request queued now (drain calls it too, so nothing waits for a turn that never comes).
        Failures are logged, never raised: the clients are already served."""
        queued, self._queued = self._queued, []
        lines: list[str] = []
        for exchange in queued:
            cost = Decimal(0)
            try:
                cost = self.cost_of(exchange)
                self._settle_key(exchange, cost)
            except Exception:
                logger.exception("accounting failed", extra={"request_id": exchange.request_id})
            try:
                lines += self._runtime.metrics.lines(exchange, cost)  # EMF blobs + the access log line
            except Exception:
                logger.exception("metrics failed", extra={"request_id": exchange.request_id})
            try:
                day_spend.record(self._runtime.ledger, exchange, cost)  # per tag, team and user
            except Exception:
                logger.exception("spend per day failed", extra={"request_id": exchange.request_id})
        self._runtime.metrics.write(lines)

    def _settle_key(self, exchange: Exchange, cost: Decimal) -> None:
        runtime = self._runtime
        if exchange.batch is not None or governance.settle_waits(exchange):
            runtime.background.spawn(_settle_holds(runtime, exchange, cost))
        elif (write := governance.settle_now(runtime.ledger, exchange, cost)) is not None:
            runtime.background.spawn(governance.apply(runtime, write, exchange.request_id))


async def _settle_holds(runtime: Parts, exchange: Exchange, cost: Decimal) -> None:
    try:
        await governance.settle(runtime, exchange, cost)  # spend and tokens on the key; releases what admit reserved
    except Exception:
        logger.exception("accounting failed", extra={"request_id": exchange.request_id})
    await batches.settle(
        runtime, exchange
    )  # a batch create's reservation, or a batch settled from its results; never raises
