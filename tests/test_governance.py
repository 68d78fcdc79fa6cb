"""Key rules enforced on the pass-through, end to end: the real SDK through the running gateway.

Settle runs after the response (a background task), so tests that depend on recorded spend first drain the
gateway (`settled`): they await the accounting itself, never a time.
"""

from __future__ import annotations

import json
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import anthropic
import httpx
import pytest

from anthropic_gateway import governance, keys, pricing
from anthropic_gateway.auth import Principal
from anthropic_gateway.storage import holds, key_records, rates, table
from anthropic_gateway.usage import Usage

# How the gateways price models: UNKNOWN_MODEL_RATE and BEDROCK_MODEL_IDS as they are by default.
UNKNOWN_MODELS = pricing.UnknownModels("max", "")

HELLO = [{"role": "user", "content": "Hello"}]
MODEL = "claude-sonnet-4-5"


def usage_header(**usage: int) -> dict:
    return {"x-fake-usage": json.dumps(usage)}


def cost(model: str = MODEL, **usage: int) -> Decimal:
    return pricing.cost_usd(model, Usage(**usage), UNKNOWN_MODELS)


def sdk(gateway, key: str, **options) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url + "/anthropic", api_key=key, **{"max_retries": 0, **options})


def info_of(admin, key: str) -> dict:
    response = admin.get("/key/info", params={"key": keys.token_of(key)})
    assert response.status_code == 200, response.text
    return response.json()["info"]


def settled(gateway, admin, key: str, *, requests: int) -> dict:
    """The key's info once the gateway has accounted what it served: `requests` recorded, nothing reserved."""
    gateway.drain()
    info = info_of(admin, key)
    assert info["requests"] == requests and info["reserved_spend"] == 0, info
    return info


@pytest.fixture
def frozen_clock(monkeypatch):
    """Keys, budgets and rate windows all read keys.utcnow: pin it to the start of a minute, and move it by hand."""
    now = [datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(days=1)]
    monkeypatch.setattr(keys, "utcnow", lambda: now[0])
    return now


@pytest.fixture
def atomic_moto(monkeypatch):
    """Real DynamoDB applies each write to an item atomically; moto's threaded server does not (two conditional
    updates can interleave). Serialize its DynamoDB operations so concurrency tests test the gateway, not moto."""
    from moto.dynamodb.models import DynamoDBBackend

    lock = threading.RLock()
    for name in ("get_item", "put_item", "update_item", "delete_item", "transact_write_items", "query"):
        original = getattr(DynamoDBBackend, name)

        def locked(self, *args, _original=original, **kwargs):
            with lock:
                return _original(self, *args, **kwargs)

        monkeypatch.setattr(DynamoDBBackend, name, locked)


# -- spend --------------------------------------------------------------------------------------------------------


def test_spend_and_tokens_from_a_json_response(admin, gateway, make_key):
    key = make_key()
    usage = {
        "input_tokens": 1200,
        "output_tokens": 345,
        "cache_creation_input_tokens": 100,
        "cache_read_input_tokens": 50,
    }
    sdk(gateway, key).messages.create(model=MODEL, max_tokens=500, messages=HELLO, extra_headers=usage_header(**usage))

    info = settled(gateway, admin, key, requests=1)
    assert Decimal(repr(info["spend"])) == cost(**usage)
    assert info["total_spend"] == info["spend"]
    assert {name: info[name] for name in usage} == usage


def test_spend_from_a_stream(admin, gateway, make_key):
    key = make_key()
    with sdk(gateway, key).messages.stream(
        model=MODEL, max_tokens=500, messages=HELLO, extra_headers=usage_header(input_tokens=700, output_tokens=90)
    ) as stream:
        final = stream.get_final_message()
    assert final.usage.output_tokens == 90

    info = settled(gateway, admin, key, requests=1)
    assert Decimal(repr(info["spend"])) == cost(input_tokens=700, output_tokens=90)
    assert (info["input_tokens"], info["output_tokens"]) == (700, 90)


def test_a_stream_cut_off_by_the_client_is_billed_for_what_was_seen(admin, gateway, make_key):
    key = make_key()
    headers = {**usage_header(input_tokens=800, output_tokens=400), "x-fake-chunks": "30", "x-fake-delay-ms": "100"}
    with sdk(gateway, key).messages.stream(
        model=MODEL, max_tokens=500, messages=HELLO, extra_headers=headers
    ) as stream:
        next(iter(stream.text_stream))  # one delta, then the client goes away

    info = settled(gateway, admin, key, requests=1)
    # message_start reported the input and 1 output token; the final count never arrived.
    assert Decimal(repr(info["spend"])) == cost(input_tokens=800, output_tokens=1)


