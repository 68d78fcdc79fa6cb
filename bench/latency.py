"""Added latency at concurrency 1: the same requests to the upstream directly and through the gateway, in
alternating batches so machine noise hits both sides alike."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

MESSAGE = {"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": [{"role": "user", "content": "Hello, world"}]}
Target = tuple[str, dict[str, str]]  # url, headers
Measure = Callable[[httpx.Client, str, dict[str, str], int], list[float]]


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def messages(http: httpx.Client, url: str, headers: dict[str, str], rounds: int) -> list[float]:
    """Milliseconds per non-streamed POST /v1/messages, response read to the end."""
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        response = http.post(url, json=MESSAGE, headers=headers)
        samples.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, response.text
    return samples


def first_byte(http: httpx.Client, url: str, headers: dict[str, str], rounds: int) -> list[float]:
    """Milliseconds to the first body bytes of a streamed POST /v1/messages (the rest is read, untimed)."""
    samples = []
    body = dict(MESSAGE, stream=True)
    for _ in range(rounds):
        started = time.perf_counter()
        with http.stream("POST", url, json=body, headers=headers) as response:
            chunks = response.iter_raw()
            next(chunks)
            samples.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200
            for _ in chunks:
                pass
    return samples


def interleaved(
    measure: Measure, http: httpx.Client, direct: Target, via: Target, rounds: int, batches: int = 10
) -> tuple[list[float], list[float]]:
    """(direct samples, gateway samples), taken in `batches` alternating batches."""
    direct_samples: list[float] = []
    gateway_samples: list[float] = []
    for _ in range(batches):
        direct_samples += measure(http, *direct, rounds // batches)
        gateway_samples += measure(http, *via, rounds // batches)
    return direct_samples, gateway_samples


def download_bytes(http: httpx.Client, url: str, headers: dict[str, str]) -> int:
    received = 0
    with http.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200, response.status_code
        for chunk in response.iter_raw():
            received += len(chunk)
    return received
