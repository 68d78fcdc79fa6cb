"""A cold instance hit by a burst: concurrent requests that need the same secret or key record share one read.

Without that, 32 requests arriving together on a fresh process each read both secrets and the key record, queue
behind each other in the AWS worker threads, and on a slow network run into the request deadline (503) together.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from anthropic_gateway import keys, secrets, table

BURST = 32
MESSAGE = {"model": "claude-haiku-4-5", "max_tokens": 8, "messages": [{"role": "user", "content": "Hello"}]}


@pytest.fixture
def aws_calls() -> Iterator[Counter[str]]:
    """AWS operations the gateway makes from now on, by name (botocore's before-call events)."""
    calls: Counter[str] = Counter()

    def count(model, **_) -> None:
        calls[model.name] += 1

    clients = [secrets._provider().client, table.handle().meta.client]
    for client in clients:
        client.meta.events.register("before-call.*.*", count)
    yield calls
    for client in clients:
        client.meta.events.unregister("before-call.*.*", count)


@pytest.fixture
def cold(gateway) -> Iterator[None]:
    """The gateway's process as a new instance finds it: no secret and no key record in hand."""
    secrets.clear()
    keys.key_cache.invalidate()
    yield
    secrets.clear()


async def _burst(url: str, key: str) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=httpx.Limits(max_connections=BURST)) as http:
        headers = {"x-api-key": key}
        return await asyncio.gather(
            *(http.post("/anthropic/v1/messages", json=MESSAGE, headers=headers) for _ in range(BURST))
        )


def test_a_burst_on_a_cold_instance_reads_each_secret_and_the_key_once(gateway, make_key, cold, aws_calls):
    key = make_key()
    keys.key_cache.invalidate()  # made through this process: forget it, as another instance would not know it

    responses = asyncio.run(_burst(gateway.url, key))

    assert [response.status_code for response in responses] == [200] * BURST, responses[0].text
    assert aws_calls["GetSecretValue"] == 2  # the master key and the upstream key, once each
    assert aws_calls["GetItem"] == 1  # the key record
