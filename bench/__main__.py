"""`make bench`: the gateway side by side with talking to the upstream directly, against issue 11's bar.

Each party runs in its own process: moto as AWS, a fast canned upstream (bench/fast_upstream.py, so that under load
the upstream is not the bottleneck), the gateway under uvicorn started with the streaming door's own flags (read
from functions/proxy/run.sh), wrk as the load generator, and this client. In one run:

1. added latency at concurrency 1 (non-streamed and stream time to first byte), direct and gateway batches alternated,
   also through the Bedrock path and through the floor relay (bench/floor_relay.py: the least a Python relay on
   this stack does);
2. gateway RSS around a 50 MB streamed download;
3. throughput at 32 connections (wrk): directly, through the gateway and through the floor relay, with CPU per
   request;
4. 1,000 concurrent slow streams held by the gateway: RSS before / peak / after;
5. a 100,000-request soak sampling the gateway's RSS and open fds;
6. cold start and deployment size of the `sam build` artifact (bench/cold_start.py), and its streaming door from
   spawn to ready and to its first pass-through answer;
7. the streaming door at the CPU share Lambda gives 256, 512, 1,024 and 1,769 MB: import-to-ready, first answer
   after start, CPU and added billed time per stream, log bytes per request (bench/memory_sizes.py; needs root for
   its cgroups, else the step is skipped and says why).

Prints the README's markdown table and writes the results to .bench/results.json. BENCH_QUICK=1 for a short run;
the knobs are in bench/config.py.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from contextlib import ExitStack

import httpx

from bench import cold_start, latency, load, memory_sizes, processes, report, slow_streams
from bench.config import BenchConfig
from support.servers import free_port

ROOT = processes.ROOT
RESULTS = ROOT / ".bench" / "results.json"
MASTER_KEY = "sk-master-bench-0123456789"
UPSTREAM_KEY = "sk-ant-upstream-test-key"
DOWNLOAD_BYTES = 50 * 1024 * 1024
VERSION = {"anthropic-version": "2023-06-01"}


def _step(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def _environment(moto_port: int, upstream_port: int) -> dict[str, str]:
    return dict(
        os.environ,
        PYTHONPATH=f"{ROOT / 'layers' / 'gateway'}:{ROOT}",
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{moto_port}",
        ANTHROPIC_API_BASE=f"http://127.0.0.1:{upstream_port}",
        BEDROCK_BASE_URL=f"http://127.0.0.1:{upstream_port}/anthropic",  # the fast upstream stands in for Bedrock
        POWERTOOLS_METRICS_NAMESPACE="AnthropicGatewayBench",
    )


def _virtual_key(gateway_port: int, **settings: object) -> str:
    created = httpx.post(
        f"http://127.0.0.1:{gateway_port}/key/generate",
        json=settings,
        headers={"Authorization": f"Bearer {MASTER_KEY}"},
        timeout=30,
    )
    created.raise_for_status()
    key: str = created.json()["key"]
    return key


def _team_key(gateway_port: int) -> str:
    """A key of a team and of a user in it, the team and the user each with a budget (large enough never to refuse):
    every request reserves on the key's team and user in one transaction and settles them in one."""
    admin = {"Authorization": f"Bearer {MASTER_KEY}"}
    base = f"http://127.0.0.1:{gateway_port}"
    with httpx.Client(base_url=base, headers=admin, timeout=30) as client:
        client.post("/team/new", json={"team_id": "bench-team", "max_budget": 1_000_000}).raise_for_status()
        client.post(
            "/user/new", json={"user_id": "bench-user", "max_budget": 1_000_000, "auto_create_key": False}
        ).raise_for_status()
        client.post(
            "/team/member_add", json={"team_id": "bench-team", "member": {"user_id": "bench-user", "role": "user"}}
        ).raise_for_status()
    return _virtual_key(gateway_port, team_id="bench-team", user_id="bench-user")


