"""A minimal, fast stand-in for Anthropic for load tests: `python -m bench.fast_upstream PORT`.

The faithful fake (support/fake_anthropic.py, Starlette under uvicorn) serves only a couple of thousand requests/s on
these cores, so under load it, not the gateway, would be the bottleneck. This one is a bare asyncio Protocol on
HTTP/1.1 keep-alive that checks nothing and answers from canned bytes:

    POST /v1/messages                   a Message with usage (the fake's headers: request-id, ratelimit, length)
    POST /v1/messages + "stream": true  Anthropic's SSE events, chunked; x-fake-delay-ms (default 0) between
                                        events and x-fake-chunks (default 5) text deltas, as the fake reads them
    GET  /v1/files/file_big_N/content   N bytes, with flow control (the 50 MB download)
    GET  /                              200 (readiness)
"""

from __future__ import annotations

import asyncio
import json
import re
import resource
import signal
import sys
from typing import Any

_HEAD_END = b"\r\n\r\n"
_BIG_FILE = re.compile(rb"/v1/files/file_big_(\d+)/content")
_CHUNK = 64 * 1024
_USAGE = {"input_tokens": 3, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 5}
_MESSAGE = {
    "id": "msg_01BenchBenchBenchBenchBenc",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5",
    "content": [{"type": "text", "text": "Echo: Hello, world"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {
        **_USAGE,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
        "service_tier": "standard",
    },
}
_COMMON = (
    b"request-id: req_01BenchBenchBenchBenchBenc\r\n"
    b"anthropic-ratelimit-requests-limit: 4000\r\n"
    b"anthropic-ratelimit-requests-remaining: 3999\r\n"
    b"anthropic-ratelimit-requests-reset: 2026-01-01T00:00:00Z\r\n"
)


def _response(status: bytes, content_type: bytes, body: bytes) -> bytes:
    head = b"HTTP/1.1 " + status + b"\r\ncontent-type: " + content_type + b"\r\n" + _COMMON
    return head + b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body


MESSAGE_RESPONSE = _response(b"200 OK", b"application/json", json.dumps(_MESSAGE, separators=(",", ":")).encode())
NOT_FOUND = _response(b"404 Not Found", b"application/json", b'{"type":"error","error":{"type":"not_found_error"}}')
READY = _response(b"200 OK", b"text/plain", b"ok")
STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    + _COMMON
    + b"transfer-encoding: chunked\r\n\r\n"
)


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def sse_events(chunks: int) -> list[bytes]:
    """The events of one streamed Message, in Anthropic's order: a delay goes before each but the first."""
    start = dict(_MESSAGE, content=[], stop_reason=None, usage=dict(_USAGE, output_tokens=1))
    block = {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Echo "}}
    final = {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": _USAGE}
    return [
        _sse("message_start", {"type": "message_start", "message": start}),
        _sse("content_block_start", block) + b'event: ping\ndata: {"type": "ping"}\n\n',
        *(_sse("content_block_delta", delta) for _ in range(chunks)),
        _sse("content_block_stop", {"type": "content_block_stop", "index": 0})
        + _sse("message_delta", final)
        + _sse("message_stop", {"type": "message_stop"}),
    ]


def _chunked(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


class _Connection(asyncio.Protocol):
    """One keep-alive client connection: requests answered in order, one at a time."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._busy: asyncio.Task[None] | None = None  # a stream or a download being written
        self._writable = asyncio.Event()
        self._writable.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self._busy:
            self._busy.cancel()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self._busy:
            self._serve_buffered()

    def _serve_buffered(self) -> None:
        while True:
            end = self._buffer.find(_HEAD_END)
            if end < 0:
                return
            head = bytes(self._buffer[:end]).decode("latin-1").lower()
            length = int(_header(head, "content-length") or 0)
            if len(self._buffer) < end + 4 + length:
                return
            body = bytes(self._buffer[end + 4 : end + 4 + length])
            del self._buffer[: end + 4 + length]
            method, _, rest = head.partition(" ")
            # Also Bedrock's Anthropic endpoint for the Bedrock-path row (BEDROCK_BASE_URL=<this>/anthropic); it does
            # not check signatures, so what the row shows is the gateway's signing and rewrite cost.
            target = rest.partition(" ")[0].encode().removeprefix(b"/anthropic")
            if method == "post" and target == b"/v1/messages":
                if b'"stream":true' in body.replace(b" ", b""):
                    delay = float(_header(head, "x-fake-delay-ms") or 0) / 1000
                    self._start(self._stream(delay, int(_header(head, "x-fake-chunks") or 5)))
                    return
                self._transport.write(MESSAGE_RESPONSE)
            elif method == "get" and (big := _BIG_FILE.fullmatch(target)):
                self._start(self._download(int(big.group(1))))
                return
            elif method == "get" and target == b"/":
                self._transport.write(READY)
            else:
                self._transport.write(NOT_FOUND)

    def _start(self, work: Any) -> None:
        self._busy = asyncio.get_running_loop().create_task(work)
        self._busy.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._busy = None
        if not task.cancelled() and not self._transport.is_closing():
            self._serve_buffered()

    async def _stream(self, delay: float, chunks: int) -> None:
        self._transport.write(STREAM_HEAD)
        for index, event in enumerate(sse_events(chunks)):
            if index and delay:
                await asyncio.sleep(delay)
            self._transport.write(_chunked(event))
        self._transport.write(b"0\r\n\r\n")

    async def _download(self, size: int) -> None:
        head = b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n" + _COMMON
        self._transport.write(head + b"content-length: %d\r\n\r\n" % size)
        block = bytes(_CHUNK)
        for offset in range(0, size, _CHUNK):
            await self._writable.wait()
            self._transport.write(block[: min(_CHUNK, size - offset)])


def _header(head: str, name: str) -> str | None:
    """A header's value from a lower-cased request head (good enough for the requests a benchmark sends)."""
    start = head.find("\r\n" + name + ":")
    if start < 0:
        return None
    start += len(name) + 3
    end = head.find("\r\n", start)
    return head[start : end if end >= 0 else None].strip()


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    server = await loop.create_server(_Connection, "127.0.0.1", port, backlog=4096)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(serve(int(sys.argv[1])))
