"""The streaming door's protocol (server_protocol.py): what the app writes during one turn of the event loop leaves
in one write, in order; nothing is held past the turn or lost at close. (Every end-to-end test serves the gateway
with it too: tests/conftest.py.)"""

from __future__ import annotations

import asyncio
import json
import socket

import pytest

from anthropic_gateway.server_protocol import OneWritePerTurn, _TurnWriter


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
