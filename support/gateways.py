"""Gateways for tests: each an app of its own with a runtime of its own, served by uvicorn on loopback.

One module (not conftest, which tests may import a second time under another name) holds what every gateway the
tests start shares: the stream they write their EMF blobs and log lines to, and the list of those running now.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from support.captured_lines import Output
from support.servers import ThreadedUvicorn

PROTOCOL = "anthropic_gateway.server_protocol:OneWritePerTurn"  # run.sh's --http
OUTPUT = Output()  # where every gateway of the tests writes (the `captured` fixture reads it)
serving: list[ThreadedUvicorn] = []  # the gateways running now


@contextmanager
def start_gateway(settings: Any = None, **changes: Any) -> Iterator[ThreadedUvicorn]:
    """A gateway app of its own (its own runtime, from `settings` or the environment's, with `changes`) served by
    uvicorn as `make dev` and the Lambda Web Adapter run it. `server.app.runtime` is its runtime."""
    from anthropic_gateway.app import GatewayApp
    from anthropic_gateway.settings import get_settings

    app = GatewayApp(replace(settings or get_settings(), **changes), stream=OUTPUT)  # type: ignore[arg-type]
    with ThreadedUvicorn(app, app_drain=app.drain, proxy_headers=True, http=PROTOCOL, loop="asyncio") as server:
        serving.append(server)
        try:
            yield server
        finally:
            serving.remove(server)


def drain_all() -> None:
    """Return once every running gateway has finished what it has served (accounting written)."""
    for server in list(serving):
        server.drain()
