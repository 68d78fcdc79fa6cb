"""`MemorySize` from a measurement: the streaming door at the CPU share Lambda gives each memory size.

`python -m bench.memory_sizes [--runs N]` (also a step of `make bench`). Needs root (or a delegated cgroup).

Lambda gives a function CPU in proportion to its memory, one full vCPU at 1,769 MB. Here each size's share is a CPU
quota: a cgroup with `cpu.max` (cgroup v2) or `cpu.cfs_quota_us` (v1) of share x 100 ms per 100 ms period, so the
process runs at most that fraction of one CPU, in bursts, as CFS throttling does on Lambda. 100 ms is the kernel's
default period; Lambda does not publish its own, and a shorter one would spread the same CPU time more evenly.
The built run.sh (the `sam build` artifact, with the layer's bytecode and only what the Lambda runtime ships, as
bench/cold_start.py runs it) runs inside the cgroup; moto (AWS) and the upstream run outside it, as on Lambda AWS
and Anthropic are not on the function's CPU. Each size, in fresh processes:

  - import-to-ready: spawning run.sh to the first 200 from /health, the adapter's readiness check (Lambda's init);
  - first answer after start: from ready to the end of the first streamed request with a virtual key (the secret,
    the key record, the first AWS clients and upstream connection: what a cold environment's first client waits);
  - CPU per streamed request: the process's user + system CPU time over `requests` streams of DELTAS text deltas,
    divided by their number (CPU time does not depend on the share; the wall time it takes does);
  - added billed time per stream: wall time of a stream paced by the upstream (PACED_DELTAS deltas PACED_GAP_MS
    apart) through the gateway, minus the same stream read from the upstream directly. Lambda bills the function's
    whole wall time, so this is what a smaller share adds to each stream's bill, besides the first byte's delay.
Beside them: the bytes the gateway writes to stdout per request (access line + EMF metrics), which CloudWatch Logs
ingests and bills.

Prints a markdown table; `make bench` adds it to .bench/results.json.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: python bench/memory_sizes.py
    sys.path.insert(0, str(ROOT))

from bench import processes  # noqa: E402
from support import sam_artifact  # noqa: E402
from support.servers import free_port  # noqa: E402

MEMORY_SIZES_MB = (256, 512, 1024, 1769)
FULL_VCPU_MB = 1769  # Lambda: "at 1,769 MB, a function has the equivalent of one vCPU"
PERIOD_US = 100_000
DELTAS = 100  # text deltas of the stream whose CPU is measured: a few hundred tokens of answer
PACED_DELTAS, PACED_GAP_MS = 50, 20  # the paced stream: about a second of upstream time
# Lambda on demand, arm64, us-east-1, first pricing tier (aws.amazon.com/lambda/pricing; AWS Price List published
# 2026-09-19): USD per GB-second. Only to put the sizes side by side here; docs/cost.md has every price and its date.
ARM64_GB_SECOND_USD = 0.0000133334
STREAM_SECONDS = (2, 20, 120)
MASTER_KEY = "sk-master-bench-0123456789"
UPSTREAM_KEY = "sk-ant-upstream-test-key"
MESSAGE = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 64,
    "stream": True,
    "messages": [{"role": "user", "content": "Hi"}],
}
VERSION = {"anthropic-version": "2023-06-01"}


# -- the CPU share ---------------------------------------------------------------------------------------------------


class CpuShare:
    """A cgroup whose processes get at most `share` of one CPU (quota per period), made and removed around a run."""

    def __init__(self, share: float, name: str) -> None:
        self.share = share
        quota = max(1000, round(share * PERIOD_US))  # the kernel's floor is 1 ms
        v2, v1 = Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/cpu")
        if (v2 / "cgroup.controllers").is_file() and "cpu" in (v2 / "cgroup.controllers").read_text().split():
            self.path = v2 / name
            self._settings = {"cpu.max": f"{quota} {PERIOD_US}"}
            self._enable = v2 / "cgroup.subtree_control"
        elif (v1 / "cpu.cfs_quota_us").is_file():
            self.path = v1 / name
            self._settings = {"cpu.cfs_period_us": str(PERIOD_US), "cpu.cfs_quota_us": str(quota)}
            self._enable = None
        else:
            raise RuntimeError("no cgroup CPU controller at /sys/fs/cgroup (v2 cpu.max or v1 cpu.cfs_quota_us)")

    def __enter__(self) -> CpuShare:
        if self._enable is not None and "cpu" not in self._enable.read_text().split():
            self._enable.write_text("+cpu")
        self.path.mkdir(exist_ok=True)
        for name, value in self._settings.items():
            (self.path / name).write_text(value)
        return self

    def __exit__(self, *exc_info: object) -> None:
        with contextlib.suppress(OSError):  # a process still in it (then the cgroup is left for the next run)
            self.path.rmdir()

    def join(self) -> None:
        """Move the calling process into the cgroup (used in the child between fork and exec)."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def throttled_periods(self) -> int:
        stat = dict(line.split() for line in (self.path / "cpu.stat").read_text().splitlines() if line.strip())
        return int(stat.get("nr_throttled", 0))


