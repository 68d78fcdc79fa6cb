"""What `make bench` measures and for how long: every knob is an environment variable, read here only.

BENCH_QUICK=1 shortens everything (about a third of the time) for iterating; the README's numbers come from a
full run.
"""

from __future__ import annotations

import dataclasses
import os


def _number(name: str, default: float) -> float:
    raw = os.environ.get(name)
    return float(raw) if raw else default


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    quick: bool
    latency_rounds: int  # non-streamed requests per side at concurrency 1
    first_byte_rounds: int  # streamed requests per side
    connections: int  # concurrent connections for the throughput run and the soak
    duration_s: float  # throughput run per side
    wrk_threads: int
    slow_streams: int
    slow_stream_events: int  # text deltas per stream, one every slow_stream_gap_ms
    slow_stream_gap_ms: float
    soak_requests: int
    soak_sample_s: float  # RSS and fd sampling interval during the soak
    cold_start_runs: int
    memory_size_runs: int  # fresh processes per memory size (bench/memory_sizes.py)
    memory_size_requests: int  # streams per size for CPU per request

    @classmethod
    def from_env(cls) -> BenchConfig:
        quick = os.environ.get("BENCH_QUICK", "") not in ("", "0")
        return cls(
            quick=quick,
            latency_rounds=int(_number("BENCH_LATENCY_ROUNDS", 300 if quick else 1000)),
            first_byte_rounds=int(_number("BENCH_FIRST_BYTE_ROUNDS", 100 if quick else 300)),
            connections=int(_number("BENCH_CONNECTIONS", 32)),
            duration_s=_number("BENCH_DURATION_S", 5 if quick else 15),
            wrk_threads=int(_number("BENCH_WRK_THREADS", 1)),
            slow_streams=int(_number("BENCH_STREAMS", 1000)),
            slow_stream_events=int(_number("BENCH_STREAM_EVENTS", 8)),
            slow_stream_gap_ms=_number("BENCH_STREAM_GAP_MS", 1000),
            soak_requests=int(_number("BENCH_SOAK_REQUESTS", 10_000 if quick else 100_000)),
            soak_sample_s=_number("BENCH_SOAK_SAMPLE_S", 1 if quick else 5),
            cold_start_runs=int(_number("BENCH_COLD_START_RUNS", 3 if quick else 10)),
            memory_size_runs=int(_number("BENCH_MEMORY_SIZE_RUNS", 2 if quick else 5)),
            memory_size_requests=int(_number("BENCH_MEMORY_SIZE_REQUESTS", 50 if quick else 200)),
        )
