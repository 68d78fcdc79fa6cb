"""Message Batches billed to keys, through the real SDK and the gateway: reserved at create, settled once from the
results as they stream through, or at the estimate when they are never fetched (batches.py, docs/keys.md)."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from unittest.mock import ANY

import anthropic
import pytest

from anthropic_gateway import keys, pricing
from anthropic_gateway.storage import table
from anthropic_gateway.usage import Usage

# How the gateways price models: UNKNOWN_MODEL_RATE and BEDROCK_MODEL_IDS as they are by default.
UNKNOWN_MODELS = pricing.UnknownModels("max", "")

MODEL = "claude-haiku-4-5"
USAGE = {"input_tokens": 1200, "output_tokens": 300}


def sdk(gateway, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url + "/anthropic", api_key=key, max_retries=0)


def batch_requests(count: int, max_tokens: int = 1000) -> list[dict]:
    return [
        {
            "custom_id": f"r{i}",
            "params": {"model": MODEL, "max_tokens": max_tokens, "messages": [{"role": "user", "content": f"Hi {i}"}]},
        }
        for i in range(count)
    ]


def exact_cost(results: int, **usage: int) -> Decimal:
    """What Anthropic bills for `results` succeeded results of this usage: the standard price, halved."""
    return results * pricing.cost_usd(MODEL, Usage(**usage), UNKNOWN_MODELS) * Decimal("0.5")


def info_of(gateway, admin, key: str) -> dict:
    gateway.drain()  # the after-response work (settling) is done
    response = admin.get("/key/info", params={"key": keys.token_of(key)})
    assert response.status_code == 200, response.text
    return response.json()["info"]


def money(value: float) -> Decimal:
    return Decimal(repr(value))


def create(client: anthropic.Anthropic, count: int = 3, **headers: str):
    return client.messages.batches.create(
        requests=batch_requests(count), extra_headers={"x-fake-usage": json.dumps(USAGE), **headers}
    )


def reserved_on_the_batch(batch_id: str) -> Decimal:
    item = table.get(f"BATCH#{batch_id}", "BATCH")
    assert item is not None
    return Decimal(item["reserved"])


@pytest.fixture
def clock(monkeypatch):
    """The gateway's clock (keys.utcnow), moved by hand: grace periods without sleeps."""
    now = [datetime.now(UTC).replace(microsecond=0)]
    monkeypatch.setattr(keys, "utcnow", lambda: now[0])
    return now


def test_a_batch_over_the_budget_is_refused_with_402_before_the_upstream(gateway, admin, make_key, fake_upstream):
    key = make_key(max_budget=0.05)  # 20 requests of 64,000 max_tokens at $2.50/MTok: over $1.60 at batch prices
    with pytest.raises(anthropic.APIStatusError) as refused:
        sdk(gateway, key).messages.batches.create(requests=batch_requests(20, max_tokens=64_000))
    assert refused.value.status_code == 402
    assert refused.value.body["error"]["type"] == "billing_error"
    assert "This batch may cost up to $" in refused.value.message
    assert not [r for r in fake_upstream.requests if r.path.startswith("/v1/messages/batches")]
    info = info_of(gateway, admin, key)
    assert info["reserved_spend"] == 0 and info["spend"] == 0
    # A batch that fits the same budget goes through.
    assert sdk(gateway, key).messages.batches.create(requests=batch_requests(1, max_tokens=100)).id


def test_a_batch_is_reserved_at_create_and_settled_exactly_from_its_results(gateway, admin, make_key):
    key = make_key(max_budget=10)
    client = sdk(gateway, key)
    batch = create(client, count=3)
    info = info_of(gateway, admin, key)
    reserved = money(info["reserved_spend"])
    assert reserved > 0 and reserved == reserved_on_the_batch(batch.id) and info["spend"] == 0
    assert reserved >= exact_cost(3, **USAGE)  # an upper bound

    results = list(client.messages.batches.results(batch.id))
    assert [r.result.type for r in results] == ["succeeded"] * 3

    info = info_of(gateway, admin, key)
    assert money(info["spend"]) == exact_cost(3, **USAGE)
    assert info["reserved_spend"] == 0
    assert info["input_tokens"] == 3 * USAGE["input_tokens"] and info["output_tokens"] == 3 * USAGE["output_tokens"]


def test_results_fetched_many_times_settle_once(gateway, admin, make_key):
    key = make_key(max_budget=10)
    client = sdk(gateway, key)
    batch = create(client, count=2)
    assert [len(list(client.messages.batches.results(batch.id))) for _ in range(3)] == [2] * 3
    assert money(info_of(gateway, admin, key)["spend"]) == exact_cost(2, **USAGE)
    assert len(list(client.messages.batches.results(batch.id))) == 2
    info = info_of(gateway, admin, key)
    assert money(info["spend"]) == exact_cost(2, **USAGE) and info["reserved_spend"] == 0


