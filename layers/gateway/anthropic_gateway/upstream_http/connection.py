"""One HTTP/1.1 connection to the upstream: an asyncio Protocol whose response framing is llhttp's (httptools).

Our code owns the socket events and the waits; the parser owns HTTP: the status line, headers, content-length and
chunked bodies, trailers, 1xx interim responses and the bodiless 204/304, keep-alive. What llhttp cannot know is the
request method, so a response to HEAD ends at its headers here and its connection is not reused; and it is not told
about EOF, so a close-delimited body (neither content-length nor chunked) ends at EOF here.

One request at a time: the pool hands a connection to one caller, who sends, reads the head, then the body.

A connection goes back to the pool only when the exchange on it ended cleanly, so that no byte of one request or
answer can ever be taken for part of the next one (another tenant's): the whole request was handed to the kernel
before any of the answer came; the upstream surely read it (an answer to a request with a body is reused only when
it is a success: a server that refuses a body early, 413 or 401, may leave it unread on the connection, where it
would read it as the next request); the whole answer was read; no bodiless answer (1xx, 204, 304) announced a body;
and nothing arrived while the connection sat idle in the pool (the loop keeps reading idle connections, and any
byte closes one at once).
"""

from __future__ import annotations

import asyncio
import select
from collections import deque

import httptools

from .errors import ReadTimeout, RemoteProtocolError, UpstreamTimeout, WriteTimeout

# Reading pauses while this much of the body waits for a slow reader, and resumes once the reader has taken it:
# one upstream response never holds much more than this in the gateway's memory.
_HIGH_WATER = 256 * 1024


def _unsent(transport: asyncio.BaseTransport) -> int:
    """Bytes of ours not yet handed to the kernel. A TLS transport counts only what it has not encrypted yet: the
    encrypted bytes wait in the TCP transport below it (asyncio's sslproto keeps it as `_ssl_protocol._transport`,
    the only way to reach it), and an upstream that answers before reading them may never read them."""
    unsent = transport.get_write_buffer_size()  # type: ignore[attr-defined]
    below = getattr(getattr(transport, "_ssl_protocol", None), "_transport", None)
    if below is not None:
        unsent += below.get_write_buffer_size()
    return int(unsent)


class _StopParsing(Exception):
    """Raised from a parser callback when the response is complete but llhttp would read on: after HEAD's headers,
    or when bytes follow a complete response. The connection is then closed rather than reused."""


