"""The uvicorn doors' HTTP protocol: uvicorn's httptools protocol, bounded in what a client can cost before the
gateway has authenticated it, and with what it writes during one turn of the event loop sent in one write.

Bounds (settings; docs/operations.md). uvicorn's httptools protocol has none of its own for a request's head: llhttp
buffers a header of any size, and a connection that never completes a head is never closed. Here:
  - a head (request line and headers) over MAX_REQUEST_HEAD_BYTES, or with more than MAX_REQUEST_HEADERS headers,
    is answered 431 and the connection closed; at most that many bytes of a head are ever handed to the parser;
  - a head not complete REQUEST_HEAD_TIMEOUT seconds after the connection opened (or after the first byte of a
    later request on it) is answered 408 and the connection closed;
  - an idle keep-alive connection is closed after KEEP_ALIVE_TIMEOUT seconds (uvicorn's own timer);
  - past MAX_CONNECTIONS open connections in the process, a new one is answered 503 and closed.
Each answer is an Anthropic-shaped error with `connection: close`.

One write per turn. uvicorn writes a response's head as soon as the app sends `http.response.start`, and its body
with each `http.response.body`: two system calls and two TCP segments for every whole answer, on the request's path
(each send on loopback costs as much as the gateway's own work for a request, issue 11). Held until the end of the
loop's turn, a whole answer's head and body leave together; a stream's head leaves with its first event when that
is already at hand, else at the end of the turn, as each later event does. The order of the bytes never changes.

run.sh selects it (`uvicorn --http anthropic_gateway.server_protocol:OneWritePerTurn`), and so does `serve`.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, cast

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from .settings import get_settings


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a request the protocol has refused."""


class BoundedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol with the bounds of the module docstring."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        settings = get_settings()
        # uvicorn's own idle timer, from our settings (uvicorn types it int; its call_later takes any number)
        self.timeout_keep_alive = settings.keep_alive_timeout  # type: ignore[assignment]
        self._max_head_bytes = settings.max_request_head_bytes
        self._max_headers = settings.max_request_headers
        self._head_timeout = settings.request_head_timeout
        self._max_connections = settings.max_connections
        self._reading_head = True  # between requests, or inside a request's head
        self._head_bytes = 0  # bytes handed to the parser since the current head began
        self._headers = 0  # headers of the current head
        self._heads = 0  # heads completed on this connection
        self._head_timer: asyncio.TimerHandle | None = None
        self._refusal: tuple[int, str, str] | None = None  # why the parser was stopped

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self._max_connections:
            self._refuse(503, "overloaded_error", "The gateway has too many open connections; retry shortly.")
            return
        self._start_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        while self._reading_head and len(data) > self._max_head_bytes - self._head_bytes:
            # More than the rest of the limit: a head must end within it, and the parser never holds more of one.
            self._start_head_timer()
            room = self._max_head_bytes - self._head_bytes
            piece, data = data[:room], data[room:]
            heads = self._heads
            self._head_bytes += len(piece)
            super().data_received(piece)
            if self.transport.is_closing():
                return
            if self._heads == heads:
                self._refuse(431, "request_too_large", f"The request head exceeds {self._max_head_bytes} bytes.")
                return
        if self._reading_head:
            self._start_head_timer()
            self._head_bytes += len(data)
        super().data_received(data)

    def send_400_response(self, msg: str) -> None:
        # uvicorn answers any parser error 400; a callback that refused the request says what to answer instead.
        if self._refusal is not None:
            self._refuse(*self._refusal)
        else:
            super().send_400_response(msg)

    # -- parser callbacks ------------------------------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers += 1
        if self._headers > self._max_headers:
            self._refusal = (431, "request_too_large", f"The request has more than {self._max_headers} headers.")
            raise _Refused
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._reading_head = False
        self._heads += 1
        self._stop_head_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._reading_head, self._head_bytes, self._headers = True, 0, 0  # the next request's head, when it comes

    # -- refusals --------------------------------------------------------------------------------------------------

    def _head_timed_out(self) -> None:
        self._head_timer = None
        self._refuse(408, "timeout_error", f"The request head did not arrive within {self._head_timeout:g} s.")

    def _refuse(self, status: int, error_type: str, message: str) -> None:
        """Answer `status` in Anthropic's error shape and close the connection, reading nothing more."""
        self._stop_head_timer()
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # A head sent behind a response still in progress: that response ends the connection, untouched.
            self.cycle.keep_alive = False
            self.transport.pause_reading()
            return
        body = json.dumps({"type": "error", "error": {"type": error_type, "message": message}}).encode()
        reason = {408: b"Request Timeout", 431: b"Request Header Fields Too Large", 503: b"Service Unavailable"}
        head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n"
        retry = b"retry-after: 1\r\n" if status == 503 else b""
        self.transport.write(head % (status, reason.get(status, b""), len(body)) + retry + b"\r\n" + body)
        self.transport.close()

    def _start_head_timer(self) -> None:
        """From a connection's opening, or the first byte of a later request: its head has this long."""
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self._head_timeout, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None


class OneWritePerTurn(BoundedHttpTools):
    """The doors' protocol: bounded (BoundedHttpTools), and what one turn of the loop writes leaves in one write."""

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
