"""Cheap refusals (issue 9): unknown well-formed keys are refused without a DynamoDB read each."""

from __future__ import annotations

import collections

import httpx
import pytest

from anthropic_gateway import keys


@pytest.fixture
def cache_ttl_5s(gateway_with):
    """A gateway whose KEY_CACHE_TTL is 5 s (the tests run with 0.5 s): a flood is 20 unknown keys within one TTL, so
    at 0.5 s a machine too busy to refuse 40 a second would not be flooded at all, and every key would be read."""
    return gateway_with(key_cache_ttl=5.0)


def test_two_thousand_unknown_keys_cost_a_few_reads_not_two_thousand(cache_ttl_5s, aws_calls):
    with httpx.Client(base_url=cache_ttl_5s.url + "/anthropic", timeout=30) as client:
        for _ in range(2000):
            response = client.get("/v1/models", headers={"x-api-key": keys.new_key()})
            assert response.status_code == 401
            assert response.json()["error"]["type"] == "authentication_error"
    calls = collections.Counter(operation for operation, _ in aws_calls)
    # One GetItem and one directory Query per KEY_CACHE_TTL at most.
    assert calls["GetItem"] < 100, calls
    assert calls["Query"] <= calls["GetItem"], calls


def test_a_key_created_during_a_flood_of_unknown_keys_works_at_once(gateway, make_key):
    with httpx.Client(base_url=gateway.url + "/anthropic", timeout=30) as client:
        for _ in range(keys.KeyDirectory.FLOOD_MISSES + 5):  # the directory answers for unknown keys now
            assert client.get("/v1/models", headers={"x-api-key": keys.new_key()}).status_code == 401
        key = make_key()
        assert client.get("/v1/models", headers={"x-api-key": key}).status_code == 200
