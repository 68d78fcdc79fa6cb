"""The uvicorn doors' protocol (server_protocol.py): what an unauthenticated client can cost is bounded (head size
and header count, time to send a head, idle keep-alive time, open connections), each refusal an Anthropic-shaped
error, checked with raw sockets; and what the app writes during one turn of the event loop leaves in one write, in
order, nothing held past the turn or lost at close. (Every end-to-end test serves the gateway with it too:
tests/conftest.py.)"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import replace

import pytest

from anthropic_gateway.server_protocol import OneWritePerTurn, _TurnWriter
from anthropic_gateway.settings import get_settings
from support.gateways import start_gateway
from support.servers import ThreadedUvicorn
from support.waiting import eventually

HEALTH = b"GET /health HTTP/1.1\r\nhost: gateway\r\n\r\n"


@pytest.fixture
def door(aws, monkeypatch) -> Iterator[Callable[..., ThreadedUvicorn]]:
    """`door(**limits)`: a gateway of the test's own served through the doors' protocol with these settings, for
    raw sockets."""
    from anthropic_gateway import server_protocol

    with ExitStack() as stack:

        def start(**limits: float) -> ThreadedUvicorn:
            bounded = replace(get_settings(), **limits)
            monkeypatch.setattr(server_protocol, "get_settings", lambda: bounded)
            return stack.enter_context(start_gateway(bounded))

        yield start


def connect(server: ThreadedUvicorn) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=15)


def until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def one_answer(sock: socket.socket) -> tuple[int, bytes]:
    """The status and body of the next answer on a keep-alive connection (content-length framed)."""
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        assert chunk, "closed before an answer"
        buffer += chunk
    head, _, body = buffer.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    while len(body) < length:
        body += sock.recv(65536)
    return int(head.split(b" ")[1]), body


def refusal(answer: bytes) -> tuple[int, str, dict[str, str]]:
    """(status, Anthropic error type, headers) of a refusal that ended the connection."""
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    assert headers["connection"] == "close" and int(headers["content-length"]) == len(body)
    error = json.loads(body)
    assert error["type"] == "error" and error["error"]["message"]
    return int(lines[0].split(" ")[1]), error["error"]["type"], headers


def test_a_head_over_the_size_limit_is_refused_431_before_it_ends(door) -> None:
    server = door(max_request_head_bytes=8192)
    with connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: gateway\r\nx-filler: " + b"a" * 7000 + b"\r\n\r\n")
        assert one_answer(sock)[0] == 200  # under the limit
    with connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: gateway\r\n")
        for _ in range(9):  # 9 KB of headers in 1 KB sends, and no end: refused without waiting for one
            sock.sendall(b"x-filler: " + b"a" * 1012 + b"\r\n")
        assert refusal(until_closed(sock))[:2] == (431, "request_too_large")


def test_more_headers_than_the_limit_are_refused_431(door) -> None:
    server = door(max_request_headers=20)
    headers = b"".join(b"x-h%d: %d\r\n" % (n, n) for n in range(19))
    with connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: gateway\r\n" + headers + b"\r\n")
        assert one_answer(sock)[0] == 200  # host and 19 more: 20
    with connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: gateway\r\n" + headers + b"x-one-more: 1\r\n\r\n")
        assert refusal(until_closed(sock))[:2] == (431, "request_too_large")


@pytest.mark.parametrize("sent", [b"", b"GET /health HTTP/1.1\r\nhost: gate", b"\r\n"])
def test_a_head_not_sent_in_time_is_refused_408(door, sent) -> None:
    server = door(request_head_timeout=0.3)
    with connect(server) as sock:
        sock.sendall(sent)
        assert refusal(until_closed(sock))[:2] == (408, "timeout_error")


def test_the_next_heads_time_starts_at_its_first_byte_and_idle_keep_alive_ends(door) -> None:
    # Kept alive long enough that the second head's first byte surely comes first, however busy the machine.
    server = door(request_head_timeout=0.3, keep_alive_timeout=60)
    with connect(server) as sock:
        sock.sendall(HEALTH)
        assert one_answer(sock)[0] == 200
        sock.sendall(b"GET /health HTTP/1.1\r\n")  # the second request's head, never finished
        assert refusal(until_closed(sock))[:2] == (408, "timeout_error")
    server = door(request_head_timeout=0.3, keep_alive_timeout=0.3)
    with connect(server) as sock:
        sock.sendall(HEALTH)
        assert one_answer(sock)[0] == 200
        assert until_closed(sock) == b""  # idle past the keep-alive time: closed, with nothing sent


def test_connections_past_the_limit_are_refused_503(door) -> None:
    server = door(max_connections=3, request_head_timeout=60)
    held = [connect(server) for _ in range(3)]
    eventually(lambda: len(server.server.server_state.connections) == 3, what="3 connections open")
    with connect(server) as sock:
        status, error_type, headers = refusal(until_closed(sock))
        assert (status, error_type, headers["retry-after"]) == (503, "overloaded_error", "1")
    held.pop().close()
    eventually(lambda: len(server.server.server_state.connections) == 2, what="one connection closed")
    with connect(server) as sock:
        sock.sendall(HEALTH)
        assert one_answer(sock)[0] == 200
    for sock in held:
        sock.close()


class RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def get_write_buffer_size(self) -> int:
        return 0


def test_writes_of_one_turn_leave_as_one_in_order() -> None:
    async def scenario() -> list[bytes]:
        transport = RecordingTransport()
        writer = _TurnWriter(transport, asyncio.get_running_loop())  # type: ignore[arg-type]
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n")
        writer.write(b"hello")
        assert transport.writes == []  # held until the turn ends
        await asyncio.sleep(0)
        writer.write(b"event: ping\n\n")  # a later turn: a write of its own
        await asyncio.sleep(0)
        assert writer.get_write_buffer_size() == 0  # everything else is the transport's
        return transport.writes

    assert asyncio.run(scenario()) == [b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello", b"event: ping\n\n"]


def test_close_sends_what_is_held_first() -> None:
    async def scenario() -> RecordingTransport:
        transport = RecordingTransport()
        writer = _TurnWriter(transport, asyncio.get_running_loop())  # type: ignore[arg-type]
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n")
        writer.write(b"bye")
        writer.close()
        await asyncio.sleep(0)  # the scheduled flush finds nothing left
        return transport

    transport = asyncio.run(scenario())
    assert transport.writes == [b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nbye"] and transport.closed


@pytest.mark.parametrize("path", ["/health", "/anthropic/v1/models"])
def test_the_gateway_answers_through_it_whole_and_in_order(gateway, path) -> None:
    """Two pipelined keep-alive requests over a raw socket: two complete answers, one after the other."""
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        request = f"GET {path} HTTP/1.1\r\nhost: x\r\n\r\n".encode()
        sock.sendall(request + request)
        buffer = b""
        answers = []
        while len(answers) < 2:
            head_end = buffer.find(b"\r\n\r\n")
            if head_end >= 0:
                head = buffer[:head_end].decode("latin-1").lower()
                length = int(head.split("content-length:")[1].split("\r\n")[0])
                if len(buffer) >= head_end + 4 + length:
                    answers.append((head, buffer[head_end + 4 : head_end + 4 + length]))
                    buffer = buffer[head_end + 4 + length :]
                    continue
            chunk = sock.recv(65536)
            assert chunk, f"connection closed after {len(answers)} answers"
            buffer += chunk
    assert buffer == b""
    (first_head, first_body), (second_head, second_body) = answers
    assert first_head.split("\r\n")[0] == second_head.split("\r\n")[0]
    assert first_body == second_body and json.loads(first_body)


def test_uvicorn_loads_it_by_name() -> None:
    import uvicorn

    config = uvicorn.Config("anthropic_gateway.app:app", http="anthropic_gateway.server_protocol:OneWritePerTurn")
    config.load()
    assert config.http_protocol_class is OneWritePerTurn
