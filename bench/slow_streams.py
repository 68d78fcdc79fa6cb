"""Many slow streams held open at once by one gateway process: its RSS before, at peak and after.

The client is raw asyncio sockets (an httpx client per thousand streams would cost more than the gateway does):
each connection sends one streamed Messages request and reads the chunked SSE body to its end.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections import Counter

from bench import processes
from bench.latency import MESSAGE

_END = b"\r\n0\r\n\r\n"  # the last chunk of a chunked body
COMPLETED = "completed"


@dataclasses.dataclass(frozen=True)
class SlowStreamsResult:
    streams: int
    completed: int  # 200, whole body read, message_stop seen
    seconds: float
    rss_before_mb: float
    rss_peak_mb: float
    rss_after_mb: float
    fds_peak: int
    failures: dict[str, int]  # how the streams that did not complete ended, and how many of each

    @property
    def rss_growth_mb(self) -> float:
        return self.rss_peak_mb - self.rss_before_mb


def request_bytes(port: int, path: str, headers: dict[str, str]) -> bytes:
    body = json.dumps(dict(MESSAGE, stream=True)).encode()
    lines = [f"POST {path} HTTP/1.1", f"host: 127.0.0.1:{port}", "content-type: application/json"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _one_stream(port: int, request: bytes, timeout: float) -> str:
    """How the stream ended: COMPLETED, or what went wrong (for the report)."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                if not head.startswith(b"HTTP/1.1 200"):
                    return "status " + head[9:12].decode("latin-1")
                seen, tail = False, b""
                while not tail.endswith(_END):
                    data = await reader.read(65536)
                    if not data:
                        return "closed before the end"
                    seen = seen or b"message_stop" in tail[-16:] + data
                    tail = (tail + data)[-64:]
                return COMPLETED if seen else "no message_stop"
            finally:
                writer.close()
    except TimeoutError:
        return f"not done in {timeout:g} s"
    except (OSError, asyncio.IncompleteReadError) as exc:
        return type(exc).__name__


async def _run(
    port: int, path: str, headers: dict[str, str], streams: int, stream_s: float, pid: int
) -> tuple[list[str], float, int, int]:
    request = request_bytes(port, path, headers)
    peak_rss, peak_fds = processes.rss_kib(pid), processes.open_fds(pid)
    finished = asyncio.Event()

    async def watch() -> None:
        nonlocal peak_rss, peak_fds
        while not finished.is_set():
            peak_rss = max(peak_rss, processes.rss_kib(pid))
            peak_fds = max(peak_fds, processes.open_fds(pid))
            await asyncio.sleep(0.2)

    watcher = asyncio.create_task(watch())
    loop = asyncio.get_running_loop()
    started = loop.time()
    outcomes = await asyncio.gather(*(_one_stream(port, request, stream_s * 3 + 30) for _ in range(streams)))
    seconds = loop.time() - started
    finished.set()
    await watcher
    return outcomes, seconds, peak_rss, peak_fds


def run(
    port: int, path: str, headers: dict[str, str], pid: int, *, streams: int, events: int, gap_ms: float
) -> SlowStreamsResult:
    """`streams` concurrent streamed requests whose upstream sends an event every `gap_ms` (`events` text deltas);
    through the gateway `pid` listening on `port`."""
    headers = {**headers, "x-fake-delay-ms": f"{gap_ms:g}", "x-fake-chunks": str(events)}
    before = processes.rss_kib(pid)
    outcomes, seconds, peak, fds_peak = asyncio.run(
        _run(port, path, headers, streams, (events + 2) * gap_ms / 1000, pid)
    )
    time.sleep(2)  # the gateway's after-response work for the last streams
    return SlowStreamsResult(
        streams=streams,
        completed=outcomes.count(COMPLETED),
        seconds=seconds,
        rss_before_mb=before / 1024,
        rss_peak_mb=peak / 1024,
        rss_after_mb=processes.rss_kib(pid) / 1024,
        fds_peak=fds_peak,
        failures=dict(Counter(outcome for outcome in outcomes if outcome != COMPLETED)),
    )
