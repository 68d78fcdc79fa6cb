"""Run an ASGI app with uvicorn in a background thread on a free loopback port (tests and benchmarks)."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import uvicorn

from support.waiting import eventually


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def answers(url: str, status: int | None = 200) -> bool:
    """Whether GET `url` gets a response (with `status`, unless None) within a second."""
    try:
        response = httpx.get(url, timeout=1)
    except httpx.TransportError:
        return False
    return status is None or response.status_code == status


class ThreadedUvicorn:
    """`with ThreadedUvicorn(app) as server:` serves `app` at `server.url` until the block ends.

    app_drain: the app's own after-response work (the gateway's `GatewayApp.drain`), which `drain()` awaits once
    the requests in flight have finished.
    """

    def __init__(
        self, app: Any, port: int = 0, *, app_drain: Callable[[], Awaitable[None]] | None = None, **config: Any
    ) -> None:
        self._config: dict[str, Any] = (
            dict(log_level="warning", access_log=False, server_header=False, date_header=False) | config
        )
        self.app, self._port, self._app_drain = app, port, app_drain
        self._loop: asyncio.AbstractEventLoop | None = None
        self.url = ""

    def __enter__(self) -> ThreadedUvicorn:
        # proto=IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on accepted sockets whose proto says TCP, and
        # without it Nagle + delayed ACK add ~40 ms to every response.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self._port))
        self.server = uvicorn.Server(uvicorn.Config(self.app, **self._config))
        self._thread = threading.Thread(target=self._run, args=(sock,), daemon=True)
        self._thread.start()

        def started() -> bool:
            if not self._thread.is_alive():
                raise RuntimeError("server failed to start")
            return self.server.started

        eventually(started, timeout=10, interval=0.005, what="uvicorn started")
        self.port: int = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    def _run(self, sock: socket.socket) -> None:
        async def serve() -> None:
            self._loop = asyncio.get_running_loop()
            await self.server.serve(sockets=[sock])

        asyncio.run(serve(), loop_factory=self.server.config.get_loop_factory())

    def drain(self, timeout: float = 15.0) -> None:
        """Return once the requests in flight now have finished and the app's after-response work is done.

        A response the client has read to the end may still be finishing on the server (closing its upstream,
        scheduling accounting): waiting for the request's task first is what makes the app's drain complete.
        """
        assert self._loop is not None, "not started"
        future = asyncio.run_coroutine_threadsafe(self._drain(), self._loop)
        try:
            future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise AssertionError(f"{self.url}: still busy after {timeout} s") from None

    async def _drain(self) -> None:
        in_flight = list(self.server.server_state.tasks)
        await asyncio.gather(*in_flight, return_exceptions=True)
        if self._app_drain is not None:
            await self._app_drain()

    def __exit__(self, *exc_info: object) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=10)


class CuttingUpstream:
    """An upstream that answers every request with `reply` (a head and the start of a body) and then closes the
    connection: a body cut off partway, as a broken upstream or network does it."""

    def __init__(self, reply: bytes) -> None:
        self._reply = reply
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> CuttingUpstream:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        # shutdown() wakes the thread blocked in accept() (close() alone does not, on Linux: the join would wait
        # out its timeout); the thread then returns at once.
        self._listener.shutdown(socket.SHUT_RDWR)
        self._thread.join(10)
        self._listener.close()
        assert not self._thread.is_alive(), "CuttingUpstream's thread did not stop"

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return  # shut down: the test is over
            with connection:
                connection.recv(65536)
                connection.sendall(self._reply)
