"""A raw-socket HTTP/1.1 upstream that breaks the rules on purpose, for the gateway's tests (issue 18).

    with MaliciousUpstream(answer) as upstream:      # upstream.url: the gateway's ANTHROPIC_API_BASE
        ...
        upstream.received                            # every request it read, in order
        upstream.until(lambda: upstream.answered == 2)   # all bytes of two replies written (then included)

For each request head it reads, `answer(request)` (the request without its body) says what goes back, byte for
byte, framing right or wrong (`Reply.data`), and how:
  - read_body=False: answer after the head alone, as a server refusing an upload early does, and leave the body
    on the connection, where the next request head is then read from (request smuggling, if the client reuses it);
  - then: bytes written right after the answer, in a write of their own (a late second response);
  - on_next: bytes held back until the next request arrives on the same connection, and written just before its
    answer (a body announced by a 204 or 304, sent once the client has moved on);
  - close=True: the connection is closed once the reply is written (an answer cut off partway).
Requests carry a Content-Length body (the gateway always sends one); anything else is read as a head.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO


@dataclass(frozen=True)
class Received:
    connection: int  # 1 for the first connection accepted, 2 for the next...
    head: bytes  # request line and headers, up to and including the blank line
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        for line in self.head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == name.lower():
                return value.strip()
        return None

    @property
    def content_length(self) -> int:
        value = self.header(b"content-length")
        return int(value) if value and value.isdigit() else 0


@dataclass(frozen=True)
class Reply:
    data: bytes
    read_body: bool = True
    then: bytes = b""
    on_next: bytes = b""
    close: bool = False


def response(status: int, body: bytes = b"", *headers: bytes, content_type: bytes = b"application/json") -> bytes:
    """A well-formed response with a Content-Length (for the parts of a test that keep the rules)."""
    lines = [b"HTTP/1.1 %d X" % status, b"content-type: " + content_type, b"content-length: %d" % len(body)]
    return b"\r\n".join([*lines, *headers, b"", b""]) + body


class MaliciousUpstream:
    def __init__(self, answer: Callable[[Received], Reply]) -> None:
        self._answer = answer
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self.received: list[Received] = []
        self.answered = 0  # replies written whole, `then` included
        self.connections = 0
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> MaliciousUpstream:
        self._start(self._accept)
        return self

    def __exit__(self, *exc_info: object) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() in progress (close alone does not)
        self._listener.close()
        with self._lock:
            for connection in self._open:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
        for thread in list(self._threads):
            thread.join(5)

    def until(self, predicate: Callable[[], bool], timeout: float = 15.0) -> None:
        """Wait for what the upstream has done (its counters) to make `predicate` true."""
        with self._changed:
            if not self._changed.wait_for(predicate, timeout):
                raise AssertionError(f"the upstream did not get there within {timeout} s")

    def _start(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return  # closed: the test is over
            # Each write leaves at once (no Nagle): bytes a test says were sent are on the client's side.
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self.connections += 1
                self._open.add(connection)
                number = self.connections
            self._start(self._serve, connection, number)

    def _serve(self, connection: socket.socket, number: int) -> None:
        held = b""
        try:
            with connection, connection.makefile("rb") as reader:
                while (head := _read_head(reader)) is not None:
                    request = Received(number, head, b"")
                    reply = self._answer(request)
                    if reply.read_body:
                        request = Received(number, head, reader.read(request.content_length))
                    with self._lock:
                        self.received.append(request)
                    if held:
                        connection.sendall(held)
                    connection.sendall(reply.data)
                    if reply.then:
                        connection.sendall(reply.then)
                    held = reply.on_next
                    with self._changed:
                        self.answered += 1
                        self._changed.notify_all()
                    if reply.close:
                        return
        except OSError:
            pass  # the gateway closed or reset the connection
        finally:
            with self._lock:
                self._open.discard(connection)


def _read_head(reader: BinaryIO) -> bytes | None:
    lines = []
    while (line := reader.readline(65536)) not in (b"\r\n", b"\n"):
        if not line:
            return None
        lines.append(line)
    return b"".join([*lines, b"\r\n"])