def test_keys_without_limits_cost_no_dynamodb_call_before_the_upstream(gateway, make_key, monkeypatch):
    key = make_key(models=["claude-haiku-4-5"], tags=["team:a"], metadata={"a": 1})
    record = key_records.load(keys.hash_key(key))
    assert not any(scope.governed for scope in governance.scopes(Principal(record)))

    def no_dynamodb(*args, **kwargs):
        raise AssertionError("admission touched DynamoDB")

    monkeypatch.setattr(governance, "_acquire", no_dynamodb)
    assert sdk(gateway, key).messages.create(model="claude-haiku-4-5", max_tokens=8, messages=HELLO).type == "message"


# -- models allowlist ---------------------------------------------------------------------------------------------


def test_models_allowlist(gateway, make_key, fake_upstream):
    client = sdk(gateway, make_key(models=["claude-haiku-4-5", "claude-opus-4-*"]))

    assert client.messages.create(model="claude-haiku-4-5", max_tokens=8, messages=HELLO).type == "message"
    assert client.messages.create(model="claude-haiku-4-5-20251001", max_tokens=8, messages=HELLO).type == "message"
    assert client.messages.create(model="claude-opus-4-5", max_tokens=8, messages=HELLO).type == "message"
    assert client.messages.count_tokens(model="claude-haiku-4-5", messages=HELLO).input_tokens > 0

    before = len(fake_upstream.requests)
    with pytest.raises(anthropic.PermissionDeniedError, match="claude-sonnet-4-5") as refused:
        client.messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=HELLO)
    assert refused.value.body["error"]["type"] == "permission_error"
    with pytest.raises(anthropic.PermissionDeniedError, match="claude-sonnet-4-5"):
        client.messages.count_tokens(model="claude-sonnet-4-5", messages=HELLO)
    with pytest.raises(anthropic.PermissionDeniedError):
        client.messages.stream(model="claude-sonnet-4-5", max_tokens=8, messages=HELLO).__enter__()
    assert len(fake_upstream.requests) == before


def test_every_model_in_a_batch_is_checked(gateway, make_key, fake_upstream):
    client = sdk(gateway, make_key(models=["claude-haiku-4-5"]))
    params = {"max_tokens": 8, "messages": HELLO}
    good = [{"custom_id": f"ok-{i}", "params": {"model": "claude-haiku-4-5", **params}} for i in range(3)]

    before = len(fake_upstream.requests)
    sneaky = [*good, {"custom_id": "bad", "params": {"model": "claude-opus-4-5", **params}}]
    with pytest.raises(anthropic.PermissionDeniedError, match=r"claude-opus-4-5.*requests\[3\]"):
        client.messages.batches.create(requests=sneaky)
    assert len(fake_upstream.requests) == before

    assert client.messages.batches.create(requests=good).processing_status in ("ended", "in_progress")


