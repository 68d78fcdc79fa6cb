"""The README's benchmark table (markdown) and the same results as JSON for later steps to read."""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
from pathlib import Path
from typing import Any

from bench.cold_start import COLD_START_TARGET_S, SIZE_TARGET_MB, ColdStartResult, FirstAnswerResult
from bench.latency import percentile
from bench.load import SoakResult, WrkResult
from bench.memory_sizes import MemorySizesResult
from bench.memory_sizes import markdown as memory_sizes_markdown
from bench.slow_streams import SlowStreamsResult

MB = 1024 * 1024
# issue 11's bar
ADDED_P50_MS, ADDED_P99_MS, ADDED_FIRST_BYTE_MS = 0.3, 1.0, 0.4
REQUESTS_PER_S, CPU_MS_PER_REQUEST = 3000, 0.3
SLOW_STREAMS_RSS_MB, DOWNLOAD_RSS_MB = 50, 10

Row = tuple[str, str, str, str, str, bool | None]  # measure, direct, gateway, added, target, met


@dataclasses.dataclass(frozen=True)
class Results:
    config: dict[str, Any]
    direct_ms: list[float]
    gateway_ms: list[float]
    direct_first_byte_ms: list[float]
    gateway_first_byte_ms: list[float]
    download_rss_mb: tuple[float, float]  # before, after
    direct_load: WrkResult
    gateway_load: WrkResult
    slow_streams: SlowStreamsResult
    soak: SoakResult
    cold_start: ColdStartResult | None
    load_average: tuple[list[float], list[float]]  # 1/5/15-minute load, at the start and at the end
    # Through the Bedrock path (a ["bedrock"] key: model rewrite + SigV4) to the same fast upstream; empty: not run.
    bedrock_ms: list[float] = dataclasses.field(default_factory=list)
    bedrock_first_byte_ms: list[float] = dataclasses.field(default_factory=list)
    # Through a key of a team and of a user, both with a budget (issue 19: one transaction each way, whatever
    # the number of budgets); empty: not run.
    team_budgets_ms: list[float] = dataclasses.field(default_factory=list)
    # Through the floor relay (bench/floor_relay.py), to see what the gateway adds above a bare Python relay.
    floor_ms: list[float] = dataclasses.field(default_factory=list)
    floor_first_byte_ms: list[float] = dataclasses.field(default_factory=list)
    floor_load: WrkResult | None = None
    # The streaming door at Lambda's CPU share per memory size (bench/memory_sizes.py); None: not measured here.
    memory_sizes: MemorySizesResult | None = None
    # The streaming door from spawn to ready and to its first pass-through answer (None: not run).
    first_answer: FirstAnswerResult | None = None

    def added(self) -> dict[str, float]:
        p50 = statistics.median
        return {
            "p50_ms": p50(self.gateway_ms) - p50(self.direct_ms),
            "p99_ms": percentile(self.gateway_ms, 0.99) - percentile(self.direct_ms, 0.99),
            "first_byte_p50_ms": p50(self.gateway_first_byte_ms) - p50(self.direct_first_byte_ms),
            "first_byte_p99_ms": percentile(self.gateway_first_byte_ms, 0.99)
            - percentile(self.direct_first_byte_ms, 0.99),
        }


def _ms(value: float) -> str:
    return f"{value:.2f} ms"


def _latency_rows(r: Results) -> list[Row]:
    added = r.added()
    rows: list[Row] = []
    for name, direct, gateway, key, target in (
        ("Messages (non-streamed, concurrency 1), p50", r.direct_ms, r.gateway_ms, "p50_ms", ADDED_P50_MS),
        ("Messages, p99", r.direct_ms, r.gateway_ms, "p99_ms", ADDED_P99_MS),
        ("Stream time to first byte, p50", r.direct_first_byte_ms, r.gateway_first_byte_ms, "first_byte_p50_ms",
         ADDED_FIRST_BYTE_MS),
        ("Stream time to first byte, p99", r.direct_first_byte_ms, r.gateway_first_byte_ms, "first_byte_p99_ms",
         None),
    ):  # fmt: skip
        fraction = 0.5 if "p50" in key else 0.99
        rows.append(
            (
                name,
                _ms(percentile(direct, fraction)),
                _ms(percentile(gateway, fraction)),
                f"**{added[key]:+.2f} ms**" if target else f"{added[key]:+.2f} ms",
                f"≤ +{target:g} ms" if target else "",
                added[key] <= target if target else None,
            )
        )
    return rows + _bedrock_rows(r)


