"""The floor `make bench` sets beside the gateway: the least a relay on this stack does per request.

A bare ASGI app under the same uvicorn flags as the gateway, forwarding with the gateway's own upstream client
(`upstream_http`) and relaying the answer chunk by chunk: no authentication, no checks, no accounting, no metrics.
What the gateway adds above this row is the price of what it does; what this row adds above the direct upstream is
the price of a Python relay (uvicorn, asyncio, the client).
"""

from __future__ import annotations

import os

from starlette.types import Receive, Scope, Send

from anthropic_gateway.upstream_http import UpstreamPool

_HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"transfer-encoding"})
_DROP_REQUEST = _HOP_BY_HOP | {b"host", b"content-length"}  # the client sets these itself
_pool: UpstreamPool | None = None


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    global _pool
    if scope["type"] != "http":
        return  # lifespan: nothing to set up
    if scope["path"] == "/health":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        return
    if _pool is None:
        _pool = UpstreamPool(os.environ["ANTHROPIC_API_BASE"], max_connections=1000, max_idle=100)
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    headers = [(name, value) for name, value in scope["headers"] if name not in _DROP_REQUEST]
    target = scope["raw_path"].removeprefix(b"/anthropic") + (
        b"?" + scope["query_string"] if scope["query_string"] else b""
    )
    response = await _pool.request(scope["method"], target, headers, b"".join(chunks))
    try:
        relayed = [(name, value) for name, value in response.headers if name.lower() not in _HOP_BY_HOP]
        await send({"type": "http.response.start", "status": response.status, "headers": relayed})
        async for chunk in response.aiter_raw():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    finally:
        await response.aclose()