def measure_serving(config: BenchConfig, load_average_start: list[float]) -> report.Results:
    python = sys.executable
    moto_port, upstream_port, gateway_port = free_port(), free_port(), free_port()
    env = _environment(moto_port, upstream_port)
    with ExitStack() as stack:
        # moto as `make dev` runs it (local.behave_like_dynamodb): governed keys' transactions need its fixes.
        moto = "from anthropic_gateway import local; local.behave_like_dynamodb(); import moto.server as s; s.main()"
        processes.start(stack, [python, "-c", moto, "-p", str(moto_port)], env, env["AWS_ENDPOINT_URL"])
        upstream = processes.start(
            stack, [python, "-m", "bench.fast_upstream", str(upstream_port)], env, env["ANTHROPIC_API_BASE"]
        )
        create = f"from anthropic_gateway import local; local.create_resources({UPSTREAM_KEY!r}, {MASTER_KEY!r})"
        subprocess.run([python, "-c", create], env=env, cwd=ROOT, check=True)
        gateway_base = f"http://127.0.0.1:{gateway_port}"
        gateway = processes.start(stack, [python, *processes.uvicorn_args(gateway_port)], env, f"{gateway_base}/health")
        direct_base = env["ANTHROPIC_API_BASE"]
        gateway_headers = {"x-api-key": _virtual_key(gateway_port), **VERSION}
        direct = (f"{direct_base}/v1/messages", {"x-api-key": UPSTREAM_KEY, **VERSION})
        via = (f"{gateway_base}/anthropic/v1/messages", gateway_headers)
        bedrock_headers = {"x-api-key": _virtual_key(gateway_port, upstreams=["bedrock"]), **VERSION}
        via_bedrock = (f"{gateway_base}/anthropic/v1/messages", bedrock_headers)
        floor_port = free_port()
        floor_args = processes.uvicorn_args(floor_port, app="bench.floor_relay:app")
        floor = processes.start(stack, [python, *floor_args], env, f"http://127.0.0.1:{floor_port}/health")
        via_floor = (f"http://127.0.0.1:{floor_port}/anthropic/v1/messages", direct[1])

        _step(f"latency at concurrency 1: {config.latency_rounds} + {config.first_byte_rounds} requests per side")
        with httpx.Client(timeout=60) as http:
            latency.messages(http, *direct, 50)  # warm up connections and caches on both paths
            latency.messages(http, *via, 50)
            direct_ms, gateway_ms = latency.interleaved(latency.messages, http, direct, via, config.latency_rounds)
            direct_fb, gateway_fb = latency.interleaved(latency.first_byte, http, direct, via, config.first_byte_rounds)
            _step("the same through the Bedrock path (SigV4 signing + model rewrite)")
            latency.messages(http, *via_bedrock, 50)
            _, bedrock_ms = latency.interleaved(latency.messages, http, direct, via_bedrock, config.latency_rounds)
            _, bedrock_fb = latency.interleaved(latency.first_byte, http, direct, via_bedrock, config.first_byte_rounds)
            _step("the same through a key of a budgeted team and user")
            via_team = (f"{gateway_base}/anthropic/v1/messages", {"x-api-key": _team_key(gateway_port), **VERSION})
            latency.messages(http, *via_team, 50)
            _, team_ms = latency.interleaved(latency.messages, http, direct, via_team, config.latency_rounds)
            _step("the same through the floor relay (a bare ASGI app with the gateway's upstream client)")
            latency.messages(http, *via_floor, 50)
            _, floor_ms = latency.interleaved(latency.messages, http, direct, via_floor, config.latency_rounds)
            _, floor_fb = latency.interleaved(latency.first_byte, http, direct, via_floor, config.first_byte_rounds)
            _step("50 MB download")
            rss_before = processes.rss_kib(gateway.pid) / 1024
            download = f"{gateway_base}/anthropic/v1/files/file_big_{DOWNLOAD_BYTES}/content"
            received = latency.download_bytes(
                http, download, {**gateway_headers, "anthropic-beta": "files-api-2025-04-14"}
            )
            assert received == DOWNLOAD_BYTES, received
            rss_after = processes.rss_kib(gateway.pid) / 1024

        wrk = dict(connections=config.connections, threads=config.wrk_threads, seconds=config.duration_s)
        _step(f"throughput: wrk, {config.connections} connections, {config.duration_s:g} s per side")
        direct_load = load.throughput(*direct, upstream.pid, **wrk)  # type: ignore[arg-type]
        gateway_load = load.throughput(*via, gateway.pid, **wrk)  # type: ignore[arg-type]
        floor_load = load.throughput(*via_floor, floor.pid, **wrk)  # type: ignore[arg-type]

        _step(f"{config.slow_streams} concurrent slow streams")
        streams = slow_streams.run(
            gateway_port, "/anthropic/v1/messages", gateway_headers, gateway.pid,
            streams=config.slow_streams, events=config.slow_stream_events, gap_ms=config.slow_stream_gap_ms,
        )  # fmt: skip

        _step(f"soak: {config.soak_requests:,} requests")
        soak = load.soak(
            *via, gateway.pid, requests=config.soak_requests, connections=config.connections,
            threads=config.wrk_threads, sample_s=config.soak_sample_s,
        )  # fmt: skip
    return report.Results(
        config=dataclasses.asdict(config),
        direct_ms=direct_ms,
        gateway_ms=gateway_ms,
        direct_first_byte_ms=direct_fb,
        gateway_first_byte_ms=gateway_fb,
        download_rss_mb=(rss_before, rss_after),
        direct_load=direct_load,
        gateway_load=gateway_load,
        slow_streams=streams,
        soak=soak,
        cold_start=None,
        load_average=(load_average_start, []),
        bedrock_ms=bedrock_ms,
        bedrock_first_byte_ms=bedrock_fb,
        team_budgets_ms=team_ms,
        floor_ms=floor_ms,
        floor_first_byte_ms=floor_fb,
        floor_load=floor_load,
    )


def main() -> int:
    config = BenchConfig.from_env()
    processes.raise_fd_limit()
    started = time.monotonic()
    results = measure_serving(config, list(os.getloadavg()))
    _step(f"cold start ({config.cold_start_runs} runs) and size: sam build")
    cold = cold_start.measure(config.cold_start_runs, skip_arm64=config.quick)
    _step(f"first answer after start ({config.cold_start_runs} runs)")
    first = cold_start.measure_first_answer_of_a_build(config.cold_start_runs)
    _step(f"memory sizes ({config.memory_size_runs} runs per size): the streaming door at Lambda's CPU shares")
    sizes = memory_sizes.measure(config.memory_size_runs, config.memory_size_requests)
    results = dataclasses.replace(
        results,
        cold_start=cold,
        first_answer=first,
        memory_sizes=sizes,
        load_average=(results.load_average[0], list(os.getloadavg())),
    )
    print(report.markdown(results))
    report.write_json(results, RESULTS)
    _step(f"done in {time.monotonic() - started:.0f} s; results in {RESULTS.relative_to(ROOT)}")
    return 0 if cold is not None else 1


if __name__ == "__main__":
    sys.exit(main())
