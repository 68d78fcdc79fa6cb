"""What happens once a request is over: its cost, the key's spend and token counters.

Runs after the last byte has gone to the client (see forwarding._spawn), never in front of it.
"""

from __future__ import annotations

import anyio.to_thread
from aws_lambda_powertools import Logger

from . import keys, pricing
from .exchange import Exchange

logger = Logger(child=True)


def cost_of(exchange: Exchange) -> float:
    usage = exchange.usage
    return pricing.cost_usd(exchange.response_model, usage) if usage else 0.0


async def settle(exchange: Exchange) -> None:
    """Record a finished pass-through request. Failures are logged, never raised: the client is already served."""
    try:
        cost = cost_of(exchange)
        if exchange.principal and exchange.principal.record:
            await anyio.to_thread.run_sync(keys.add_usage, exchange.principal.record.token, cost, exchange.usage)
    except Exception:
        logger.exception("accounting failed", extra={"request_id": exchange.request_id})
