"""`make bench`: the gateway against the fake upstream, side by side with talking to the upstream directly.

Each party runs in its own process (moto as AWS, the fake Anthropic upstream, the gateway under uvicorn, and this
client), so the numbers are not muddled by one GIL. Prints a markdown table; README.md carries the last run.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import httpx

from support.servers import answers, free_port
from support.waiting import eventually

ROOT = Path(__file__).resolve().parent.parent
MASTER_KEY = "sk-master-bench-0123456789"
UPSTREAM_KEY = "sk-ant-upstream-test-key"
MESSAGE = {"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": [{"role": "user", "content": "Hello, world"}]}
DOWNLOAD_BYTES = 50 * 1024 * 1024


def _wait_until_up(url: str, process: subprocess.Popen, seconds: float = 30) -> None:
    def up() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: process exited with {process.returncode}")
        return answers(url, status=None)

    eventually(up, timeout=seconds, interval=0.05, what=f"{url} up")


def _start(stack: ExitStack, args: list[str], env: dict, ready_url: str) -> subprocess.Popen:
    process = subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stack.callback(process.wait, 10)
    stack.callback(process.terminate)
    _wait_until_up(ready_url, process)
    return process


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def _percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def _latencies(http: httpx.Client, url: str, headers: dict, rounds: int) -> list[float]:
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        response = http.post(url, json=MESSAGE, headers=headers)
        samples.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, response.text
    return samples


def _first_byte(http: httpx.Client, url: str, headers: dict, rounds: int) -> list[float]:
    samples = []
    body = dict(MESSAGE, stream=True)
    for _ in range(rounds):
        started = time.perf_counter()
        with http.stream("POST", url, json=body, headers=headers) as response:
            chunks = response.iter_raw()
            next(chunks)
            samples.append((time.perf_counter() - started) * 1000)
            for _ in chunks:
                pass
    return samples


def _interleaved(measure, http, direct: tuple[str, dict], via: tuple[str, dict], rounds: int, batches: int = 10):
    """Alternate direct and gateway batches so machine noise hits both sides alike."""
    direct_samples, gateway_samples = [], []
    for _ in range(batches):
        direct_samples += measure(http, *direct, rounds // batches)
        gateway_samples += measure(http, *via, rounds // batches)
    return direct_samples, gateway_samples


def main() -> int:
    python = sys.executable
    moto_port, upstream_port, gateway_port = free_port(), free_port(), free_port()
    env = dict(
        os.environ,
        PYTHONPATH=f"{ROOT / 'layers' / 'gateway'}:{ROOT}",
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{moto_port}",
        ANTHROPIC_API_BASE=f"http://127.0.0.1:{upstream_port}",
        POWERTOOLS_METRICS_NAMESPACE="AnthropicGatewayBench",
    )
    with ExitStack() as stack:
        _start(stack, [python, "-m", "moto.server", "-p", str(moto_port)], env, f"http://127.0.0.1:{moto_port}")
        _start(stack, [python, "-m", "bench.upstream", str(upstream_port)], env, f"http://127.0.0.1:{upstream_port}")
        subprocess.run(
            [
                python,
                "-c",
                f"from anthropic_gateway import local; local.create_resources({UPSTREAM_KEY!r}, {MASTER_KEY!r})",
            ],
            env=env,
            cwd=ROOT,
            check=True,
        )
        gateway = _start(
            stack,
            [
                python,
                "-m",
                "uvicorn",
                "anthropic_gateway.app:app",
                "--port",
                str(gateway_port),
                "--log-level",
                "warning",
                "--no-server-header",
                "--no-access-log",
            ],
            env,
            f"http://127.0.0.1:{gateway_port}/health",
        )
        direct_url = f"http://127.0.0.1:{upstream_port}/v1/messages"
        gateway_url = f"http://127.0.0.1:{gateway_port}/anthropic/v1/messages"
        with httpx.Client(timeout=60) as http:
            created = http.post(
                f"http://127.0.0.1:{gateway_port}/key/generate",
                json={},
                headers={"Authorization": f"Bearer {MASTER_KEY}"},
            )
            virtual_key = created.json()["key"]
            version = {"anthropic-version": "2023-06-01"}
            direct = (direct_url, {"x-api-key": UPSTREAM_KEY, **version})
            via = (gateway_url, {"x-api-key": virtual_key, **version})
            _latencies(http, *direct, 50)  # warm up connections and caches on both paths
            _latencies(http, *via, 50)
            direct_ms, gateway_ms = _interleaved(_latencies, http, direct, via, rounds=1000)
            direct_fb, gateway_fb = _interleaved(_first_byte, http, direct, via, rounds=300)

            rss_before = _rss_kib(gateway.pid)
            download = f"http://127.0.0.1:{gateway_port}/anthropic/v1/files/file_big_{DOWNLOAD_BYTES}/content"
            received = 0
            with http.stream(
                "GET", download, headers={"x-api-key": virtual_key, "anthropic-beta": "files-api-2025-04-14"}
            ) as response:
                for chunk in response.iter_raw():
                    received += len(chunk)
            assert received == DOWNLOAD_BYTES, received
            rss_after = _rss_kib(gateway.pid)

    p50 = statistics.median
    rows = [
        ("messages, p50 (ms)", p50(direct_ms), p50(gateway_ms)),
        ("messages, p99 (ms)", _percentile(direct_ms, 0.99), _percentile(gateway_ms, 0.99)),
        ("stream first byte, p50 (ms)", p50(direct_fb), p50(gateway_fb)),
        ("stream first byte, p99 (ms)", _percentile(direct_fb, 0.99), _percentile(gateway_fb, 0.99)),
    ]
    print("| measure | direct | through gateway | added |")
    print("|---|---:|---:|---:|")
    for name, direct_value, gateway_value in rows:
        print(f"| {name} | {direct_value:.2f} | {gateway_value:.2f} | {gateway_value - direct_value:+.2f} |")
    growth = (rss_after - rss_before) / 1024
    print(
        f"| gateway RSS around a 50 MB streamed download (MB) | | {rss_before / 1024:.1f} -> {rss_after / 1024:.1f} "
        f"| {growth:+.1f} |"
    )
    print(
        json.dumps(
            {
                "added_p50_ms": round(p50(gateway_ms) - p50(direct_ms), 3),
                "added_first_byte_ms": round(p50(gateway_fb) - p50(direct_fb), 3),
                "rss_growth_mb": round(growth, 2),
            }
        )
    )
    cold_start = ROOT / "bench" / "cold_start.py"
    if cold_start.exists():
        subprocess.run([python, str(cold_start)], cwd=ROOT, check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