def _bedrock_rows(r: Results) -> list[Row]:
    """Added latency and stream first byte through the Bedrock path (the signing and rewrite cost) and through the
    floor relay (a Python relay's own cost): no target, for comparison."""
    rows: list[Row] = []
    for name, direct, via in (
        ("Messages through the Bedrock path (SigV4 + model rewrite), p50", r.direct_ms, r.bedrock_ms),
        ("Stream time to first byte through the Bedrock path, p50", r.direct_first_byte_ms, r.bedrock_first_byte_ms),
        ("Messages through a key of a budgeted team and a budgeted user (admission and settle one transaction "
         "each), p50", r.direct_ms, r.team_budgets_ms),
        ("Floor: messages through a bare ASGI relay (same uvicorn, same upstream client), p50", r.direct_ms,
         r.floor_ms),
        ("Floor: stream time to first byte through that relay, p50", r.direct_first_byte_ms, r.floor_first_byte_ms),
    ):  # fmt: skip
        if via:
            added = statistics.median(via) - statistics.median(direct)
            rows.append(
                (name, _ms(statistics.median(direct)), _ms(statistics.median(via)), f"{added:+.2f} ms", "", None)
            )
    return rows


def _load_rows(r: Results) -> list[Row]:
    d, g = r.direct_load, r.gateway_load
    connections, seconds = r.config["connections"], r.config["duration_s"]
    errors_g = g.non_2xx + g.socket_errors
    return [
        (f"Throughput, {connections} connections, {seconds:g} s (wrk; all on the same {os.cpu_count()} cores)",
         f"{d.requests_per_s:,.0f} req/s", f"**{g.requests_per_s:,.0f} req/s**", "",
         f"≥ {REQUESTS_PER_S:,} req/s", g.requests_per_s >= REQUESTS_PER_S),
        ("… errors under load (non-2xx / socket)", f"{d.non_2xx} / {d.socket_errors}",
         f"{g.non_2xx} / {g.socket_errors}", "", "0", errors_g == 0),
        ("… latency under load, p50 / p99 (wrk)", f"{d.p50_ms:.2f} / {d.p99_ms:.2f} ms",
         f"{g.p50_ms:.2f} / {g.p99_ms:.2f} ms", "", "", None),
        ("… CPU per request (process's utime + stime / requests)", _ms(d.cpu_ms_per_request or 0),
         f"**{_ms(g.cpu_ms_per_request or 0)}**", "", f"≤ {CPU_MS_PER_REQUEST:g} ms",
         (g.cpu_ms_per_request or 0) <= CPU_MS_PER_REQUEST),
        *_floor_load_rows(r),
    ]  # fmt: skip


def _floor_load_rows(r: Results) -> list[Row]:
    d, f = r.direct_load, r.floor_load
    if f is None:
        return []
    return [
        ("Floor: throughput through the bare ASGI relay, same wrk run", f"{d.requests_per_s:,.0f} req/s",
         f"{f.requests_per_s:,.0f} req/s", "", "", None),
        ("… its CPU per request (errors: non-2xx / socket)", _ms(d.cpu_ms_per_request or 0),
         f"{_ms(f.cpu_ms_per_request or 0)} ({f.non_2xx} / {f.socket_errors})", "", "", None),
    ]  # fmt: skip


def _memory_rows(r: Results) -> list[Row]:
    before, after = r.download_rss_mb
    s, soak = r.slow_streams, r.soak
    gap_s = r.config["slow_stream_gap_ms"] / 1000
    asked = r.config["soak_requests"]
    short = f" of {asked:,} (wrk's time limit came first)" if soak.load.requests < asked else ""
    rows: list[Row] = [
        ("Gateway RSS around a 50 MB streamed download", "", f"{before:.1f} → {after:.1f} MB",
         f"**{after - before:+.1f} MB**", f"< {DOWNLOAD_RSS_MB} MB", after - before < DOWNLOAD_RSS_MB),
        (f"{s.streams:,} concurrent slow streams (an event every {gap_s:g} s, {s.seconds:.0f} s): completed", "",
         f"{s.completed:,} / {s.streams:,}" + "".join(f", {n} {why}" for why, n in s.failures.items()), "", "all",
         s.completed == s.streams),
        ("… gateway RSS before → peak → after", "",
         f"{s.rss_before_mb:.1f} → {s.rss_peak_mb:.1f} → {s.rss_after_mb:.1f} MB", f"**{s.rss_growth_mb:+.1f} MB**",
         f"< {SLOW_STREAMS_RSS_MB} MB", s.rss_growth_mb < SLOW_STREAMS_RSS_MB),
        (f"Soak, {soak.load.requests:,}{short} requests ({soak.load.requests_per_s:,.0f} req/s, "
         f"{soak.load.non_2xx + soak.load.socket_errors} errors): gateway RSS start / max / end", "",
         f"{soak.rss_mb[0]:.1f} / {max(soak.rss_mb):.1f} / {soak.rss_mb[-1]:.1f} MB",
         "flat" if soak.rss_flat else "**growing**", "flat", soak.rss_flat),
        ("… open fds start / max / end", "", f"{soak.fds[0]} / {max(soak.fds)} / {soak.fds[-1]}",
         "flat" if soak.fds_flat else "**growing**", "flat", soak.fds_flat),
    ]  # fmt: skip
    return rows


