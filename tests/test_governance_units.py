"""Governance and key storage in isolation: pure rules, and the DynamoDB bookkeeping against moto's mock_aws."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from anthropic_gateway import governance, keys, pricing
from anthropic_gateway import table as gateway_table
from anthropic_gateway.errors import GatewayError
from anthropic_gateway.ledger import ledger
from anthropic_gateway.usage import Usage
from support.fake_anthropic import expected_input_tokens

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


# -- pure rules ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("10m", 600),
        ("1h", 3600),
        ("1d", 86400),
        ("30d", 30 * 86400),
        ("2w", 14 * 86400),
        ("1mo", 30 * 86400),
    ],
)
def test_durations(text, seconds):
    assert keys.parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "0d", "1y", "d", "-1d", "1.5h", "1 d", "1000000d"])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        keys.parse_duration(text)


@pytest.mark.parametrize(
    ("model", "allowed"),
    [
        ("claude-haiku-4-5", True),
        ("claude-haiku-4-5-20251001", True),  # a dated snapshot of an allowed name
        ("claude-opus-4-1", True),  # the prefix pattern
        ("claude-haiku-4-5-evil", False),
        ("claude-haiku-4", False),
        ("claude-sonnet-4-5", False),
        ("CLAUDE-HAIKU-4-5", False),
    ],
)
def test_model_allowed(model, allowed):
    assert governance.model_allowed(model, ["claude-haiku-4-5", "claude-opus-4-*"]) is allowed


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"model": "claude-haiku-4-5"}, None),
        ({"model": "claude-opus-4-5"}, 403),
        ({"messages": []}, 400),
        ({"model": ["claude-haiku-4-5"]}, 400),
        (None, 400),
    ],
)
def test_check_models(body, status):
    if status is None:
        governance.check_models(["claude-haiku-4-5"], "/v1/messages", body)
        return
    with pytest.raises(GatewayError) as refused:
        governance.check_models(["claude-haiku-4-5"], "/v1/messages", body)
    assert refused.value.status == status


@pytest.mark.parametrize(
    "requests",
    [None, {"not": "a list"}, [{"custom_id": "a"}], [{"params": "x"}], [{"params": {"model": None}}]],
)
def test_check_models_in_malformed_batches(requests):
    with pytest.raises(GatewayError) as refused:
        governance.check_models(["m"], governance.BATCH_PATH, {"requests": requests})
    assert refused.value.status == 400


@pytest.mark.parametrize(
    ("model", "text", "max_tokens"),
    [
        ("claude-sonnet-4-5", "Hello", 1024),
        ("claude-opus-4-1", "x" * 50_000, 10),
        ("claude-haiku-4-5", "日本語のテキスト" * 2000, 100),  # 3 bytes per character, about 1 token each
        ("some-unknown-model", "Hi", 5),
    ],
)
def test_estimate_bounds_the_cost(model, text, max_tokens):
    """The documented bound: the estimate covers a prompt of up to one token per 2 body bytes (twice the usual
    4 characters per token; CJK text at 3 bytes a character and a token each stays below it) and all of
    max_tokens - or up to one token per 4 bytes when all of it is written to the 1-hour cache."""
    body = {"model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": text}]}
    raw = json.dumps(body, ensure_ascii=False).encode()
    estimate = governance.estimate_cost(body, len(raw))

    assert len(text) <= len(raw) // 2 or text.isascii()
    worst_plain = Usage(input_tokens=len(raw) // 2, output_tokens=max_tokens)
    assert estimate >= pricing.cost_usd(model, worst_plain)
    cached = Usage(
        cache_creation_input_tokens=len(raw) // 4,
        cache_creation_1h_input_tokens=len(raw) // 4,
        output_tokens=max_tokens,
    )
    assert estimate >= pricing.cost_usd(model, cached)
    assert estimate >= pricing.cost_usd(
        model, Usage(input_tokens=expected_input_tokens(body), output_tokens=max_tokens)
    )


def test_estimate_without_a_readable_body_still_reserves_something():
    assert governance.estimate_cost(None, 4000) > 0
    assert governance.estimate_cost({"model": "claude-haiku-4-5", "max_tokens": True}, 400) > 0


# -- DynamoDB bookkeeping (mock_aws) ------------------------------------------------------------------------------


@pytest.fixture
def table(own_table):
    """A fresh table of its own (conftest's own_table)."""
    return own_table


def new_record(**settings) -> keys.KeyRecord:
    plain = keys.new_key()
    record = keys.KeyRecord(
        token=keys.hash_key(plain),
        key_name=keys.key_name(plain),
        created_at=keys.iso(NOW),
        updated_at=keys.iso(NOW),
        **settings,
    )
    keys.put_new(record)
    return record


def stored(record: keys.KeyRecord) -> dict:
    return gateway_table.handle().get_item(Key={"pk": keys.record_pk(record.key_id), "sk": "KEY"})["Item"]


def assert_headroom_invariant(record: keys.KeyRecord) -> dict:
    item = stored(record)
    budget = item.get("max_budget", Decimal(0))
    assert item["budget_headroom"] == budget - item["spend"] - item["reserved"], item
    return item


def test_budget_bookkeeping_keeps_its_invariant(table):
    record = new_record(
        max_budget=Decimal(1), budget_duration="1d", budget_reset_at=keys.iso_seconds(NOW + timedelta(1))
    )
    assert_headroom_invariant(record)

    admissions = []
    for estimate in (Decimal("0.3"), Decimal("0.3"), Decimal("0.3"), Decimal("0.3")):
        admission = governance.Admission(key_id=record.key_id)
        governance._reserve(record, admission, estimate, NOW)
        admissions.append(admission)
        assert_headroom_invariant(record)
    with pytest.raises(GatewayError) as refused:  # 1.2 reserved of 1.0: no headroom left
        governance._reserve(record, governance.Admission(key_id=record.key_id), Decimal("0.01"), NOW)
    assert refused.value.status == 402 and "reserved" in refused.value.message

    for admission, actual in zip(admissions, ("0.1", "0.2", "0.5", "0"), strict=True):
        counters = governance.spend_increments(Decimal(actual), Usage(input_tokens=10, output_tokens=2), True)
        governance.settle_write(record, admission, counters, None).apply()
        assert_headroom_invariant(record)
    item = assert_headroom_invariant(record)
    assert (item["spend"], item["reserved"], item["requests"], item["input_tokens"]) == (Decimal("0.8"), 0, 4, 40)

    keys.update(keys.load(record.token), {"max_budget": 0.5})
    item = assert_headroom_invariant(record)
    assert item["budget_headroom"] < 0

    later = NOW + timedelta(days=1, hours=1)
    assert governance.reset_budget_if_due(item, later)
    item = assert_headroom_invariant(record)
    assert item["spend"] == 0 and item["total_spend"] == Decimal("0.8")
    assert item["budget_reset_at"] == keys.iso_seconds(NOW + timedelta(days=2))

    # Another instance that read the item before the reset must not reset it again (its spend would be lost).
    governance.settle_write(record, None, governance.spend_increments(Decimal("0.25"), None, True), None).apply()
    assert governance.reset_budget_if_due({**item, "budget_reset_at": keys.iso_seconds(NOW + timedelta(1))}, later)
    assert stored(record)["spend"] == Decimal("0.25")
    assert_headroom_invariant(record)


def test_settle_of_a_deleted_key_does_not_recreate_it(table):
    record = new_record(max_budget=Decimal(1))
    keys.delete(record)
    increments = governance.spend_increments(Decimal("0.5"), Usage(input_tokens=5), True)
    held = governance.Admission(key_id=record.key_id, reserved=Decimal("0.1"))
    governance.settle_write(record, held, increments, None).apply()  # a budgeted key: written at once

    async def through_the_ledger() -> None:  # a key without budget: coalesced, written at the flush
        ledger.add(keys.record_pk(record.key_id), "KEY", increments, only_if_exists=True)
        await ledger.flush()

    asyncio.run(through_the_ledger())
    assert "Item" not in gateway_table.handle().get_item(Key={"pk": keys.record_pk(record.key_id), "sk": "KEY"})


def test_regenerate_moves_the_key_not_the_record(table):
    record = new_record(key_alias="rotating", max_budget=Decimal(2))
    first = record.token
    second_plain, third_plain = keys.new_key(), keys.new_key()

    keys.regenerate(keys.load(first), second_plain)
    second = keys.hash_key(second_plain)
    assert keys.load(first) is None
    assert keys.load(second).key_id == first  # the record keeps its identity (and its counters)

    keys.regenerate(keys.load(second), third_plain)
    third = keys.hash_key(third_plain)
    assert keys.load(first) is None and keys.load(second) is None
    assert keys.load(third).token == third and keys.load_by_alias("rotating").token == third
    with pytest.raises(keys.KeyExists):  # a key that was ever used is never accepted again
        keys.regenerate(keys.load(third), second_plain)
    assert keys.load(third) is not None and keys.load(second) is None

    keys.delete(keys.load(third))
    assert keys.load(third) is None and keys.load_by_alias("rotating") is None
    assert table.scan()["Items"] == []


def test_parallel_slots(table):
    record = new_record(max_parallel_requests=2)
    held = []
    for slot in ("a", "b"):
        admission = governance.Admission(key_id=record.key_id)
        governance._take_slot(record, admission, slot, NOW)
        held.append(admission)
    with pytest.raises(GatewayError) as refused:
        governance._take_slot(record, governance.Admission(key_id=record.key_id), "c", NOW)
    assert refused.value.status == 429 and refused.value.headers == {"retry-after": "1"}

    governance.settle_write(record, held[0], {}, None).apply()
    governance._take_slot(record, governance.Admission(key_id=record.key_id), "c", NOW)

    # Neither b nor c is ever released (their instance died): after the lease they are taken back.
    after_lease = NOW + timedelta(seconds=governance.PARALLEL_SLOT_LEASE_SECONDS + 1)
    governance._take_slot(record, governance.Admission(key_id=record.key_id), "d", after_lease)
    slots = gateway_table.handle().get_item(Key={"pk": keys.record_pk(record.key_id), "sk": "PARALLEL"})["Item"][
        "slots"
    ]
    assert set(slots) == {"d"}


def test_rate_window_counts(table):
    record = new_record(rpm_limit=2, tpm_limit=100)
    governance._count_request(record, NOW)
    governance._count_request(record, NOW + timedelta(seconds=59))
    with pytest.raises(GatewayError) as refused:
        governance._count_request(record, NOW + timedelta(seconds=30))
    assert refused.value.headers == {"retry-after": "30"}
    governance._count_request(record, NOW + timedelta(seconds=60))  # a new minute

    for zero in ({"rpm_limit": 0}, {"tpm_limit": 0}):  # a limit of 0 refuses even the minute's first request
        paused = new_record(**zero)
        with pytest.raises(GatewayError) as refused:
            governance._count_request(paused, NOW + timedelta(minutes=5))
        assert refused.value.status == 429
