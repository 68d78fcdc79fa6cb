"""What happens once a request is over: its cost, the key's spend and token counters, metrics, spend per tag.

Runs after the last byte has gone to the client (the response that ends the request starts it: responses.py),
never in front of it.
"""

from __future__ import annotations

from decimal import Decimal

from aws_lambda_powertools import Logger

from . import batches, governance, metrics, pricing, tag_spend
from .exchange import Exchange

logger = Logger(child=True)


def cost_of(exchange: Exchange) -> Decimal:
    usage = exchange.usage
    return pricing.cost_usd(exchange.response_model, usage) if usage else Decimal(0)


async def settle(exchange: Exchange) -> None:
    """Record a finished pass-through request. Failures are logged, never raised: the client is already served."""
    cost = Decimal(0)
    try:
        cost = cost_of(exchange)
        await governance.settle(exchange, cost)  # spend and tokens on the key; releases what admit reserved
    except Exception:
        logger.exception("accounting failed", extra={"request_id": exchange.request_id})
    await batches.settle(exchange)  # a batch create's reservation, or a batch settled from its results; never raises
    try:
        metrics.publish(exchange, cost)  # EMF blobs + the access log line, on stdout
    except Exception:
        logger.exception("metrics failed", extra={"request_id": exchange.request_id})
    try:
        if exchange.tags:
            tag_spend.record(exchange.tags, cost, exchange.usage)
    except Exception:
        logger.exception("tag spend failed", extra={"request_id": exchange.request_id})