class Connection(asyncio.Protocol):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._poll = select.poll()
        self._waiter: asyncio.Future[bool] | None = None
        self._closed: asyncio.Future[None] = loop.create_future()
        self._lost = False  # nothing more will be read: EOF, reset, or closed by us
        self._error: str | None = None  # why the connection ended early, for the caller's exception
        self._write_paused = False
        self._reading_paused = False
        self.requests = 0
        self.idle_since = 0.0
        # The exchange in progress.
        self._expecting = False  # a request went out and its response has not ended yet
        self._head_only = False
        self._sent_body = False  # the request had a body, which the upstream may leave unread if it answers early
        self._interim = False
        self._early = False  # the answer began before the whole request had been handed to the kernel
        self._confused = False  # a 1xx, 204 or 304 announced (or sent) a body: the framing cannot be trusted
        self._announced_body = False  # the current message's head has a non-zero content-length or a transfer-encoding
        self._framed = False  # content-length or chunked: EOF before the end is an error, not the end
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_done = False
        self.body_done = False
        self.keep_alive = False
        self._chunks: deque[bytes] = deque()
        self._buffered = 0

    # -- used by the pool ----------------------------------------------------------------------------------------

    def still_open(self) -> bool:
        """Whether an idle connection can take a request. An idle socket that polls readable holds either EOF or
        bytes nobody asked for, and both mean the server has given up on it (even if the loop has not yet run
        eof_received), so the request goes elsewhere before a single byte of it is written here."""
        return not self._lost and self._transport is not None and not self._poll.poll(0)

    def send(self, request: bytes, *, head_only: bool, with_body: bool) -> bool:
        """Write the whole request in one call; False if the kernel refused its first byte (nothing was sent)."""
        assert self._transport is not None
        self.requests += 1
        self._expecting, self._head_only, self._sent_body, self._interim = True, head_only, with_body, False
        self.status, self.headers_done, self.body_done, self.keep_alive = 0, False, False, False
        self._transport.write(request)
        # A plain socket transport tries send() at once and closes itself if that raises, before any byte was
        # accepted. (A TLS transport reports failures later, so a request over TLS is never taken as unsent.)
        return not self._transport.is_closing()

    async def drain(self, timeout: float) -> None:
        # An answer can come before the upload has gone out (413, 401): then it is the answer, not a write timeout.
        while self._write_paused and not self._lost and not self.headers_done:
            await self._wait(timeout, WriteTimeout, "the upstream did not take the request")

    async def read_head(self, timeout: float) -> None:
        while not self.headers_done:
            if self._lost:
                raise RemoteProtocolError(self._error or "the upstream closed the connection without a response")
            await self._wait(timeout, ReadTimeout, "the upstream did not answer")

    async def read_body(self, timeout: float) -> bytes:
        """The body received so far and not yet read, waiting for more if there is none; b"" once it has ended."""
        while True:
            if self._chunks:
                chunk = self._chunks.popleft() if len(self._chunks) == 1 else b"".join(self._chunks)
                self._chunks.clear()
                self._buffered = 0
                if self._reading_paused and self._transport is not None:
                    self._reading_paused = False
                    self._transport.resume_reading()
                return chunk
            if self.body_done:
                return b""
            if self._lost:
                raise RemoteProtocolError(self._error or "the upstream closed the connection mid-body")
            await self._wait(timeout, ReadTimeout, "the upstream stopped sending the body")

    @property
    def body_read(self) -> bool:
        """The response has ended and `read_body` has handed out all of its body."""
        return self.body_done and not self._chunks

    @property
    def reusable(self) -> bool:
        """The exchange ended cleanly (the module's docstring says what that takes) and the upstream keeps the
        connection alive."""
        return (
            self.keep_alive
            and not self._lost
            and not self._chunks
            and not self._early
            and not self._confused
            and (not self._sent_body or 200 <= self.status < 300)
            and self._transport is not None
            and not _unsent(self._transport)
        )

    def close(self) -> None:
        """Close gracefully (FIN, or TLS close_notify): for idle connections."""
        self._lost = True
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        """Close at once, dropping whatever is buffered: for a connection left mid-exchange."""
        self._lost = True
        if self._transport is not None:
            self._transport.abort()

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)

    async def _wait(self, timeout: float, timeout_error: type[UpstreamTimeout], message: str) -> None:
        waiter = self._waiter = self._loop.create_future()
        # A timer handle rather than asyncio.timeout(): this runs for every response, and is much cheaper.
        timer = self._loop.call_later(timeout, _expire, waiter)
        try:
            if not await waiter:
                raise timeout_error(f"{message} within {timeout:g} s")
        finally:
            timer.cancel()
            self._waiter = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(True)

    # -- asyncio.Protocol ----------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            self._poll.register(sock.fileno(), select.POLLIN)

    def data_received(self, data: bytes) -> None:
        if not self._expecting:
            self._fail("the upstream sent bytes with no request outstanding")
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _StopParsing):
                self.abort()
            else:
                self._fail(f"invalid response from the upstream: {exc.__context__ or exc}")
        except httptools.HttpParserError as exc:
            self._fail(f"invalid response from the upstream: {exc}")
        self._wake()

    def eof_received(self) -> bool | None:
        if self._expecting and self.headers_done and not self._framed:
            self._end(keep_alive=False)  # a close-delimited body ends here
        self._lost = True
        self._wake()
        return None  # let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        if exc is not None and self._error is None:
            self._error = f"the upstream connection broke: {exc!r}"
        if not self._closed.done():
            self._closed.set_result(None)
        self._wake()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake()

    def _fail(self, reason: str) -> None:
        self._error = self._error or reason
        self.abort()
        self._wake()

    def _end(self, *, keep_alive: bool) -> None:
        self._expecting = False
        self.body_done = True
        self.keep_alive = keep_alive

    # -- httptools parser callbacks ------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if not self._expecting:
            raise _StopParsing
        assert self._transport is not None
        if _unsent(self._transport):
            self._early = True  # the upstream answers what it has not all received: it may never read the rest
        self.headers = []
        self._framed = self._announced_body = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.headers_done:
            return  # a trailer: ignored
        self.headers.append((name, value))
        if len(name) == 14 and name.lower() == b"content-length":
            self._framed = True
            self._announced_body = self._announced_body or value.strip() != b"0"
        elif len(name) == 17 and name.lower() == b"transfer-encoding":
            # llhttp reads a response body to EOF unless chunked is the final coding.
            self._framed = value.rsplit(b",", 1)[-1].strip().lower() == b"chunked"
            self._announced_body = True

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:
            if status == 101:
                raise ValueError("101 Switching Protocols, but no upgrade was asked for")
            self._interim = True  # 100 Continue, 103 Early Hints: the final response follows
            self._confused = self._confused or self._announced_body
            return
        self.status = status
        self.headers_done = True
        if status in (204, 304) and self._announced_body:
            # llhttp reads no body here, as HTTP says; the upstream may still send the one it announced.
            self._confused = True
        if self._head_only:
            self._end(keep_alive=False)
            raise _StopParsing

    def on_body(self, body: bytes) -> None:
        if self._interim:
            # llhttp reads a body after an unknown 1xx that announces one; HTTP gives 1xx none. Not the answer's.
            self._confused = True
            return
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._reading_paused and self._transport is not None:
            self._reading_paused = True
            self._transport.pause_reading()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        self._end(keep_alive=self._parser.should_keep_alive())


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)
