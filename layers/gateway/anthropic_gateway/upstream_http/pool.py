"""A bounded keep-alive pool of HTTP/1.1 connections to one origin, and the streamed response it hands out."""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncIterator
from types import TracebackType
from urllib.parse import urlsplit

import certifi

from .connection import Connection
from .errors import ConnectError, ConnectTimeout, PoolTimeout

# Methods whose empty body is still a body (RFC 9110 8.6): they get Content-Length: 0, the others nothing.
_BODY_METHODS = frozenset({b"POST", b"PUT", b"PATCH"})


class UpstreamPool:
    """Keep-alive connections to the origin of `base_url`, made once per process and shared by every request.

    It carries no per-user state (no cookies, no auth) and adds nothing to a request but Host and Content-Length:
    no redirects, no proxy from the environment, no decompression.

    Args:
        base_url: `https://host[:port][/prefix]` or `http://...`. The prefix is not added to targets; it is
            `base_path`, for the caller to put in front of its own.
        ssl_context: for https; by default certifi's trust store with hostname checking (tests pass their CA's).
        max_connections: connections open at once, busy or idle; a request past that waits for one to free up.
        max_idle: idle connections kept for reuse; more are closed as they come back.
        idle_expiry: seconds an idle connection is kept (servers drop them on their own timeout anyway).
        connect_timeout: TCP connect plus TLS handshake.
        read_timeout: longest wait for the next byte of a response (a slow stream is fine, a silent one is not).
        write_timeout: longest wait for the kernel to take the request when the upstream stops reading.
        pool_timeout: longest wait for a free connection when all `max_connections` are busy.
    """

    def __init__(
        self,
        base_url: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
        max_connections: int = 100,
        max_idle: int = 20,
        idle_expiry: float = 30.0,
        connect_timeout: float = 5.0,
        read_timeout: float = 600.0,
        write_timeout: float = 60.0,
        pool_timeout: float = 30.0,
    ) -> None:
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname or url.query or url.fragment or url.username:
            raise ValueError(f"not an http(s) base URL: {base_url!r}")
        default_port = 443 if url.scheme == "https" else 80
        self._host, self._port = url.hostname, url.port or default_port
        authority = f"[{self._host}]" if ":" in self._host else self._host
        if self._port != default_port:
            authority += f":{self._port}"
        self._host_line = b"\r\nHost: " + authority.encode("ascii")
        self.base_path = url.path.rstrip("/").encode("ascii")
        self._ssl: ssl.SSLContext | None = None
        if url.scheme == "https":
            self._ssl = ssl_context or _default_ssl_context()
        self._max_connections, self._max_idle, self._idle_expiry = max_connections, max_idle, idle_expiry
        self._connect_timeout, self._read_timeout = connect_timeout, read_timeout
        self._write_timeout, self._pool_timeout = write_timeout, pool_timeout
        self._idle: deque[Connection] = deque()  # oldest on the left; reuse takes the newest, on the right
        self._busy = 0  # checked out or connecting
        self._connections: set[Connection] = set()
        self._slot_waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False

    async def request(
        self, method: bytes | str, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes = b""
    ) -> UpstreamResponse:
        """Send one request and return once the response's final head has arrived; the body is then streamed.

        `target` (path and query) and `headers` go out exactly as given, byte for byte, in order; the caller must
        leave out Host, Content-Length, Transfer-Encoding and Connection. The request is written in one send.
        Close the response (`aclose()` or `async with`) whatever happens, so its connection is reused or closed.
        """
        if isinstance(method, str):
            method = method.encode("ascii")
        parts = [method, b" ", target, b" HTTP/1.1", self._host_line]
        for name, value in headers:
            parts += (b"\r\n", name, b": ", value)
        with_length = bool(body) or method in _BODY_METHODS
        if with_length:
            parts.append(b"\r\nContent-Length: %d" % len(body))
        parts.append(b"\r\n\r\n")
        head = b"".join(parts)
        # Exactly one CR and one LF per line: another one (in the target, a name or a value) would forge a header.
        lines = 3 + len(headers) + with_length
        if head.count(b"\n") != lines or head.count(b"\r") != lines or b" " in target or not target.startswith(b"/"):
            raise ValueError("the request target or a header contains characters that would break HTTP framing")
        request = head + body if body else head

        while True:
            conn = await self._checkout()
            reused = conn.requests > 0
            if conn.send(request, head_only=method == b"HEAD", with_body=bool(body)):
                break
            # The kernel refused the very first byte: the server never saw this request, so it can go again.
            self._release(conn, reuse=False)
            if not reused:
                raise ConnectError(f"the connection to {self._host}:{self._port} failed before the request was sent")
        try:
            await conn.drain(self._write_timeout)
            await conn.read_head(self._read_timeout)
        except BaseException:  # including cancellation: never leave a half-used connection in the pool
            self._release(conn, reuse=False)
            raise
        return UpstreamResponse(self, conn)

    async def aclose(self) -> None:
        """Close every connection, idle or busy; requests still reading their body fail with RemoteProtocolError."""
        self._closed = True
        connections = list(self._connections)
        for conn in connections:
            if conn in self._idle:
                conn.close()
            else:
                conn.abort()
        self._idle.clear()
        self._connections.clear()
        while self._slot_waiters:
            self._notify_slot()
        if connections:
            await asyncio.wait([asyncio.ensure_future(c.wait_closed()) for c in connections], timeout=5.0)

    async def _checkout(self) -> Connection:
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        while True:
            if self._closed:
                raise RuntimeError("the upstream pool is closed")
            now = loop.time()
            while self._idle:
                conn = self._idle.pop()
                if now - conn.idle_since < self._idle_expiry and conn.still_open():
                    self._busy += 1
                    return conn
                self._drop(conn)  # closed by the server, or expired: the request has not touched it
            if self._busy < self._max_connections:
                break
            if deadline is None:
                deadline = now + self._pool_timeout
            await self._wait_for_slot(deadline)
        self._busy += 1
        try:
            return await self._connect(loop)
        except BaseException:
            self._busy -= 1
            self._notify_slot()
            raise

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> Connection:
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: Connection(loop),
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl else None,  # SNI and the name the certificate must hold
                    happy_eyeballs_delay=0.25,
                )
        except TimeoutError:
            message = f"no connection to {self._host}:{self._port} within {self._connect_timeout:g} s"
            raise ConnectTimeout(message) from None
        except OSError as exc:  # refused, unreachable, DNS (gaierror), TLS (SSLError, certificate verification)
            raise ConnectError(f"could not connect to {self._host}:{self._port}: {exc}") from exc
        self._connections.add(conn)
        return conn

    async def _wait_for_slot(self, deadline: float) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._slot_waiters.append(waiter)
        try:
            async with asyncio.timeout_at(deadline):
                await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                self._notify_slot()  # woken, but leaving anyway: pass the free slot on
            else:
                self._slot_waiters.remove(waiter)
            if isinstance(exc, TimeoutError):
                raise PoolTimeout(f"all {self._max_connections} upstream connections stayed busy") from None
            raise

    def _notify_slot(self) -> None:
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _release(self, conn: Connection, *, reuse: bool) -> None:
        self._busy -= 1
        if reuse and conn.reusable and not self._closed and len(self._idle) < self._max_idle:
            now = conn.idle_since = asyncio.get_running_loop().time()
            self._idle.append(conn)
            while self._idle and now - self._idle[0].idle_since >= self._idle_expiry:
                self._drop(self._idle.popleft())
        else:
            self._connections.discard(conn)
            conn.abort()
        if self._slot_waiters:
            self._notify_slot()

    def _drop(self, conn: Connection) -> None:
        self._connections.discard(conn)
        conn.close()