def available() -> str | None:
    """None when a CPU quota can be set here, else why not."""
    try:
        with CpuShare(1.0, f"bench-probe-{os.getpid()}"):
            return None
    except (OSError, RuntimeError) as exc:
        return str(exc)


# -- one size ------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SizeResult:
    memory_mb: int
    cpu_share: float
    ready_s: list[float]  # spawn run.sh -> first /health 200, one per fresh process
    first_answer_s: list[float]  # ready -> end of the first streamed request (virtual key), one per fresh process
    cpu_ms_per_request: float  # process CPU time per streamed request of DELTAS deltas
    first_byte_ms: float  # median time to the first body byte of the paced stream, through the gateway
    added_ms_per_stream: float  # median (gateway - direct) wall time of the paced stream
    throttled_periods: int  # 100 ms periods in which the quota ran out (cgroup cpu.stat)
    rss_mb: float  # the gateway process's resident memory after the streams (Lambda's limit counts it)

    def gb_seconds_per_stream(self, upstream_seconds: float) -> float:
        return self.memory_mb / 1024 * (upstream_seconds + self.added_ms_per_stream / 1000)


@dataclasses.dataclass(frozen=True)
class MemorySizesResult:
    runs: int
    requests: int
    direct_paced_ms: float  # the paced stream read from the upstream directly (median)
    log_bytes_per_request: float  # stdout bytes per streamed request at the full share (access line + EMF)
    sizes: list[SizeResult]
    load_average: tuple[list[float], list[float]]


class _Gateway:
    """The built run.sh in a cgroup; the lines it writes for requests (they carry a request_id) kept."""

    def __init__(self, build_dir: Path, support_dir: Path, env: dict[str, str], share: CpuShare) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        proxy_env = sam_artifact.proxy_env(build_dir, support_dir, self.port, env)
        self.started = time.perf_counter()
        self.process = sam_artifact.start_proxy(
            build_dir, proxy_env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, preexec_fn=share.join
        )
        self.request_lines: list[bytes] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:  # until run.sh exits: a pipe that is read never fills
            if b'"request_id"' in line:
                self.request_lines.append(line)

    def ready(self) -> float:
        return sam_artifact.wait_healthy(self.url, self.process, timeout=120) - self.started

    def stop(self) -> None:
        sam_artifact.stop(self.process)
        self._reader.join(10)


def _stream(http: httpx.Client, url: str, headers: dict[str, str]) -> tuple[float, float]:
    """(ms to the first body byte, ms to the end) of one streamed Messages request."""
    started = time.perf_counter()
    with http.stream("POST", url, json=MESSAGE, headers=headers) as response:
        chunks = response.iter_raw()
        next(chunks)
        first = time.perf_counter()
        assert response.status_code == 200
        for _ in chunks:
            pass
    return (first - started) * 1000, (time.perf_counter() - started) * 1000


def _virtual_key(url: str) -> str:
    created = httpx.post(f"{url}/key/generate", json={}, headers={"Authorization": f"Bearer {MASTER_KEY}"}, timeout=60)
    created.raise_for_status()
    key: str = created.json()["key"]
    return key