def test_unreadable_bodies_with_an_allowlist_are_refused(gateway, make_key, fake_upstream):
    with httpx.Client(base_url=gateway.url + "/anthropic", headers={"x-api-key": make_key(models=["a"])}) as http:
        nested = b"[" * 100_000 + b"]" * 100_000
        for body in (b"{not json", b'{"max_tokens": 5}', b'{"model": 7}', b'["claude-haiku-4-5"]', b"\xff\xfe", nested):
            response = http.post("/v1/messages", content=body, headers={"content-type": "application/json"})
            assert response.status_code == 400, body
            assert response.json()["error"]["type"] == "invalid_request_error"
        refused = http.post("/v1/messages/batches", json={"requests": "all of them"})
        assert refused.status_code == 400 and "requests" in refused.json()["error"]["message"]
    assert fake_upstream.requests == []

    # Without an allowlist the gateway does not read the body: the upstream judges it.
    with httpx.Client(base_url=gateway.url + "/anthropic", headers={"x-api-key": make_key()}) as http:
        response = http.post("/v1/messages", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400 and response.headers.get("request-id", "").startswith("req_")


# -- budget -------------------------------------------------------------------------------------------------------


def test_spent_budget_is_refused_with_402_before_the_upstream(admin, gateway, make_key, fake_upstream):
    one = cost(input_tokens=1000, output_tokens=100)
    key = make_key(max_budget=float(one * 2))
    client = sdk(gateway, key, max_retries=2)  # a 402 must not be retried by the SDK
    headers = usage_header(input_tokens=1000, output_tokens=100)

    for count in (1, 2):
        client.messages.create(model=MODEL, max_tokens=100, messages=HELLO, extra_headers=headers)
        settled(gateway, admin, key, requests=count)

    before = len(fake_upstream.requests)
    with pytest.raises(anthropic.APIStatusError, match=r"[Bb]udget") as refused:
        client.messages.create(model=MODEL, max_tokens=100, messages=HELLO, extra_headers=headers)
    assert refused.value.status_code == 402
    assert refused.value.body["error"]["type"] == "billing_error"
    assert len(fake_upstream.requests) == before
    # Every pass-through request counts against the spent budget, not only Messages.
    with pytest.raises(anthropic.APIStatusError) as listing:
        client.models.list()
    assert listing.value.status_code == 402 and len(fake_upstream.requests) == before

    info = info_of(admin, key)
    assert Decimal(repr(info["spend"])) == one * 2 and info["reserved_spend"] == 0

    # Raising the budget lets the key through again at once.
    assert admin.post("/key/update", json={"key": key, "max_budget": float(one * 3)}).status_code == 200
    assert client.messages.create(model=MODEL, max_tokens=100, messages=HELLO, extra_headers=headers).id


def test_budget_resets_each_period(admin, gateway, make_key, frozen_clock):
    headers = usage_header(input_tokens=1000, output_tokens=100)
    one = cost(input_tokens=1000, output_tokens=100)
    key = make_key(max_budget=float(one), budget_duration="1d")
    client = sdk(gateway, key)
    first_reset = info_of(admin, key)["budget_reset_at"]

    client.messages.create(model=MODEL, max_tokens=100, messages=HELLO, extra_headers=headers)
    settled(gateway, admin, key, requests=1)
    with pytest.raises(anthropic.APIStatusError, match=re.escape(first_reset)) as refused:
        client.messages.create(model=MODEL, max_tokens=100, messages=HELLO, extra_headers=headers)
    assert refused.value.status_code == 402

    frozen_clock[0] += timedelta(days=1, seconds=1)
    assert client.messages.create(model=MODEL, max_tokens=100, messages=HELLO, extra_headers=headers).id
    info = settled(gateway, admin, key, requests=2)
    assert Decimal(repr(info["spend"])) == one  # this period's
    assert Decimal(repr(info["total_spend"])) == one * 2
    assert info["budget_reset_at"] == table.iso_seconds(datetime.fromisoformat(first_reset) + timedelta(days=1))


def test_info_starts_a_new_period_for_an_idle_key(admin, gateway, make_key, frozen_clock):
    key = make_key(budget_duration="1h")  # spend tracked per hour, no budget to enforce
    sdk(gateway, key).messages.create(
        model=MODEL, max_tokens=8, messages=HELLO, extra_headers=usage_header(input_tokens=10, output_tokens=5)
    )
    assert settled(gateway, admin, key, requests=1)["spend"] > 0

    frozen_clock[0] += timedelta(hours=5, minutes=30)
    info = info_of(admin, key)
    assert info["spend"] == 0 and info["total_spend"] > 0
    assert datetime.fromisoformat(info["budget_reset_at"]) > frozen_clock[0]


def test_removing_and_restoring_a_budget_keeps_the_headroom_right(admin, gateway, make_key):
    headers = usage_header(input_tokens=1000, output_tokens=100)
    one = cost(input_tokens=1000, output_tokens=100)
    key = make_key(max_budget=float(one))
    client = sdk(gateway, key)
    client.messages.create(model=MODEL, max_tokens=100, messages=HELLO, extra_headers=headers)
    settled(gateway, admin, key, requests=1)

    admin.post("/key/update", json={"key": key, "max_budget": None})
    client.messages.create(model=MODEL, max_tokens=100, messages=HELLO, extra_headers=headers)
    settled(gateway, admin, key, requests=2)
    # Spent 2 units; a budget of 2.5 leaves room for exactly one more request.
    admin.post("/key/update", json={"key": key, "max_budget": float(one * Decimal("2.5"))})
    client.messages.create(model=MODEL, max_tokens=100, messages=HELLO, extra_headers=headers)
    settled(gateway, admin, key, requests=3)
    with pytest.raises(anthropic.APIStatusError) as refused:
        client.messages.create(model=MODEL, max_tokens=100, messages=HELLO, extra_headers=headers)
    assert refused.value.status_code == 402


def test_concurrent_requests_do_not_overshoot_the_budget(admin, gateway, make_key, fake_upstream, atomic_moto):
    """50 requests at once against a budget for 5: the reservations admit at most what the budget covers."""
    usage = {"input_tokens": 10, "output_tokens": 40}
    one = cost(**usage)
    key = make_key(max_budget=float(one * 5))
    client = sdk(gateway, key)
    headers = {**usage_header(**usage), "x-fake-chunks": "4", "x-fake-delay-ms": "20"}

    def attempt(_):
        try:
            with client.messages.stream(model=MODEL, max_tokens=40, messages=HELLO, extra_headers=headers) as s:
                return s.get_final_message().usage.output_tokens == 40
        except anthropic.APIStatusError as exc:
            assert exc.status_code == 402, exc
            return False

    with ThreadPoolExecutor(max_workers=50) as pool:
        admitted = sum(pool.map(attempt, range(50)))
    assert 1 <= admitted <= 5
    info = settled(gateway, admin, key, requests=admitted)
    assert Decimal(repr(info["spend"])) == one * admitted <= one * 5

    # What the concurrent burst left unused is still usable, one request at a time, and not a cent more.
    while True:
        try:
            client.messages.create(model=MODEL, max_tokens=40, messages=HELLO, extra_headers=usage_header(**usage))
        except anthropic.APIStatusError as exc:
            assert exc.status_code == 402
            break
        admitted += 1
        settled(gateway, admin, key, requests=admitted)
    assert admitted == 5
    assert Decimal(repr(info_of(admin, key)["spend"])) == one * 5
    assert len([r for r in fake_upstream.requests if r.path == "/v1/messages"]) == 5


# -- rate limits --------------------------------------------------------------------------------------------------


def test_rpm_limit(gateway, make_key, fake_upstream, frozen_clock):
    client = sdk(gateway, make_key(rpm_limit=2))
    for _ in range(2):
        assert client.models.list().data

    before = len(fake_upstream.requests)
    with pytest.raises(anthropic.RateLimitError, match="2 requests per minute") as limited:
        client.messages.create(model=MODEL, max_tokens=8, messages=HELLO)
    assert limited.value.body["error"]["type"] == "rate_limit_error"
    assert limited.value.response.headers["retry-after"] == "60"  # the clock is at the start of a minute
    assert len(fake_upstream.requests) == before

    frozen_clock[0] += timedelta(seconds=45)
    with pytest.raises(anthropic.RateLimitError) as limited:
        client.models.list()
    assert limited.value.response.headers["retry-after"] == "15"

    frozen_clock[0] += timedelta(seconds=15)  # the next minute
    assert client.models.list().data


def test_tpm_limit(admin, gateway, make_key, frozen_clock):
    key = make_key(tpm_limit=1000)
    client = sdk(gateway, key)
    client.messages.create(
        model=MODEL, max_tokens=8, messages=HELLO, extra_headers=usage_header(input_tokens=900, output_tokens=99)
    )
    settled(gateway, admin, key, requests=1)
    client.messages.create(
        model=MODEL, max_tokens=8, messages=HELLO, extra_headers=usage_header(input_tokens=1, output_tokens=1)
    )  # 999 < 1000: admitted
    settled(gateway, admin, key, requests=2)

    with pytest.raises(anthropic.RateLimitError, match="1000 tokens per minute") as limited:
        client.messages.create(model=MODEL, max_tokens=8, messages=HELLO)
    assert int(limited.value.response.headers["retry-after"]) == 60

    frozen_clock[0] += timedelta(minutes=1)
    assert client.messages.create(model=MODEL, max_tokens=8, messages=HELLO).id


def test_max_parallel_requests(admin, gateway, make_key, fake_upstream):
    key = make_key(max_parallel_requests=1)
    client = sdk(gateway, key)
    slow = {"x-fake-chunks": "50", "x-fake-delay-ms": "100"}

    with client.messages.stream(model=MODEL, max_tokens=64, messages=HELLO, extra_headers=slow) as first:
        next(iter(first.text_stream))  # in flight, holding the key's only slot
        with pytest.raises(anthropic.RateLimitError, match="parallel") as limited:
            client.messages.create(model=MODEL, max_tokens=8, messages=HELLO)
        assert limited.value.response.headers["retry-after"] == "1"
    # The client closed the first stream; its slot is released when it settles.
    settled(gateway, admin, key, requests=1)
    assert not _slots(key)
    assert client.messages.create(model=MODEL, max_tokens=8, messages=HELLO).id


def _slots(key: str) -> dict:
    record = key_records.load(keys.hash_key(key))
    item = table.handle().get_item(Key={"pk": key_records.record_pk(record.key_id), "sk": "PARALLEL"}).get("Item") or {}
    return item.get("slots", {})


def test_a_slot_leaked_by_a_dead_instance_is_reclaimed_after_its_lease(gateway, make_key, frozen_clock):
    key = make_key(max_parallel_requests=1)
    record = key_records.load(keys.hash_key(key))
    taken = int(frozen_clock[0].timestamp()) + rates.PARALLEL_SLOT_LEASE_SECONDS
    table.handle().put_item(
        Item={"pk": key_records.record_pk(record.key_id), "sk": "PARALLEL", "slots": {"dead": taken}}
    )
    client = sdk(gateway, key)

    with pytest.raises(anthropic.RateLimitError):
        client.messages.create(model=MODEL, max_tokens=8, messages=HELLO)
    frozen_clock[0] += timedelta(seconds=rates.PARALLEL_SLOT_LEASE_SECONDS + 1)
    assert client.messages.create(model=MODEL, max_tokens=8, messages=HELLO).id
    assert "dead" not in _slots(key)


def test_a_refused_request_takes_nothing(admin, gateway, make_key, frozen_clock):
    """A request's rate count, budget hold and parallel slot are one write: refused by one (here: parallel), it
    holds nothing on the others, and has not counted toward rpm."""
    key = make_key(max_budget=1000.0, rpm_limit=1, max_parallel_requests=0)
    with pytest.raises(anthropic.RateLimitError, match="parallel"):
        sdk(gateway, key).messages.create(model=MODEL, max_tokens=1000, messages=HELLO)

    gateway.drain()
    assert info_of(admin, key)["reserved_spend"] == 0
    item = table.handle().get_item(Key={"pk": key_records.record_pk(keys.hash_key(key)), "sk": "KEY"})["Item"]
    assert (item["budget_headroom"], item["requests"], item["reservations"]) == (1000, 0, {})
    assert admin.post("/key/update", json={"key": key, "max_parallel_requests": 1}).status_code == 200
    assert sdk(gateway, key).messages.create(model=MODEL, max_tokens=8, messages=HELLO).id  # rpm 1: still unused


def test_refusals_come_in_the_order_of_the_checks(admin, gateway, make_key, frozen_clock):
    """Limits that refuse together answer as if checked one by one: the rate limit, then the budget, then parallel."""
    key = make_key(max_budget=1000.0, rpm_limit=1, max_parallel_requests=1)
    client = sdk(gateway, key)
    assert client.models.list().data  # the minute's one request
    update = {"key": key, "max_budget": 0, "max_parallel_requests": 0}
    assert admin.post("/key/update", json=update).status_code == 200
    with pytest.raises(anthropic.RateLimitError, match="1 request per minute"):
        client.models.list()
    frozen_clock[0] += timedelta(minutes=1)
    with pytest.raises(anthropic.APIStatusError) as refused:
        client.models.list()
    assert refused.value.status_code == 402


def test_a_table_failure_refuses_with_503(gateway, make_key, fake_upstream, monkeypatch):
    key = make_key(rpm_limit=100)

    def unavailable(*args, **kwargs):
        raise RuntimeError("DynamoDB is unreachable")

    monkeypatch.setattr(holds, "admit", unavailable)
    with pytest.raises(anthropic.InternalServerError) as refused:
        sdk(gateway, key).messages.create(model=MODEL, max_tokens=8, messages=HELLO)
    assert refused.value.status_code == 503 and refused.value.body["error"]["type"] == "api_error"
    assert fake_upstream.requests == []


def test_the_master_key_has_no_limits(gateway, fake_upstream):
    from tests.conftest import MASTER_KEY

    client = sdk(gateway, MASTER_KEY)
    assert client.messages.create(model="any-model-at-all", max_tokens=8, messages=HELLO).type == "message"
