"""A TCP proxy for fault injection: put it in front of moto and switch what AWS looks like at run time.

    with FaultProxy(target_port) as proxy:      # proxy.url: point AWS_ENDPOINT_URL at it
        proxy.mode = "stall"                    # requests reach nothing: clients wait out their read timeout
        proxy.mode = "drop"                     # connections are reset (RST): clients see a connection error
        proxy.mode = "lose_answers"             # requests reach AWS and apply, their answers never come back
        proxy.mode = "pass"                     # AWS is back

The mode applies to every request from the moment it is set, on new and already open (pooled) connections:
bytes a client sends while the proxy stalls are swallowed, and a dropped connection is aborted with RST.
`forwarded` counts the requests' first bytes that went through (a rough count of calls that reached moto).
`faulted` counts the requests a fault met (stalled, dropped, or their answers lost) by AWS operation, read from
their X-Amz-Target header (`proxy.faulted["TransactWriteItems"]`): a test waits on it to know the call it means
to fail was made while the fault was on.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import struct
import threading
from collections import Counter
from typing import Literal

Mode = Literal["pass", "stall", "drop", "lose_answers"]
_OPERATION = re.compile(rb"x-amz-target:[ \t]*[\w.-]*\.(\w+)", re.IGNORECASE)


class FaultProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.mode: Mode = "pass"
        self.forwarded = 0
        self.faulted: Counter[str] = Counter()
        self._tasks: set[asyncio.Future[None]] = set()
        self._target = (target_host, target_port)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self.url = ""

    def __enter__(self) -> FaultProxy:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.bind(("127.0.0.1", 0))
        self.port: int = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(sock),), daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fault proxy did not start")
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    async def _serve(self, sock: socket.socket) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        server = await asyncio.start_server(self._connection, sock=sock)
        self._ready.set()
        async with server:
            await self._stop.wait()
            server.close()

    def _mode(self) -> Mode:
        return self.mode

    async def _connection(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if self.mode == "drop":
            # What the client sends first, to count it; then RST, as if the host went away meanwhile.
            with contextlib.suppress(TimeoutError, ConnectionError, OSError):
                self._fault(await asyncio.wait_for(client_reader.read(65536), 1))
            _reset(client_writer)
            return
        upstream_reader: asyncio.StreamReader | None = None
        upstream_writer: asyncio.StreamWriter | None = None
        try:
            while data := await client_reader.read(65536):
                mode = self._mode()  # set by the test's thread at any time: read it afresh for every chunk
                if mode != "pass":
                    self._fault(data)
                if mode == "drop":
                    break
                if mode == "stall":
                    continue  # swallowed: the client waits for an answer that never comes
                if upstream_writer is None:
                    upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
                    answers = asyncio.ensure_future(self._answers(upstream_reader, client_writer))
                    self._tasks.add(answers)
                    answers.add_done_callback(self._tasks.discard)
                self.forwarded += 1
                upstream_writer.write(data)
                await upstream_writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            if upstream_writer is not None:
                upstream_writer.close()
            _reset(client_writer)

    def _fault(self, data: bytes) -> None:
        if found := _OPERATION.search(data):
            self.faulted[found.group(1).decode()] += 1

    async def _answers(self, upstream: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
        try:
            while data := await upstream.read(65536):
                if self.mode == "drop":
                    _reset(client)
                    return
                if self.mode in ("stall", "lose_answers"):
                    continue
                client.write(data)
                await client.drain()
        except (ConnectionError, OSError):
            pass
        _reset(client)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0), as a host that went away does, not an orderly FIN."""
    sock = writer.get_extra_info("socket")
    try:
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
    except OSError:
        pass
