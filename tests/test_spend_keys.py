"""`GET /spend/keys`: the keys that spent the most (master key), from the counters on the key records."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal

import httpx

from anthropic_gateway import key_spend, keys, ledger, money, pricing
from anthropic_gateway.storage import holds, key_records
from anthropic_gateway.storage.key_records import KeyRecord
from anthropic_gateway.usage import Usage

# How the gateways price models: UNKNOWN_MODEL_RATE and BEDROCK_MODEL_IDS as they are by default.
UNKNOWN_MODELS = pricing.UnknownModels("max", "")

HELLO = [{"role": "user", "content": "Hello"}]


def spend_of(admin: httpx.Client, key: str) -> float:
    return admin.get("/key/info", params={"key": key}).json()["info"]["total_spend"]


def test_top_keys_are_ordered_by_total_spend(gateway, admin, make_key):
    unique = uuid.uuid4().hex[:8]
    big, small, idle = (make_key(key_alias=f"{name}-{unique}") for name in ("big", "small", "idle"))
    for key, input_tokens in ((big, 30_000_000), (small, 20_000_000)):  # more than any other test spends
        response = httpx.post(
            gateway.url + "/anthropic/v1/messages",
            headers={
                "x-api-key": key,
                "x-fake-usage": json.dumps({"input_tokens": input_tokens, "output_tokens": 100}),
            },
            json={"model": "claude-sonnet-4-5", "max_tokens": 8, "messages": HELLO},
            timeout=30,
        )
        assert response.status_code == 200, response.text
    gateway.drain()  # spend is written after the response
    spent = {key: spend_of(admin, key) for key in (big, small)}
    for key, input_tokens in ((big, 30_000_000), (small, 20_000_000)):
        cost = pricing.cost_usd(
            "claude-sonnet-4-5", Usage(input_tokens=input_tokens, output_tokens=100), UNKNOWN_MODELS
        )
        assert Decimal(repr(spent[key])) == cost

    response = admin.get("/spend/keys", params={"limit": 2})

    assert response.status_code == 200, response.text
    top = response.json()
    assert [row["key_alias"] for row in top] == [f"big-{unique}", f"small-{unique}"]
    first = top[0]
    assert first["total_spend"] == spent[big] and first["spend"] == spent[big] and first["requests"] == 1
    assert first["input_tokens"] == 30_000_000 and first["output_tokens"] == 100 and first["total_tokens"] == 30_000_100
    assert first["key_name"] == f"sk-...{big[-4:]}" and len(first["token"]) == 64
    assert big not in response.text and small not in response.text  # hashes, never keys
    everyone = admin.get("/spend/keys", params={"limit": 100}).json()
    assert f"idle-{unique}" in [row["key_alias"] for row in everyone] or len(everyone) == 100
    spends = [row["total_spend"] for row in everyone]
    assert spends == sorted(spends, reverse=True)
    assert spend_of(admin, idle) == 0


def test_top_keys_are_answered_exactly(admin, make_key):
    """Money leaves as exact plain JSON numbers, written from Decimal: no binary float, no exponent."""
    unique = uuid.uuid4().hex[:8]
    key = make_key(key_alias=f"exact-{unique}")
    record = key_records.load(keys.hash_key(key))
    for amount in ("0.1", "0.2", "1e-7"):  # as the ledger writes each request's spend
        write = ledger.counters_write([(f"KEY#{record.key_id}", "KEY", {"total_spend": Decimal(amount)}, True)])
        assert write.apply() is holds.Settled.APPLIED

    response = admin.get("/spend/keys", params={"limit": 100})
    assert response.status_code == 200
    (row,) = [row for row in money.loads(response.content) if row["key_alias"] == f"exact-{unique}"]
    assert row["total_spend"] == Decimal("0.3000001") and row["spend"] == 0
    assert '"total_spend":0.3000001,' in response.text


def test_top_keys_need_the_master_key(gateway, virtual_key):
    url = gateway.url + "/spend/keys"
    assert httpx.get(url).status_code == 401
    refused = httpx.get(url, headers={"x-api-key": virtual_key})
    assert refused.status_code == 403 and refused.json()["error"]["type"] == "permission_error"


def test_limit_is_bounded(admin):
    for limit in ("0", "101", "ten"):
        response = admin.get("/spend/keys", params={"limit": limit})
        assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error", limit


def test_ties_keep_the_newest_key_first():
    def record(name: str, spend: float, requests: int) -> KeyRecord:
        return KeyRecord(token=name * 64, key_name=name, total_spend=spend, requests=requests)

    newest_first = [record("a", 1.0, 1), record("b", 2.0, 1), record("c", 1.0, 5), record("d", 1.0, 1)]

    assert [row["key_name"] for row in key_spend.top_keys(newest_first, 10)] == ["b", "c", "a", "d"]
    assert len(key_spend.top_keys(newest_first, 2)) == 2
