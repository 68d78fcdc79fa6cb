"""The buffered door: API Gateway (HTTP API, payload v2) events into the same FastAPI app, through Mangum.

The app and every route live in the gateway layer (`anthropic_gateway`); this module only adapts the event.
`lifespan="off"`: an invocation has no server lifecycle, and the app creates what it needs on first use.

The app accounts for a request (spend, counters, metrics) once its response is complete, on the event loop's next
turn (accounting.py). Lambda freezes the process as soon as the handler returns, so the handler lets that work
finish first (`drain`);
it costs the caller the few milliseconds of a DynamoDB write, and no request goes unaccounted.
"""

import asyncio
from typing import Any

from mangum import Mangum
from mangum.types import LambdaContext, LambdaEvent

from anthropic_gateway.app import app, drain

_adapter = Mangum(app, lifespan="off")


def handler(event: LambdaEvent, context: LambdaContext) -> dict[str, Any]:
    try:
        return _adapter(event, context)
    finally:
        # Mangum runs every invocation on this thread's event loop; the pending work lives there too.
        asyncio.get_event_loop().run_until_complete(drain())