def test_a_batch_is_reserved_and_settled_on_its_keys_team_and_user_too(gateway, admin, fake_upstream):
    team_id, user_id = f"batch-team-{uuid.uuid4().hex[:8]}", f"batch-user-{uuid.uuid4().hex[:8]}"
    assert admin.post("/team/new", json={"team_id": team_id, "max_budget": 10}).status_code == 200
    new_user = {"user_id": user_id, "teams": [team_id], "max_budget": 10, "auto_create_key": False}
    assert admin.post("/user/new", json=new_user).status_code == 200
    key = admin.post("/key/generate", json={"team_id": team_id, "user_id": user_id}).json()["key"]
    client = sdk(gateway, key)
    records = [(f"TEAM#{team_id}", "TEAM"), (f"USER#{user_id}", "USER"), (f"TEAM#{team_id}", f"MEMBER#{user_id}")]

    batch = create(client, count=3)
    gateway.drain()
    reserved = reserved_on_the_batch(batch.id)
    assert reserved >= exact_cost(3, **USAGE)
    # Held on the team's and the user's budgets (the key and the membership have none), as one reservation each.
    assert [Decimal(table.get(pk, sk).get("reserved", 0)) for pk, sk in records] == [reserved, reserved, 0]

    assert len(list(client.messages.batches.results(batch.id))) == 3
    gateway.drain()
    for pk, sk in [*records, (f"KEY#{keys.hash_key(key)}", "KEY")]:
        item = table.get(pk, sk)
        assert Decimal(item["spend"]) == exact_cost(3, **USAGE) and item.get("reserved", 0) == 0, (pk, sk)
        assert not item.get("reservations") and item["input_tokens"] == 3 * USAGE["input_tokens"]

    # A batch whose estimate is more than the team's budget has left is refused before the upstream, naming it.
    left = float(exact_cost(3, **USAGE) + Decimal("0.001"))  # some headroom, less than the estimate
    assert admin.post("/team/update", json={"team_id": team_id, "max_budget": left}).status_code == 200
    before = len(fake_upstream.requests)
    with pytest.raises(anthropic.APIStatusError) as refused:
        create(client, count=3)
    message = refused.value.body["error"]["message"]
    assert refused.value.status_code == 402 and message.startswith("This batch may cost up to $")
    assert f"Team {team_id!r} has reached its budget" in message
    assert len(fake_upstream.requests) == before


def test_an_unbudgeted_key_gets_its_batch_spend_recorded(gateway, admin, make_key):
    key = make_key()
    client = sdk(gateway, key)
    batch = create(client, count=2)
    assert info_of(gateway, admin, key)["reserved_spend"] == 0
    list(client.messages.batches.results(batch.id))
    info = info_of(gateway, admin, key)
    assert money(info["spend"]) == exact_cost(2, **USAGE) and info["reserved_spend"] == 0


def test_a_create_the_upstream_refuses_releases_its_reservation(gateway, admin, make_key, fake_upstream):
    key = make_key(max_budget=10)
    with pytest.raises(anthropic.APIStatusError) as refused:
        create(sdk(gateway, key), count=3, **{"x-fake-error": "529"})
    assert refused.value.status_code == 529
    assert [r.path for r in fake_upstream.requests] == ["/v1/messages/batches"]  # it did go upstream
    info = info_of(gateway, admin, key)
    assert info["reserved_spend"] == 0 and info["spend"] == 0


def test_a_batch_seen_ended_and_never_fetched_is_settled_at_its_estimate_after_the_grace(
    gateway, admin, make_key, clock
):
    key = make_key(max_budget=10)
    client = sdk(gateway, key)
    batch = create(client, count=3, **{"x-fake-batch-status": "in_progress"})
    estimate = money(info_of(gateway, admin, key)["reserved_spend"])
    assert estimate > 0
    client.messages.batches.cancel(batch.id)  # the fake then ends it
    assert client.messages.batches.retrieve(batch.id).processing_status == "ended"  # the grace starts now
    gateway.drain()  # (noted after the response)

    clock[0] += timedelta(hours=23)  # within the grace: any request sweeps, nothing is due
    client.models.list()
    assert money(info_of(gateway, admin, key)["reserved_spend"]) == estimate

    clock[0] += timedelta(hours=1, minutes=1)
    client.models.list()  # starts the sweep
    info = info_of(gateway, admin, key)
    assert money(info["spend"]) == estimate and info["reserved_spend"] == 0

    list(client.messages.batches.results(batch.id))  # fetched late: it was settled already, once
    assert money(info_of(gateway, admin, key)["spend"]) == estimate


def test_a_batch_never_seen_ended_is_settled_at_its_estimate_when_its_results_expire(gateway, admin, make_key, clock):
    key = make_key()  # no budget: spend is counted all the same
    client = sdk(gateway, key)
    batch = create(client, count=2, **{"x-fake-batch-status": "in_progress"})
    item = table.get(f"BATCH#{batch.id}", "BATCH")
    assert item is not None and item["reserved"] == 0
    estimate = Decimal(item["estimate"])

    clock[0] += timedelta(days=28)
    client.models.list()
    assert info_of(gateway, admin, key)["spend"] == 0
    clock[0] += timedelta(days=1, minutes=1)  # 29 days: Anthropic has deleted the results
    client.models.list()
    assert money(info_of(gateway, admin, key)["spend"]) == estimate


