"""The buffered door: API Gateway (HTTP API, payload v2) events into the same app, through Mangum.

The app and every route live in the gateway layer (`anthropic_gateway`); this module only adapts the event.
An invocation has no server lifecycle (`lifespan="off"`: Mangum would run one per invocation), so the app is
started here, once, while Lambda initialises the function: its runtime is built and warmed (AWS clients made,
secrets read) before the first invocation. Mangum runs every invocation on this thread's event loop, the one
the runtime belongs to.

The app accounts for a request (spend, counters, metrics) once its response is complete, on the event loop's next
turn (accounting.py). Lambda freezes the process as soon as the handler returns, so the handler lets that work
finish first (`drain`); it costs the caller the few milliseconds of a DynamoDB write, and no request goes
unaccounted.
"""

import asyncio
from typing import Any

from mangum import Mangum
from mangum.types import LambdaContext, LambdaEvent

from anthropic_gateway.app import app

_loop = asyncio.new_event_loop()
asyncio.set_event_loop(_loop)
_adapter = Mangum(app, lifespan="off")
_loop.run_until_complete(app.start())


def handler(event: LambdaEvent, context: LambdaContext) -> dict[str, Any]:
    try:
        return _adapter(event, context)
    finally:
        _loop.run_until_complete(app.drain())
