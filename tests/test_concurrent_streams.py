"""Many streams at once through ONE gateway process: what Lambda Managed Instances asks of the streaming door.

On Managed Instances one execution environment (one uvicorn process) serves up to MaxConcurrencyPerEnvironment
invocations at the same time, where on-demand Lambda gives each its own process. The tests' gateway is one uvicorn
process: here it holds about 140 streams open at once for four keys, each key's limit refuses exactly what it must
while the others' streams are still open, and once they end every counter is exact.

The fake upstream holds each stream after its first event (x-fake-hold) until the test releases it, so "open at
the same time" is a fact the test waits on (each client has read message_start), not a timing.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import pytest

from anthropic_gateway import governance, keys, pricing
from anthropic_gateway.usage import Usage

# How the gateways price models: UNKNOWN_MODEL_RATE and BEDROCK_MODEL_IDS as they are by default.
UNKNOWN_MODELS = pricing.UnknownModels("max", "")

MODEL = "claude-haiku-4-5"
USAGE = {"input_tokens": 120, "output_tokens": 30, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
BODY = {"model": MODEL, "max_tokens": 400, "stream": True, "messages": [{"role": "user", "content": "Hi"}]}
GATE = "concurrent-streams"


@pytest.fixture
def frozen_clock(monkeypatch):
    """Rate windows read keys.utcnow: one minute for the whole test, so the rpm limit counts every request."""
    now = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(days=1)
    monkeypatch.setattr(keys, "utcnow", lambda: now)


async def _stream(
    http: httpx.AsyncClient, key: str, gate: str, opened: asyncio.Queue[str]
) -> tuple[int, str, list[str]]:
    """One streamed request: (status, error type or "", the SSE event names it received).

    Puts the key on `opened` once message_start has arrived: from then on the stream is admitted and held open.
    """
    headers = {"x-api-key": key, "anthropic-version": "2023-06-01", "x-fake-hold": gate,
               "x-fake-usage": json.dumps(USAGE)}  # fmt: skip
    async with http.stream("POST", "/anthropic/v1/messages", json=BODY, headers=headers) as response:
        if response.status_code != 200:
            return response.status_code, json.loads(await response.aread())["error"]["type"], []
        events: list[str] = []
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                events.append(line.removeprefix("event: "))
                if events == ["message_start"]:
                    opened.put_nowait(key)
        return response.status_code, "", events


async def _hold(
    gateway_url: str, fake_upstream, gate: str, streams: dict[str, tuple[str, int]], admitted: int
) -> tuple[dict[str, list[tuple[int, str, list[str]]]], dict[str, int]]:
    """Send every stream at once; once `admitted` of them are open and held and all the others answered, release
    them. Returns each name's outcomes and how many of its streams were open at that moment."""
    async with asyncio.timeout(120):  # bounded: a request neither admitted nor refused fails the test here
        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=gateway_url, timeout=60, limits=limits) as http:
            opened: asyncio.Queue[str] = asyncio.Queue()
            tasks = {
                name: [asyncio.create_task(_stream(http, key, gate, opened)) for _ in range(count)]
                for name, (key, count) in streams.items()
            }
            open_now = dict.fromkeys(streams, 0)
            for _ in range(admitted):
                key = await opened.get()
                open_now[next(name for name, (k, _) in streams.items() if k == key)] += 1
            # The admitted streams are held; the others are refused, and their answers end their tasks.
            pending: set[asyncio.Task[tuple[int, str, list[str]]]] = {t for ts in tasks.values() for t in ts}
            while len(pending) > admitted:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    assert task.result()[0] != 200, "a stream ended while the upstream held it"
            fake_upstream.release(gate)
            return {name: list(await asyncio.gather(*ts)) for name, ts in tasks.items()}, open_now


def test_one_process_holds_many_streams_with_every_keys_limits_and_exact_counters(
    gateway, admin, make_key, fake_upstream, frozen_clock
):
    # What one request may reserve; the budget key can hold exactly six of them at once (admission takes a
    # reservation while headroom is left, so the sixth overdraws by less than one estimate; docs/keys.md).
    estimate = governance.estimate_cost(BODY, len(json.dumps(BODY).encode()), UNKNOWN_MODELS)
    keys_by_name = {
        "unlimited": make_key(),
        "parallel": make_key(max_parallel_requests=20),
        "budget": make_key(max_budget=float(estimate * Decimal("5.5"))),
        "rpm": make_key(rpm_limit=15),
    }
    sent = {"unlimited": 100, "parallel": 30, "budget": 10, "rpm": 25}
    admitted = {"unlimited": 100, "parallel": 20, "budget": 6, "rpm": 15}
    refusal = {
        "parallel": (429, "rate_limit_error"),
        "budget": (402, "billing_error"),
        "rpm": (429, "rate_limit_error"),
    }

    streams = {name: (keys_by_name[name], count) for name, count in sent.items()}
    results, open_at_peak = asyncio.run(
        _hold(gateway.url, fake_upstream, "many-streams", streams, sum(admitted.values()))
    )
    gateway.drain()

    # 141 streams were open in this one process at the same moment, each key at exactly its limit.
    assert open_at_peak == admitted
    for name, outcomes in results.items():
        completed = [events for status, _, events in outcomes if status == 200]
        assert len(completed) == admitted[name], name
        for events in completed:
            assert events[0] == "message_start" and events[-1] == "message_stop", events
        refused = [(status, error) for status, error, _ in outcomes if status != 200]
        assert refused == [refusal[name]] * (sent[name] - admitted[name]) if name in refusal else not refused, name
    assert len(fake_upstream.requests) == sum(admitted.values())  # a refused request never reached the upstream

    # Exact counters: each admitted stream once, at its reported usage; nothing still reserved.
    cost = pricing.cost_usd(MODEL, Usage(**USAGE), UNKNOWN_MODELS)
    for name, key in keys_by_name.items():
        info = admin.get("/key/info", params={"key": keys.token_of(key)}).json()["info"]
        count = admitted[name]
        usage = (info["requests"], info["input_tokens"], info["output_tokens"])
        assert usage == (count, count * USAGE["input_tokens"], count * USAGE["output_tokens"]), name
        assert info["spend"] == float(cost * count) and info["reserved_spend"] == 0, (name, info)

    # Every parallel slot came back: the parallel key holds its whole limit open at once again.
    again, open_again = asyncio.run(
        _hold(gateway.url, fake_upstream, "slots-again", {"parallel": (keys_by_name["parallel"], 20)}, 20)
    )
    assert open_again == {"parallel": 20} and [status for status, _, _ in again["parallel"]] == [200] * 20
    gateway.drain()
