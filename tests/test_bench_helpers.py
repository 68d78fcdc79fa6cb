"""The bench's pure helpers: reading wrk's report, its script, the soak's flatness verdict, run.sh's flags.

The numbers themselves are only measured by `make bench`; these check that what it reports is read correctly.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from bench import fast_upstream, load, memory_sizes, processes

WRK_REPORT = """Running 15s test @ http://127.0.0.1:1234/anthropic/v1/messages
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    10.26ms  448.45us   1.02s    76.00%
  Latency Distribution
     50%  812.00us
     75%    1.31ms
     90%    2.05ms
     99%    1.20s
  45000 requests in 15.00s, 29.07MB read
  Socket errors: connect 0, read 2, write 1, timeout 4
  Non-2xx or 3xx responses: 7
Requests/sec:   3000.00
"""


def test_wrk_report_is_read_with_units_and_errors() -> None:
    result = load.parse(WRK_REPORT, cpu_seconds=4.5)
    assert (result.requests, result.seconds, result.requests_per_s) == (45000, 15.0, 3000.0)
    assert (result.non_2xx, result.socket_errors, result.timeouts) == (7, 7, 4)
    assert (result.p50_ms, result.p99_ms) == (0.812, 1200.0)
    assert result.cpu_ms_per_request == 0.1


def test_wrk_report_without_errors_counts_none() -> None:
    clean = "\n".join(line for line in WRK_REPORT.splitlines() if "errors" not in line and "Non-2xx" not in line)
    result = load.parse(clean, cpu_seconds=None)
    assert (result.non_2xx, result.socket_errors, result.cpu_ms_per_request) == (0, 0, None)


def test_wrk_script_quotes_header_values_and_stops_after_its_share() -> None:
    script = load.lua_script({"x-api-key": 'sk-"quoted"\\'}, stop_after=500)
    assert 'wrk.headers["x-api-key"] = "sk-\\"quoted\\"\\\\"' in script
    assert "responses == 500" in script and load.DONE in script
    assert "function response" not in load.lua_script({})  # a response callback costs wrk: only for the soak


def test_soak_is_flat_unless_the_second_half_climbs() -> None:
    steady = [100.0, 140.0, 141.0, 140.5, 142.0, 141.0, 139.0]
    climbing = [100.0, 140.0, 150.0, 160.0, 170.0, 180.0, 120.0]
    assert load.SoakResult(load.parse(WRK_REPORT, None), steady, [10, 50, 52, 50, 51, 50, 10]).rss_flat
    assert not load.SoakResult(load.parse(WRK_REPORT, None), climbing, [10, 50, 60, 70, 80, 90, 10]).fds_flat


def test_gateway_is_started_with_the_streaming_doors_uvicorn_flags(tmp_path: Path) -> None:
    args = processes.uvicorn_args(8123)
    assert args[0] == "-c" and "from uvicorn.main import main" in args[1]  # run.sh's launcher
    assert args[2:6] == ["--host", "127.0.0.1", "--port", "8123"]
    assert "anthropic_gateway.app:app" in args and "--no-access-log" in args
    assert args.count("--port") == 1 and args.count("--host") == 1
    run_sh = tmp_path / "run.sh"
    run_sh.write_text(
        '# exec python3 -m uvicorn --bad\nexec python3 -m uvicorn --port="$P" \\\n    --http httptools app:app\n'
    )
    assert processes.uvicorn_args(1, run_sh) == ["-m", "uvicorn", "--host", "127.0.0.1", "--port", "1", "--http",
                                                 "httptools", "app:app"]  # fmt: skip
    floor = processes.uvicorn_args(8123, app="bench.floor_relay:app")  # the floor relay: same server, same flags
    assert floor == ["-m", "uvicorn", *args[2:-1], "bench.floor_relay:app"] and args[-1] == "anthropic_gateway.app:app"


def test_fast_upstream_streams_anthropics_event_order() -> None:
    events = b"".join(fast_upstream.sse_events(3)).decode()
    names = [line.removeprefix("event: ") for line in events.splitlines() if line.startswith("event: ")]
    assert names == ["message_start", "content_block_start", "ping", *["content_block_delta"] * 3,
                     "content_block_stop", "message_delta", "message_stop"]  # fmt: skip


def test_fast_upstream_answers_keep_alive_requests_in_order() -> None:
    async def exchange() -> bytes:
        server = await asyncio.get_running_loop().create_server(fast_upstream._Connection, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        body = b'{"model":"m"}'
        request = b"POST /v1/messages HTTP/1.1\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)
        writer.write(request + b"GET /nowhere HTTP/1.1\r\n\r\n")  # pipelined: answered one after the other
        expected = len(fast_upstream.MESSAGE_RESPONSE) + len(fast_upstream.NOT_FOUND)
        received = await reader.readexactly(expected)
        writer.close()
        server.close()
        return received

    assert asyncio.run(exchange()) == fast_upstream.MESSAGE_RESPONSE + fast_upstream.NOT_FOUND


def test_memory_sizes_report_shares_and_lambda_duration() -> None:
    """The memory bench's table: each size's CPU share of a full vCPU (1,769 MB), and a stream billed for the
    upstream's time plus what the gateway added, in GB-seconds of the size."""
    size = memory_sizes.SizeResult(
        memory_mb=512, cpu_share=512 / 1769, ready_s=[2.0, 2.2, 1.8], first_answer_s=[0.9], cpu_ms_per_request=1.5,
        first_byte_ms=2.3, added_ms_per_stream=20.0, throttled_periods=86, rss_mb=73.0,
    )  # fmt: skip
    assert size.gb_seconds_per_stream(20) == 0.5 * 20.02
    result = memory_sizes.MemorySizesResult(5, 200, 1095.0, 2004.0, [size], ([1.0, 1.0, 1.0], [2.0, 2.0, 2.0]))
    row = next(memory_sizes.rows(result))
    assert row[:4] == ["512 MB", "28.9%", "2,000 ms", "900 ms"]
    assert row[-1] == "$13 / $133 / $800"  # 0.5 GB x 2.02 / 20.02 / 120.02 s at the arm64 GB-second price
    assert "512 MB 86" in memory_sizes.markdown(result)