class UpstreamResponse:
    """A response whose head has arrived: `status`, `headers` (raw, in order, as received), and a body to stream."""

    __slots__ = ("_conn", "_pool", "headers", "status")

    def __init__(self, pool: UpstreamPool, conn: Connection) -> None:
        self._pool: UpstreamPool | None = pool
        self._conn = conn
        self.status = conn.status
        self.headers = conn.headers

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        """The body as it arrives, de-chunked, never decompressed; the connection goes back to the pool at its end."""
        if self._pool is None:
            raise RuntimeError("the response is closed")
        conn, timeout = self._conn, self._pool._read_timeout
        try:
            while chunk := await conn.read_body(timeout):
                yield chunk
        except BaseException:  # a broken upstream, a timeout, a cancelled task or an abandoned iterator
            self._finish(reuse=False)
            raise
        self._finish(reuse=True)

    @property
    def body_read(self) -> bool:
        """The whole body has been handed out by `aiter_raw`: it yields nothing more (and then ends)."""
        return self._conn.body_read

    async def aread(self) -> bytes:
        """The whole body: only for responses known to be small."""
        return b"".join([chunk async for chunk in self.aiter_raw()])

    async def aclose(self) -> None:
        """Return the connection to the pool if the body was read to its end, else close it. Idempotent."""
        self._finish(reuse=self._conn.body_done)

    async def __aenter__(self) -> UpstreamResponse:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def _finish(self, *, reuse: bool) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool._release(self._conn, reuse=reuse)


def _default_ssl_context() -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=certifi.where())  # verifies the chain and the host name
    context.set_alpn_protocols(["http/1.1"])
    return context
