"""Cheap refusals (issue 9): unknown well-formed keys are refused without a DynamoDB read each."""

from __future__ import annotations

import collections

import httpx

from anthropic_gateway import keys


def test_two_thousand_unknown_keys_cost_a_few_reads_not_two_thousand(gateway, aws_calls):
    with httpx.Client(base_url=gateway.url + "/anthropic", timeout=30) as client:
        for _ in range(2000):
            response = client.get("/v1/models", headers={"x-api-key": keys.new_key()})
            assert response.status_code == 401
            assert response.json()["error"]["type"] == "authentication_error"
    calls = collections.Counter(operation for operation, _ in aws_calls)
    # One GetItem and one directory Query per KEY_CACHE_TTL (0.5 s in the tests) at most.
    assert calls["GetItem"] < 100, calls
    assert calls["Query"] <= calls["GetItem"], calls


def test_a_key_created_during_a_flood_of_unknown_keys_works_at_once(gateway, make_key):
    with httpx.Client(base_url=gateway.url + "/anthropic", timeout=30) as client:
        for _ in range(keys.KeyDirectory.FLOOD_MISSES + 5):  # the directory answers for unknown keys now
            assert client.get("/v1/models", headers={"x-api-key": keys.new_key()}).status_code == 401
        key = make_key()
        assert client.get("/v1/models", headers={"x-api-key": key}).status_code == 200