# -- settle, killed halfway (own table) ---------------------------------------------------------------------------


class Killed(BaseException):
    """The process dies here: no handler runs, no retry is kept (a Lambda frozen or timed out mid-settle)."""


@pytest.fixture
def die_at_first_write(own_table, monkeypatch):
    """Kill the next write to the table (UpdateItem, PutItem, DeleteItem, TransactWriteItems), before it is sent
    ("before") or once DynamoDB has applied it and before its answer is seen ("after")."""
    client = own_table.client
    sent = client.call
    armed: list[str] = []

    def call(operation: str, params):
        writes = operation in ("UpdateItem", "PutItem", "DeleteItem", "TransactWriteItems")
        if writes and armed == ["before"]:
            armed.clear()
            raise Killed()
        answer = sent(operation, params)
        if writes and armed == ["after"]:
            armed.clear()
            raise Killed()
        return answer

    monkeypatch.setattr(client, "call", call)
    yield armed.append


@pytest.fixture
def open_batch(own_table, monkeypatch, test_runtime):
    """A key with a budget of $10 and a batch of it, open, its estimate ($1) reserved, as a create leaves them."""
    from anthropic_gateway import batches, governance
    from anthropic_gateway.storage import batch_items, key_records

    now = datetime(2030, 1, 1, tzinfo=UTC)
    monkeypatch.setattr(keys, "utcnow", lambda: now)
    plain = keys.new_key()
    record = key_records.KeyRecord(
        token=keys.hash_key(plain), key_name="k", created_at=now.isoformat(), max_budget=Decimal(10)
    )
    keys.put_new(test_runtime.key_cache, record)
    estimate, lease = Decimal(1), int(batches.RESERVATION_LEASE.total_seconds())
    held = asyncio.run(
        governance.reserve_budget(test_runtime, [record.scope], estimate, "batch-r1", lease_seconds=lease, whole=True)
    )
    assert held == (record.scope,)
    remembered = batch_items.remember(
        "b1",
        key_id=record.key_id,
        estimate=estimate,
        reserved=estimate,
        reservation_id="batch-r1",
        now=now,
        due=now + batches.RESULTS_RETENTION,
        ended=False,
    )
    assert remembered
    return record, now


def billed(record) -> dict:
    item = table.get(f"KEY#{record.key_id}", "KEY")
    assert item["budget_headroom"] == item["max_budget"] - item["spend"] - item["reserved"], item
    return {name: item[name] for name in ("spend", "total_spend", "reserved", "reservations", "input_tokens")}


def test_a_settle_killed_after_its_write_is_billed_exactly_once(open_batch, die_at_first_write, test_runtime):
    """The batch's state and its key's spend are one transaction: a settle that dies once its write has reached
    DynamoDB has billed the batch, all of it, and nothing after it (another fetch, the sweep) bills it again."""
    from anthropic_gateway import batches

    record, now = open_batch
    cost, usage = Decimal("0.4"), Usage(input_tokens=1200, output_tokens=300)
    die_at_first_write("after")
    with pytest.raises(Killed):
        asyncio.run(batches.settle_batch(test_runtime, "b1", cost, usage))

    # Recovery: the results are fetched again, and the batch comes due for the sweep.
    assert asyncio.run(batches.settle_batch(test_runtime, "b1", cost, usage)) is False
    assert asyncio.run(batches.sweep(test_runtime, now + batches.RESULTS_RETENTION + timedelta(minutes=1))) == 0
    expected = {"spend": cost, "total_spend": cost, "reserved": 0, "reservations": {}, "input_tokens": 1200}
    assert billed(record) == expected
    assert table.get("BATCH#b1", "BATCH")["state"] == "settled"


def test_a_settle_killed_before_its_write_leaves_the_batch_for_the_sweep(open_batch, die_at_first_write, test_runtime):
    from anthropic_gateway import batches

    record, now = open_batch
    die_at_first_write("before")
    with pytest.raises(Killed):
        asyncio.run(batches.settle_batch(test_runtime, "b1", Decimal("0.4"), None))
    assert billed(record) == {
        "spend": 0,
        "total_spend": 0,
        "reserved": 1,
        "reservations": {"batch-r1": ANY},
        "input_tokens": 0,
    }

    due = now + batches.RESULTS_RETENTION + timedelta(minutes=1)
    assert asyncio.run(batches.sweep(test_runtime, due)) == 1  # settled at its estimate
    assert asyncio.run(batches.sweep(test_runtime, due)) == 0
    assert billed(record) == {"spend": 1, "total_spend": 1, "reserved": 0, "reservations": {}, "input_tokens": 0}
