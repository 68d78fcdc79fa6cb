"""Cold start and deployment size of the Lambda build: `python -m bench.cold_start [--runs N]`.

Cold start: from spawning the built ProxyFunction's run.sh (what the Lambda Web Adapter's wrapper execs) to the
first 200 from GET /health (the adapter's readiness check), in a fresh process each time: Python start, imports of
uvicorn and the app, binding the port, answering. No AWS credentials are given, so the start's warm-up finds none
(botocore searches its chain and gives up); `first_answer` below times the start as on Lambda, against moto. Median
of N runs. Beside it: the import of the app alone (inside a fresh process), and the cold start once more with the
layer's bytecode removed, which is what a build shipping only .py files (SAM's python3.13 build method) runs, since
/opt is read-only on Lambda. Lambda's own init
(microVM, runtime, the adapter extension) comes on top and is not measurable here.

Size: the built layer plus both functions, unzipped (Lambda's 250 MB limit counts this) and zipped, for the
x86_64 build that runs here and the arm64 build that is deployed by default.

Targets: cold start <= 1 s on the development machines, total unzipped size <= 30 MB. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from contextlib import ExitStack
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: python bench/cold_start.py
    sys.path.insert(0, str(ROOT))

from support import sam_artifact  # noqa: E402
from support.servers import free_port  # noqa: E402

COLD_START_TARGET_S = 1.0
SIZE_TARGET_MB = 30.0
MB = 1024 * 1024


def _zipped_bytes(path: Path) -> int:
    with tempfile.TemporaryFile() as handle:
        with zipfile.ZipFile(handle, "w", zipfile.ZIP_DEFLATED) as archive:
            for file in sorted(path.rglob("*")):
                if file.is_file():
                    archive.write(file, file.relative_to(path))
        return handle.tell()


def cold_start(build_dir: Path, support_dir: Path) -> float:
    """Seconds from spawning run.sh to the first 200 from /health, in a fresh process."""
    port = free_port()
    env = sam_artifact.proxy_env(build_dir, support_dir, port)
    started = time.perf_counter()
    process = sam_artifact.start_proxy(build_dir, env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ready = sam_artifact.wait_healthy(f"http://127.0.0.1:{port}", process)
    finally:
        sam_artifact.stop(process)
    return ready - started


def import_time(build_dir: Path, support_dir: Path) -> float:
    """Seconds `import anthropic_gateway.app` takes inside a fresh python3 (interpreter start excluded)."""
    env = sam_artifact.proxy_env(build_dir, support_dir, 0)
    probe = "import time; t = time.perf_counter(); import anthropic_gateway.app; print(time.perf_counter() - t)"
    out = subprocess.run(["python3", "-c", probe], env=env, check=True, capture_output=True, text=True).stdout
    return float(out)


def without_bytecode(build_dir: Path, work: Path) -> Path:
    """A copy of the build whose layer has no __pycache__: what a build that ships only .py files would run."""
    copy = work / "no-bytecode"
    shutil.copytree(build_dir, copy, symlinks=True)
    for cache in (copy / sam_artifact.LAYER_ID).rglob("__pycache__"):
        shutil.rmtree(cache)
    return copy


def sizes(build_dir: Path) -> tuple[int, int]:
    parts = [build_dir / sam_artifact.LAYER_ID, build_dir / sam_artifact.PROXY_ID, build_dir / sam_artifact.API_ID]
    return sum(sam_artifact.tree_bytes(p) for p in parts), sum(_zipped_bytes(p) for p in parts)


def _build(work: Path, architecture: str) -> Path | None:
    build_dir = work / f"build-{architecture}"
    result = sam_artifact.build(build_dir, work / f"cache-{architecture}", architecture)
    if result.returncode != 0:
        print(f"sam build ({architecture}) failed:\n{result.stdout}\n{result.stderr}", file=sys.stderr)
        return None
    return build_dir


@dataclasses.dataclass(frozen=True)
class ColdStartResult:
    runs: int
    cold_start_s: list[float]  # spawn run.sh to first /health 200, one per fresh process
    import_s: list[float]  # import anthropic_gateway.app in process
    cold_start_no_bytecode_s: list[float]
    x86_unzipped: int  # bytes, layer + functions
    x86_zipped: int
    arm_unzipped: int | None  # None: arm64 not built
    arm_zipped: int | None

    @property
    def deployed_unzipped(self) -> int:
        return self.arm_unzipped if self.arm_unzipped is not None else self.x86_unzipped


def measure(runs: int, build_dir: Path | None = None, skip_arm64: bool = False) -> ColdStartResult | None:
    """Build (unless given an x86_64 build), then time `runs` cold starts; None if `sam build` failed."""
    with tempfile.TemporaryDirectory(prefix="bench-cold-start-") as tmp:
        work = Path(tmp)
        x86 = build_dir or _build(work, "x86_64")
        if x86 is None:
            return None
        arm = None if skip_arm64 else _build(work, "arm64")
        support = work / "support"
        bare = without_bytecode(x86, work)

        # Interleaved, so a busy moment on the machine weighs on every column alike.
        cold, imports, cold_bare = [], [], []
        for _ in range(runs):
            cold.append(cold_start(x86, support))
            imports.append(import_time(x86, support))
            cold_bare.append(cold_start(bare, support))
        x86_size, x86_zip = sizes(x86)
        arm_size, arm_zip = sizes(arm) if arm else (None, None)
    return ColdStartResult(runs, cold, imports, cold_bare, x86_size, x86_zip, arm_size, arm_zip)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Cold start and deployment size of the SAM build.")
    parser.add_argument("--runs", type=int, default=10, help="fresh processes to time (default 10)")
    parser.add_argument("--build-dir", type=Path, help="reuse an x86_64 `sam build` output instead of building")
    parser.add_argument("--skip-arm64", action="store_true", help="do not build arm64 for its size")
    args = parser.parse_args(argv)
    result = measure(args.runs, args.build_dir, args.skip_arm64)
    if result is None:
        return 1
    cold, imports, cold_bare = result.cold_start_s, result.import_s, result.cold_start_no_bytecode_s
    x86_size, x86_zip, arm_size, arm_zip = (
        result.x86_unzipped,
        result.x86_zipped,
        result.arm_unzipped,
        result.arm_zipped,
    )
    cold_median = statistics.median(cold)
    deployed = result.deployed_unzipped
    rows = [
        ("Cold start: spawn run.sh to first /health 200 (median)", f"{cold_median * 1000:.0f} ms",
         f"<= {COLD_START_TARGET_S * 1000:.0f} ms", cold_median <= COLD_START_TARGET_S),
        ("  min / max", f"{min(cold) * 1000:.0f} / {max(cold) * 1000:.0f} ms", "", None),
        ("  of which: import anthropic_gateway.app, in process (median)",
         f"{statistics.median(imports) * 1000:.0f} ms", "", None),
        ("Cold start, layer without shipped bytecode (median)",
         f"{statistics.median(cold_bare) * 1000:.0f} ms", "", None),
        ("Size unzipped, layer + functions (arm64, deployed)",
         f"{arm_size / MB:.1f} MB" if arm_size is not None else "n/a", f"<= {SIZE_TARGET_MB:.0f} MB",
         deployed / MB <= SIZE_TARGET_MB if arm_size is not None else None),
        ("Size zipped (arm64)", f"{arm_zip / MB:.1f} MB" if arm_zip is not None else "n/a", "", None),
        ("Size unzipped, layer + functions (x86_64)", f"{x86_size / MB:.1f} MB", f"<= {SIZE_TARGET_MB:.0f} MB",
         x86_size / MB <= SIZE_TARGET_MB),
        ("Size zipped (x86_64)", f"{x86_zip / MB:.1f} MB", "", None),
    ]  # fmt: skip
    print(f"\nCold start of the streaming door ({args.runs} fresh processes) and deployment size\n")
    print("| Measure | Value | Target | Met |")
    print("| --- | --- | --- | --- |")
    for name, value, target, met in rows:
        print(f"| {name} | {value} | {target} | {'' if met is None else ('yes' if met else 'NO')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())


# -- the streaming door from spawn to its first answer (issue 21) --------------------------------------------------

FIRST_ANSWER_MASTER_KEY = "sk-master-bench-cold-0123456789"
FIRST_ANSWER_UPSTREAM_KEY = "sk-ant-upstream-test-key"
_FIRST_MESSAGE = b'{"model":"claude-sonnet-4-5","max_tokens":8,"messages":[{"role":"user","content":"Hello"}]}'


@dataclasses.dataclass(frozen=True)
class FirstAnswerResult:
    runs: int
    ready_s: list[float]  # spawn run.sh to the first /health 200, one per fresh process
    first_answer_s: list[float]  # spawn run.sh to a pass-through answer read whole, its request sent at readiness
    # The gateway process's CPU time (user + system) at those two moments: what a Lambda CPU share pays, and steadier
    # than wall time on a shared machine.
    ready_cpu_s: list[float] = dataclasses.field(default_factory=list)
    first_answer_cpu_s: list[float] = dataclasses.field(default_factory=list)


def first_answer(
    build_dir: Path, support_dir: Path, aws_env: dict[str, str], key: str
) -> tuple[float, float, float, float]:
    """(seconds to ready, seconds to the first pass-through answer, and the process's CPU seconds at each) of one
    fresh process of the built streaming door: spawned as the adapter's wrapper does (run.sh execs python, so the
    process is the gateway's), polled on /health as the adapter's readiness check does, then sent the invocation
    Lambda was holding (a Messages request with a virtual key) the moment it is ready."""
    from bench.processes import cpu_seconds

    port = free_port()
    env = sam_artifact.proxy_env(build_dir, support_dir, port, aws_env)
    url = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    process = sam_artifact.start_proxy(build_dir, env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ready = sam_artifact.wait_healthy(url, process)
        ready_cpu = cpu_seconds(process.pid)
        headers = {"x-api-key": key, "content-type": "application/json", "anthropic-version": "2023-06-01"}
        with httpx.Client(timeout=30) as http:
            response = http.post(url + "/anthropic/v1/messages", content=_FIRST_MESSAGE, headers=headers)
        answered = time.perf_counter()
        answered_cpu = cpu_seconds(process.pid)
        if response.status_code != 200:
            raise RuntimeError(f"first request answered {response.status_code}: {response.text[:300]}")
    finally:
        sam_artifact.stop(process)
    return ready - started, answered - started, ready_cpu, answered_cpu


def measure_first_answer(runs: int, *build_dirs: Path) -> list[FirstAnswerResult]:
    """`runs` fresh processes of each x86_64 build, interleaved (a busy moment weighs on every build alike), against
    moto's server as AWS and the bench's fast upstream as Anthropic (each in a process of its own, started once); a
    virtual key is made first through the first build."""
    from bench import processes

    python = sys.executable
    moto_port, upstream_port = free_port(), free_port()
    aws_env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{moto_port}",
        "ANTHROPIC_API_BASE": f"http://127.0.0.1:{upstream_port}",
    }
    tools_env = dict(os.environ, PYTHONPATH=f"{ROOT / 'layers' / 'gateway'}{os.pathsep}{ROOT}", **aws_env)
    with tempfile.TemporaryDirectory(prefix="bench-first-answer-") as tmp, ExitStack() as stack:
        support = Path(tmp) / "support"
        moto = [python, "-m", "moto.server", "-p", str(moto_port)]
        processes.start(stack, moto, tools_env, aws_env["AWS_ENDPOINT_URL"])
        processes.start(
            stack, [python, "-m", "bench.fast_upstream", str(upstream_port)], tools_env, aws_env["ANTHROPIC_API_BASE"]
        )
        create = (
            "from anthropic_gateway import local; "
            f"local.create_resources({FIRST_ANSWER_UPSTREAM_KEY!r}, {FIRST_ANSWER_MASTER_KEY!r})"
        )
        subprocess.run([python, "-c", create], env=tools_env, cwd=ROOT, check=True)
        key = _virtual_key(build_dirs[0], support, aws_env)
        times: list[list[tuple[float, float, float, float]]] = [[] for _ in build_dirs]
        for _ in range(runs):
            for build_dir, taken in zip(build_dirs, times, strict=True):
                taken.append(first_answer(build_dir, support, aws_env, key))
    return [FirstAnswerResult(runs, *([t[i] for t in taken] for i in range(4))) for taken in times]


def measure_first_answer_of_a_build(runs: int) -> FirstAnswerResult | None:
    """`measure_first_answer` of a fresh x86_64 `sam build` of this tree (`make bench`); None if the build failed."""
    with tempfile.TemporaryDirectory(prefix="bench-first-answer-build-") as tmp:
        build_dir = _build(Path(tmp), "x86_64")
        return None if build_dir is None else measure_first_answer(runs, build_dir)[0]


def _virtual_key(build_dir: Path, support_dir: Path, aws_env: dict[str, str]) -> str:
    port = free_port()
    env = sam_artifact.proxy_env(build_dir, support_dir, port, aws_env)
    process = sam_artifact.start_proxy(build_dir, env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        sam_artifact.wait_healthy(f"http://127.0.0.1:{port}", process)
        created = httpx.post(
            f"http://127.0.0.1:{port}/key/generate",
            json={},
            headers={"Authorization": f"Bearer {FIRST_ANSWER_MASTER_KEY}"},
            timeout=30,
        )
        created.raise_for_status()
        key: str = created.json()["key"]
        return key
    finally:
        sam_artifact.stop(process)


def first_answer_rows(result: FirstAnswerResult) -> list[tuple[str, str]]:
    """(measure, value) rows: medians and ranges of both times."""
    ready, answered = result.ready_s, result.first_answer_s
    median = statistics.median
    return [
        (f"Spawn `run.sh` to ready (first `/health` 200), median of {result.runs}", _ms(median(ready))),
        ("  min / max", f"{_ms(min(ready))} / {_ms(max(ready))}"),
        ("  the process's CPU time until then, median", _ms(median(result.ready_cpu_s))),
        ("Spawn `run.sh` to its first pass-through answer (sent at ready), median", _ms(median(answered))),
        ("  min / max", f"{_ms(min(answered))} / {_ms(max(answered))}"),
        ("  the process's CPU time until then, median", _ms(median(result.first_answer_cpu_s))),
    ]


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def first_answer_main(argv: list[str] | None = None) -> int:
    """`python -c 'from bench import cold_start; cold_start.first_answer_main()' [--runs N] [--build-dir DIR]
    [--baseline-dir DIR]`: with a baseline (another tree's x86_64 `sam build`), both are timed, interleaved."""
    parser = argparse.ArgumentParser(description="Streaming door: spawn to ready and to its first answer.")
    parser.add_argument("--runs", type=int, default=10, help="fresh processes to time (default 10)")
    parser.add_argument("--build-dir", type=Path, help="reuse an x86_64 `sam build` output instead of building")
    parser.add_argument("--baseline-dir", type=Path, help="an x86_64 `sam build` output to time beside it")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-first-answer-build-") as tmp:
        build_dir = args.build_dir or _build(Path(tmp), "x86_64")
        if build_dir is None:
            return 1
        builds = [build_dir, *([args.baseline_dir] if args.baseline_dir else [])]
        results = measure_first_answer(args.runs, *builds)
    for build, result in zip(builds, results, strict=True):
        print(f"\n{build}\n\n| Measure | Value |\n| --- | --- |")
        for name, value in first_answer_rows(result):
            print(f"| {name} | {value} |")
    return 0