def _cold_start_rows(c: ColdStartResult | None) -> list[Row]:
    if c is None:
        return [("Cold start and size", "", "sam build failed", "", "", False)]
    cold = statistics.median(c.cold_start_s)
    arch = "arm64" if c.arm_unzipped is not None else "x86_64"
    return [
        (f"Cold start without AWS (no credentials: the warm-up finds none), spawn `run.sh` to first `/health` 200 "
         f"(median of {c.runs})", "", f"{cold * 1000:.0f} ms", "",
         f"≤ {COLD_START_TARGET_S:g} s", cold <= COLD_START_TARGET_S),
        ("… of which importing the app", "", f"{statistics.median(c.import_s) * 1000:.0f} ms", "", "", None),
        (f"Deployment size, layer + functions, unzipped ({arch})", "", f"{c.deployed_unzipped / MB:.1f} MB", "",
         f"≤ {SIZE_TARGET_MB:g} MB", c.deployed_unzipped / MB <= SIZE_TARGET_MB),
    ]  # fmt: skip


def _first_answer_rows(f: FirstAnswerResult | None) -> list[Row]:
    if f is None:
        return []
    median = statistics.median
    return [
        (f"Start: spawn `run.sh` to ready, secrets read and AWS clients made (median of {f.runs})", "",
         f"{median(f.ready_s) * 1000:.0f} ms", "", "", None),
        ("… to its first pass-through answer, sent at ready", "", f"{median(f.first_answer_s) * 1000:.0f} ms", "", "",
         None),
        ("… the process's CPU time until ready / until that answer", "",
         f"{median(f.ready_cpu_s) * 1000:.0f} / {median(f.first_answer_cpu_s) * 1000:.0f} ms", "", "", None),
    ]  # fmt: skip


def rows(r: Results) -> list[Row]:
    cold = _cold_start_rows(r.cold_start) + _first_answer_rows(r.first_answer)
    return _latency_rows(r) + _load_rows(r) + _memory_rows(r) + cold


def markdown(r: Results) -> str:
    lines = [
        "| Measure | Direct | Through gateway | Added | Target | Met |",
        "| --- | ---: | ---: | ---: | --- | --- |",
    ]
    for name, direct, gateway, added, target, met in rows(r):
        verdict = "" if met is None else ("yes" if met else "NO")
        lines.append(f"| {name} | {direct} | {gateway} | {added} | {target} | {verdict} |")
    start, end = r.load_average
    lines.append("")
    lines.append(
        f"Load average (1/5/15 min) at start {' '.join(f'{x:.2f}' for x in start)}, at end "
        f"{' '.join(f'{x:.2f}' for x in end)}; the gateway, the upstream, wrk and the client share the machine's cores."
    )
    if r.memory_sizes is not None:
        lines += ["", memory_sizes_markdown(r.memory_sizes)]
    return "\n".join(lines)


def write_json(r: Results, path: Path) -> None:
    s, soak = r.slow_streams, r.soak
    data = {
        "config": r.config,
        "load_average": {"start": r.load_average[0], "end": r.load_average[1]},
        "added": r.added(),
        "latency_ms": {
            "direct": {"p50": statistics.median(r.direct_ms), "p99": percentile(r.direct_ms, 0.99)},
            "gateway": {"p50": statistics.median(r.gateway_ms), "p99": percentile(r.gateway_ms, 0.99)},
            "direct_first_byte": {
                "p50": statistics.median(r.direct_first_byte_ms),
                "p99": percentile(r.direct_first_byte_ms, 0.99),
            },
            "gateway_first_byte": {
                "p50": statistics.median(r.gateway_first_byte_ms),
                "p99": percentile(r.gateway_first_byte_ms, 0.99),
            },
        },
        "download_rss_mb": {"before": r.download_rss_mb[0], "after": r.download_rss_mb[1]},
        "throughput": {
            "direct": dataclasses.asdict(r.direct_load),
            "gateway": dataclasses.asdict(r.gateway_load),
            "floor": dataclasses.asdict(r.floor_load) if r.floor_load else None,
        },
        "slow_streams": dataclasses.asdict(s) | {"rss_growth_mb": s.rss_growth_mb},
        "soak": dataclasses.asdict(soak) | {"rss_flat": soak.rss_flat, "fds_flat": soak.fds_flat},
        "cold_start": dataclasses.asdict(r.cold_start) if r.cold_start else None,
        "memory_sizes": dataclasses.asdict(r.memory_sizes) if r.memory_sizes else None,
        "first_answer": dataclasses.asdict(r.first_answer) if r.first_answer else None,
        "met": {name: met for name, *_, met in rows(r) if met is not None},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
