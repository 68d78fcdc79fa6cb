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

from anthropic_gateway import keys

BURST = 32
MESSAGE = {"model": "claude-haiku-4-5", "max_tokens": 8, "messages": [{"role": "user", "content": "Hello"}]}


@pytest.fixture
def gateway(gateway_with):
    """A gateway of its own that keeps key records for a minute: the session's keeps them 0.5 s, and a burst that a
    busy machine spreads over more than that reads the key again (a cache expiring, not the reads this is about)."""
    return gateway_with(key_cache_ttl=60)


@pytest.fixture
def cold(gateway) -> Iterator[None]:
    """The gateway's process as a new instance finds it before its warm-up: no secret, no key record in hand."""
    gateway.app.runtime.secrets.forget()
    gateway.app.runtime.key_cache.invalidate()
    yield
    gateway.app.runtime.secrets.forget()


async def _burst(url: str, key: str) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=httpx.Limits(max_connections=BURST)) as http:
        headers = {"x-api-key": key}
        return await asyncio.gather(
            *(http.post("/anthropic/v1/messages", json=MESSAGE, headers=headers) for _ in range(BURST))
        )


@pytest.fixture
def new_key(gateway, make_key) -> str:
    key = make_key()
    # Made through this gateway: forget it, as another instance would not know it.
    gateway.app.runtime.key_cache.invalidate()
    return key


def test_a_burst_on_a_cold_instance_reads_each_secret_and_the_key_once(gateway, new_key, cold, aws_calls):
    responses = asyncio.run(_burst(gateway.url, new_key))

    assert [response.status_code for response in responses] == [200] * BURST, responses[0].text
    # Counted by what they read: other tests' leftover background work may use the table meanwhile.
    secret_reads = Counter(body for operation, body in aws_calls if operation == "GetSecretValue")
    assert len(secret_reads) == 2 and set(secret_reads.values()) == {1}  # the master and upstream keys, once each
    token = keys.hash_key(new_key).encode()
    assert sum(operation == "GetItem" and token in body for operation, body in aws_calls) == 1  # the key record