def _measure_size(
    memory_mb: int, build_dir: Path, support_dir: Path, env: dict[str, str], key: str, runs: int, requests: int
) -> SizeResult:
    share = min(1.0, memory_mb / FULL_VCPU_MB)
    headers = {"x-api-key": key, **VERSION}
    ready, first_answer = [], []
    with CpuShare(share, f"bench-memory-{memory_mb}-{os.getpid()}") as cgroup:
        throttled_before = cgroup.throttled_periods()
        for run in range(runs):
            gateway = _Gateway(build_dir, support_dir, env, cgroup)
            try:
                ready.append(gateway.ready())
                with httpx.Client(timeout=120) as http:
                    up = time.perf_counter()
                    _stream(http, f"{gateway.url}/anthropic/v1/messages", {**headers, "x-fake-chunks": str(DELTAS)})
                    first_answer.append(time.perf_counter() - up)
                    if run == runs - 1:  # the last process, warm now, for the steady-state numbers
                        url = f"{gateway.url}/anthropic/v1/messages"
                        cpu_before = processes.cpu_seconds(gateway.process.pid)
                        for _ in range(requests):
                            _stream(http, url, {**headers, "x-fake-chunks": str(DELTAS)})
                        cpu_ms = (processes.cpu_seconds(gateway.process.pid) - cpu_before) * 1000 / requests
                        paced = {**headers, "x-fake-chunks": str(PACED_DELTAS), "x-fake-delay-ms": str(PACED_GAP_MS)}
                        timings = [_stream(http, url, paced) for _ in range(max(5, requests // 10))]
                        rss_mb = processes.rss_kib(gateway.process.pid) / 1024
            finally:
                gateway.stop()
        throttled = cgroup.throttled_periods() - throttled_before
    return SizeResult(
        memory_mb=memory_mb,
        cpu_share=share,
        ready_s=ready,
        first_answer_s=first_answer,
        cpu_ms_per_request=cpu_ms,
        first_byte_ms=statistics.median(first for first, _ in timings),
        added_ms_per_stream=statistics.median(total for _, total in timings),  # minus direct: see measure()
        throttled_periods=throttled,
        rss_mb=rss_mb,
    )


def _log_bytes_per_request(build_dir: Path, support_dir: Path, env: dict[str, str], key: str, requests: int) -> float:
    """stdout bytes per streamed request (its access line and EMF blobs, which CloudWatch Logs ingests)."""
    with CpuShare(1.0, f"bench-memory-logs-{os.getpid()}") as cgroup:
        gateway = _Gateway(build_dir, support_dir, env, cgroup)
        try:
            gateway.ready()
            headers = {"x-api-key": key, **VERSION, "x-fake-chunks": str(DELTAS)}
            with httpx.Client(timeout=120) as http:
                for _ in range(requests):
                    _stream(http, f"{gateway.url}/anthropic/v1/messages", headers)
        finally:
            gateway.stop()  # SIGTERM drains the accounting: every request's lines are out once run.sh has exited
    access_lines = sum(b'"gateway request"' in line for line in gateway.request_lines)
    assert access_lines == requests, (access_lines, requests)
    return sum(len(line) for line in gateway.request_lines) / requests


def measure(runs: int, requests: int, build_dir: Path | None = None) -> MemorySizesResult | None:
    """Build (unless given an x86_64 build), then measure every size; None when no CPU quota can be set here."""
    reason = available()
    if reason is not None:
        print(f"memory sizes: skipped, {reason} (run as root, or in a cgroup with the cpu controller delegated)",
              file=sys.stderr)  # fmt: skip
        return None
    load_start = list(os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        if build_dir is None:
            result = sam_artifact.build(work / "build", work / "cache", "x86_64")
            if result.returncode != 0:
                print(f"sam build failed:\n{result.stdout}\n{result.stderr}", file=sys.stderr)
                return None
            build_dir = work / "build"
        env = _services(stack)
        key = _prepared_key(build_dir, work / "support", env)
        with httpx.Client(timeout=60) as http:
            upstream = env["ANTHROPIC_API_BASE"] + "/v1/messages"
            direct_headers = {"x-api-key": UPSTREAM_KEY, **VERSION}
            paced = {**direct_headers, "x-fake-chunks": str(PACED_DELTAS), "x-fake-delay-ms": str(PACED_GAP_MS)}
            direct = statistics.median(_stream(http, upstream, paced)[1] for _ in range(max(5, requests // 10)))
        sizes = []
        for memory_mb in MEMORY_SIZES_MB:
            size = _measure_size(memory_mb, build_dir, work / "support", env, key, runs, requests)
            sizes.append(dataclasses.replace(size, added_ms_per_stream=size.added_ms_per_stream - direct))
        log_bytes = _log_bytes_per_request(build_dir, work / "support", env, key, requests)
    return MemorySizesResult(runs, requests, direct, log_bytes, sizes, (load_start, list(os.getloadavg())))


def _services(stack: ExitStack) -> dict[str, str]:
    """moto and the fast upstream, outside any quota; the table and secrets created. The gateway's environment."""
    moto_port, upstream_port = free_port(), free_port()
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{moto_port}",
        "ANTHROPIC_API_BASE": f"http://127.0.0.1:{upstream_port}",
        "POWERTOOLS_METRICS_NAMESPACE": "AnthropicGatewayBench",
    }
    service_env = dict(os.environ, PYTHONPATH=f"{ROOT / 'layers' / 'gateway'}:{ROOT}", **env)
    python = sys.executable
    processes.start(stack, [python, "-m", "moto.server", "-p", str(moto_port)], service_env, env["AWS_ENDPOINT_URL"])
    processes.start(
        stack, [python, "-m", "bench.fast_upstream", str(upstream_port)], service_env, env["ANTHROPIC_API_BASE"]
    )
    create = f"from anthropic_gateway import local; local.create_resources({UPSTREAM_KEY!r}, {MASTER_KEY!r})"
    subprocess.run([python, "-c", create], env=service_env, cwd=ROOT, check=True)
    return env


def _prepared_key(build_dir: Path, support_dir: Path, env: dict[str, str]) -> str:
    """A virtual key, created through a gateway that is then stopped: every measured process starts without it."""
    with CpuShare(1.0, f"bench-memory-setup-{os.getpid()}") as cgroup:
        gateway = _Gateway(build_dir, support_dir, env, cgroup)
        try:
            gateway.ready()
            return _virtual_key(gateway.url)
        finally:
            gateway.stop()


# -- the report ----------------------------------------------------------------------------------------------------


def rows(result: MemorySizesResult) -> Iterator[list[str]]:
    for size in result.sizes:
        cost = [ARM64_GB_SECOND_USD * size.gb_seconds_per_stream(seconds) * 1e6 for seconds in STREAM_SECONDS]
        yield [
            f"{size.memory_mb:,} MB",
            f"{size.cpu_share:.1%}",
            f"{statistics.median(size.ready_s) * 1000:,.0f} ms",
            f"{statistics.median(size.first_answer_s) * 1000:,.0f} ms",
            f"{size.cpu_ms_per_request:.2f} ms",
            f"{size.first_byte_ms:.1f} ms",
            f"{size.added_ms_per_stream:+.1f} ms",
            f"{size.rss_mb:.0f} MB",
            " / ".join(f"${usd:,.0f}" for usd in cost),
        ]


def markdown(result: MemorySizesResult) -> str:
    head = [
        "Memory", "CPU share", "Import-to-ready", "First answer after start", "CPU per streamed request",
        "First byte (paced stream)", "Added billed time per stream", "Gateway RSS",
        f"Lambda duration per 1M streams of {' / '.join(f'{s} s' for s in STREAM_SECONDS)} (arm64)",
    ]  # fmt: skip
    lines = [
        f"Streaming door at Lambda's CPU share per memory size ({result.runs} fresh processes per size, medians; "
        f"{result.requests} streams of {DELTAS} deltas for CPU; paced stream {PACED_DELTAS} deltas "
        f"{PACED_GAP_MS} ms apart, {result.direct_paced_ms:,.0f} ms read directly)",
        "",
        "| " + " | ".join(head) + " |",
        "| --- | " + " | ".join("---:" for _ in head[1:]) + " |",
        *("| " + " | ".join(row) + " |" for row in rows(result)),
        "",
        "Throttled 100 ms periods per size: "
        + ", ".join(f"{s.memory_mb} MB {s.throttled_periods}" for s in result.sizes)
        + f". Gateway stdout per streamed request (access line + EMF): {result.log_bytes_per_request:,.0f} bytes.",
        f"Load average (1/5/15 min) at start {' '.join(f'{x:.2f}' for x in result.load_average[0])}, at end "
        f"{' '.join(f'{x:.2f}' for x in result.load_average[1])}.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The streaming door at Lambda's CPU share per memory size.")
    parser.add_argument("--runs", type=int, default=5, help="fresh processes per size (default 5)")
    parser.add_argument("--requests", type=int, default=200, help="streams for CPU per request (default 200)")
    parser.add_argument("--build-dir", type=Path, help="reuse an x86_64 `sam build` output instead of building")
    args = parser.parse_args(argv)
    processes.raise_fd_limit()
    result = measure(args.runs, args.requests, args.build_dir)
    if result is None:
        return 1
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
