"""Load through wrk (Debian's `wrk`, an epoll C load generator, so the client costs little of the shared cores):
requests/s at N connections, and the soak that watches the gateway's RSS and open fds over many requests."""

from __future__ import annotations

import dataclasses
import json
import re
import signal
import subprocess
import tempfile
import threading
from pathlib import Path

from bench import processes
from bench.latency import MESSAGE

WRK = "wrk"
DONE = "bench-thread-done"
TIMEOUT_S = 10  # wrk's default of 2 s would count slow answers on a busy machine as socket errors
_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


@dataclasses.dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    requests_per_s: float
    non_2xx: int  # wrk counts statuses >= 400 ("Non-2xx or 3xx responses")
    socket_errors: int  # connect + read + write + timeout
    timeouts: int  # of which: no answer within TIMEOUT_S
    p50_ms: float | None
    p99_ms: float | None
    cpu_ms_per_request: float | None  # of the process given as `pid`


@dataclasses.dataclass(frozen=True)
class SoakResult:
    load: WrkResult
    rss_mb: list[float]  # sampled every interval, first before the load, last after it
    fds: list[int]

    @property
    def rss_flat(self) -> bool:
        return _flat(self.rss_mb, tolerance=5.0)

    @property
    def fds_flat(self) -> bool:
        return _flat([float(n) for n in self.fds], tolerance=5.0)


def _flat(samples: list[float], tolerance: float) -> bool:
    """Flat: the second half of the run under load peaks no higher than the first half did, give or take
    `tolerance` (allocator arenas and pooled connections move a little). A leak climbs through the second half."""
    loaded = samples[1:-1] or samples
    half = len(loaded) // 2
    if half == 0:
        return True
    return max(loaded[half:]) <= max(loaded[:half]) + tolerance


def lua_script(headers: dict[str, str], stop_after: int | None = None) -> str:
    """wrk's script: POST the Messages body with `headers`; with stop_after, each thread stops after that many
    responses (wrk has no request-count option)."""
    lines = ['wrk.method = "POST"', f"wrk.body = {_lua_string(json.dumps(MESSAGE))}"]
    for name, value in {"content-type": "application/json", **headers}.items():
        lines.append(f"wrk.headers[{_lua_string(name)}] = {_lua_string(value)}")
    if stop_after is not None:
        lines += [
            "local responses = 0",
            "function response(status, headers, body)",
            "  responses = responses + 1",
            # wrk's main thread sleeps out -d regardless, so also say so: the bench then stops wrk with SIGINT.
            f'  if responses == {stop_after} then io.write("{DONE}\\n"); io.flush(); wrk.thread:stop() end',
            "end",
        ]
    return "\n".join(lines) + "\n"


def _lua_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def parse(output: str, cpu_seconds: float | None) -> WrkResult:
    done = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", output)
    if done is None:
        raise RuntimeError(f"unexpected wrk output:\n{output}")
    requests, seconds = int(done.group(1)), _ms(done.group(2) + done.group(3)) / 1000
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    p50, p99 = (re.search(rf"^\s+{p}%\s+(\S+)", output, re.M) for p in ("50", "99"))
    return WrkResult(
        requests=requests,
        seconds=seconds,
        requests_per_s=requests / seconds if seconds else 0.0,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(n) for n in errors.groups()) if errors else 0,
        timeouts=int(errors.group(4)) if errors else 0,
        p50_ms=_ms(p50.group(1)) if p50 else None,
        p99_ms=_ms(p99.group(1)) if p99 else None,
        cpu_ms_per_request=cpu_seconds * 1000 / requests if cpu_seconds is not None and requests else None,
    )


def _command(url: str, script: Path, connections: int, threads: int, seconds: float) -> list[str]:
    return [
        *(WRK, f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", f"--timeout={TIMEOUT_S}s", "--latency"),
        *("-s", str(script), url),
    ]


def throughput(
    url: str, headers: dict[str, str], pid: int, *, connections: int, threads: int, seconds: float
) -> WrkResult:
    """wrk for `seconds` at `connections`; CPU per request of process `pid` (the server under test)."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(lua_script(headers))
        script.flush()
        cpu_before = processes.cpu_seconds(pid)
        out = subprocess.run(
            _command(url, Path(script.name), connections, threads, seconds), capture_output=True, text=True, check=True
        ).stdout
        return parse(out, processes.cpu_seconds(pid) - cpu_before)


def soak(
    url: str, headers: dict[str, str], pid: int, *, requests: int, connections: int, threads: int, sample_s: float
) -> SoakResult:
    """About `requests` requests through wrk, sampling the gateway's RSS and open fds every `sample_s`."""
    rss: list[float] = []
    fds: list[int] = []

    def sample() -> None:
        rss.append(processes.rss_kib(pid) / 1024)
        fds.append(processes.open_fds(pid))

    # A duration as a backstop only: the script stops each thread after its share of the requests and says so.
    backstop_s = requests / 20 + 60  # a gateway slower than 20 req/s is not soaked to the end
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(lua_script(headers, stop_after=-(-requests // threads)))
        script.flush()
        cpu_before = processes.cpu_seconds(pid)
        sample()
        with subprocess.Popen(
            _command(url, Path(script.name), connections, threads, backstop_s), stdout=subprocess.PIPE, text=True
        ) as wrk:
            lines: list[str] = []
            all_done = threading.Event()
            reader = threading.Thread(target=_read_lines, args=(wrk, lines, threads, all_done), daemon=True)
            reader.start()
            while not all_done.wait(sample_s) and wrk.poll() is None:
                sample()
            cpu = processes.cpu_seconds(pid) - cpu_before
            if wrk.poll() is None:
                wrk.send_signal(signal.SIGINT)  # wrk then prints its summary, its clock stopped about now
            wrk.wait()
            reader.join()
        sample()
    out = "".join(lines)
    if wrk.returncode:
        raise RuntimeError(f"wrk exited with {wrk.returncode}:\n{out}")
    return SoakResult(load=parse(out, cpu), rss_mb=rss, fds=fds)


def _read_lines(wrk: subprocess.Popen[str], lines: list[str], threads: int, all_done: threading.Event) -> None:
    assert wrk.stdout is not None
    for line in wrk.stdout:
        lines.append(line)
        if sum(DONE in seen for seen in lines) >= threads:
            all_done.set()
    all_done.set()
