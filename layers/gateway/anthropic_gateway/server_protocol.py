"""The streaming door's HTTP protocol: uvicorn's httptools protocol, with what it writes during one turn of the
event loop sent in one write.

uvicorn writes a response's head as soon as the app sends `http.response.start`, and its body with each
`http.response.body`: two system calls and two TCP segments for every whole answer, on the request's path (each
send on loopback costs as much as the gateway's own work for a request, issue 11). Held until the end of the
loop's turn, a whole answer's head and body leave together; a stream's head leaves with its first event when that
is already at hand, else at the end of the turn, as each later event does. The order of the bytes never changes.

run.sh selects it (`uvicorn --http anthropic_gateway.server_protocol:OneWritePerTurn`), and so does `serve`.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class OneWritePerTurn(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(cast("asyncio.Transport", _TurnWriter(transport, self.loop)))


class _TurnWriter:
    """The connection's transport, seen through one change: writes are held until the loop's turn ends (or the
    connection is closed), then sent as one. Everything else is the transport's own (`__getattr__`), so flow
    control still sees the kernel's buffer: what is held is never more than one turn's writes."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._held:
            self._loop.call_soon(self._flush)
        self._held.append(data)

    def close(self) -> None:
        self._flush()  # a response that ends with the connection (connection: close) still goes out whole
        self._transport.close()

    def _flush(self) -> None:
        if self._held:
            data = self._held[0] if len(self._held) == 1 else b"".join(self._held)
            self._held.clear()
            self._transport.write(data)  # a transport already lost drops it, as it would have dropped the parts

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
