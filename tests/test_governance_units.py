"""Governance and its storage in isolation: pure rules, and the DynamoDB bookkeeping against moto, on a table of
its own (admission of all a request's holds in one call, settle in one transaction, key records)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from anthropic_gateway import governance, keys, pricing
from anthropic_gateway import ledger as ledger_module
from anthropic_gateway.auth import Principal
from anthropic_gateway.errors import GatewayError
from anthropic_gateway.exchange import Admission
from anthropic_gateway.storage import budgets, holds, key_records, rates
from anthropic_gateway.storage import table as gateway_table
from anthropic_gateway.storage.scopes import Gone, OverBudget, RateLimited, Scope, TooManyParallel
from anthropic_gateway.usage import Usage
from support.fake_anthropic import expected_input_tokens

# How the gateways price models: UNKNOWN_MODEL_RATE and BEDROCK_MODEL_IDS as they are by default.
UNKNOWN_MODELS = pricing.UnknownModels("max", "")
SHIPPED_IDS = ""  # BEDROCK_MODEL_IDS unset: Bedrock ids as the shipped table maps them

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


# -- pure rules ---------------------------------------------------------------------------------------------------


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
    assert governance.model_allowed(model, ["claude-haiku-4-5", "claude-opus-4-*"], SHIPPED_IDS) is allowed


def allowing(*models: str) -> Scope:
    return Scope(kind="key", id="k", pk="KEY#k", sk="KEY", models=models)


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
        governance.check_models([allowing("claude-haiku-4-5")], "/v1/messages", body, SHIPPED_IDS)
        return
    with pytest.raises(GatewayError) as refused:
        governance.check_models([allowing("claude-haiku-4-5")], "/v1/messages", body, SHIPPED_IDS)
    assert refused.value.status == status


@pytest.mark.parametrize(
    "requests",
    [None, {"not": "a list"}, [{"custom_id": "a"}], [{"params": "x"}], [{"params": {"model": None}}]],
)
def test_check_models_in_malformed_batches(requests):
    with pytest.raises(GatewayError) as refused:
        governance.check_models([allowing("m")], governance.BATCH_PATH, {"requests": requests}, SHIPPED_IDS)
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
    estimate = governance.estimate_cost(body, len(raw), UNKNOWN_MODELS)

    assert len(text) <= len(raw) // 2 or text.isascii()
    worst_plain = Usage(input_tokens=len(raw) // 2, output_tokens=max_tokens)
    assert estimate >= pricing.cost_usd(model, worst_plain, UNKNOWN_MODELS)
    cached = Usage(
        cache_creation_input_tokens=len(raw) // 4,
        cache_creation_1h_input_tokens=len(raw) // 4,
        output_tokens=max_tokens,
    )
    assert estimate >= pricing.cost_usd(model, cached, UNKNOWN_MODELS)
    assert estimate >= pricing.cost_usd(
        model, Usage(input_tokens=expected_input_tokens(body), output_tokens=max_tokens), UNKNOWN_MODELS
    )


def test_estimate_without_a_readable_body_still_reserves_something():
    assert governance.estimate_cost(None, 4000, UNKNOWN_MODELS) > 0
    assert governance.estimate_cost({"model": "claude-haiku-4-5", "max_tokens": True}, 400, UNKNOWN_MODELS) > 0


# -- DynamoDB bookkeeping (own table) -----------------------------------------------------------------------------


@pytest.fixture
def table(own_table):
    """A fresh table of its own (conftest's own_table)."""
    return own_table


@pytest.fixture
def calls(table):
    """The DynamoDB operations made from now on (the table client's observers)."""
    made: list[str] = []

    def count(operation: str, _body: bytes) -> None:
        made.append(operation)

    observers = gateway_table.handle().client.observers
    observers.append(count)
    yield made
    observers.remove(count)


def new_record(**settings) -> key_records.KeyRecord:
    plain = keys.new_key()
    record = key_records.KeyRecord(
        token=keys.hash_key(plain),
        key_name=keys.key_name(plain),
        created_at=keys.iso(NOW),
        updated_at=keys.iso(NOW),
        **settings,
    )
    key_records.put_new(record)  # as /key/generate stores it
    return record


def stored(record: key_records.KeyRecord, sk: str = "KEY") -> dict:
    return gateway_table.handle().get_item(Key={"pk": key_records.record_pk(record.key_id), "sk": sk}).get("Item", {})


def assert_headroom_invariant(record: key_records.KeyRecord) -> dict:
    item = stored(record)
    budget = item.get("max_budget", Decimal(0))
    assert item["budget_headroom"] == budget - item["spend"] - item["reserved"], item
    return item


def acquire(record: key_records.KeyRecord, estimate: Decimal = Decimal(0), request_id: str | None = None):
    """Admission's DynamoDB side, as governance.admit runs it (at keys.utcnow()): the outcome and the holds."""
    admission = Admission(request_id or keys.new_key())
    governed = [scope for scope in governance.scopes(Principal(record)) if scope.governed]
    return governance._acquire(governed, admission, estimate), admission


def settle(record, admission, cost=Decimal(0), usage=None, forwarded=True):
    """Settle's DynamoDB side for a request that got an answer, as governance.settle_now builds it."""
    counters = governance.spend_increments(cost, usage, forwarded) if forwarded or usage else {}
    scopes = governance.scopes(Principal(record))
    changes = governance.settle_changes(
        scopes,
        hold_id=admission.request_id,
        reserved=admission.reserved,
        holders=[scope for scope in scopes if scope.budgeted],
        slot=admission.slot,
        counters=counters,
        tokens=usage.total_tokens if usage else 0,
        now=NOW,
    )
    return holds.settle(changes, operation=f"settle-{admission.request_id}", marker_ttl=4102444800)


@pytest.fixture(autouse=True)
def clock(monkeypatch) -> list[datetime]:
    """The gateway's clock, at NOW until a test moves it."""
    now = [NOW]
    monkeypatch.setattr(keys, "utcnow", lambda: now[0])
    return now


def test_budget_bookkeeping_keeps_its_invariant(table, test_runtime):
    record = new_record(
        max_budget=Decimal(1), budget_duration="1d", budget_reset_at=gateway_table.iso_seconds(NOW + timedelta(1))
    )
    assert_headroom_invariant(record)

    admissions = []
    for estimate in (Decimal("0.3"), Decimal("0.3"), Decimal("0.3"), Decimal("0.3")):
        outcome, admission = acquire(record, estimate)
        assert isinstance(outcome, holds.Admitted) and admission.reserved == estimate
        admissions.append(admission)
        assert_headroom_invariant(record)
    refused, nothing = acquire(record, Decimal("0.01"))  # 1.2 reserved of 1.0: no headroom left
    assert isinstance(refused, OverBudget) and refused.reserved == Decimal("1.2") and nothing.reserved is None
    error = governance.refusal(test_runtime, refused)
    assert error.status == 402 and "reserved" in error.message

    for admission, actual in zip(admissions, ("0.1", "0.2", "0.5", "0"), strict=True):
        assert (
            settle(record, admission, Decimal(actual), Usage(input_tokens=10, output_tokens=2)) is holds.Settled.APPLIED
        )
        assert_headroom_invariant(record)
    item = assert_headroom_invariant(record)
    assert (item["spend"], item["reserved"], item["requests"], item["input_tokens"]) == (Decimal("0.8"), 0, 4, 40)
    assert item["reservations"] == {}

    key_records.update(key_records.load(record.token), {"max_budget": 0.5})
    item = assert_headroom_invariant(record)
    assert item["budget_headroom"] < 0

    later = NOW + timedelta(days=1, hours=1)
    assert governance.reset_budget_if_due(item, later)
    item = assert_headroom_invariant(record)
    assert item["spend"] == 0 and item["total_spend"] == Decimal("0.8")
    assert item["budget_reset_at"] == gateway_table.iso_seconds(NOW + timedelta(days=2))

    # Another instance that read the item before the reset must not reset it again (its spend would be lost).
    assert settle(record, Admission("late"), Decimal("0.25")) is holds.Settled.APPLIED
    assert governance.reset_budget_if_due(
        {**item, "budget_reset_at": gateway_table.iso_seconds(NOW + timedelta(1))}, later
    )
    assert stored(record)["spend"] == Decimal("0.25")
    assert_headroom_invariant(record)


def test_admission_is_one_call_and_settle_one_transaction(table, calls):
    record = new_record(max_budget=Decimal(10), rpm_limit=5, tpm_limit=1000, max_parallel_requests=2)
    calls.clear()
    outcome, admission = acquire(record, Decimal("0.5"))
    assert isinstance(outcome, holds.Admitted) and len(outcome.holds) == 3
    # The key's first request also creates its map of parallel slots (again after 32 idle minutes: its TTL).
    assert calls == ["TransactWriteItems", "UpdateItem", "TransactWriteItems"]
    settle(record, admission, forwarded=False)

    calls.clear()
    outcome, admission = acquire(record, Decimal("0.5"))
    assert isinstance(outcome, holds.Admitted) and len(outcome.holds) == 3
    assert calls == ["TransactWriteItems"]
    assert stored(record, "PARALLEL")["slots"].keys() == {admission.slot}

    calls.clear()
    assert settle(record, admission, Decimal("0.2"), Usage(input_tokens=50, output_tokens=7)) is holds.Settled.APPLIED
    assert calls == ["TransactWriteItems"]
    item = assert_headroom_invariant(record)
    assert (item["spend"], item["reserved"], item["reservations"], item["requests"]) == (Decimal("0.2"), 0, {}, 1)
    assert stored(record, "PARALLEL")["slots"] == {}
    minute = stored(record, f"RATE#{rates.window(NOW)}")
    assert (minute["requests"], minute["tokens"]) == (2, 57)

    budget_only = new_record(max_budget=Decimal(10))
    calls.clear()
    outcome, admission = acquire(budget_only, Decimal("0.5"))
    assert isinstance(outcome, holds.Admitted) and calls == ["UpdateItem"]  # one action: one UpdateItem
    calls.clear()
    settle(budget_only, admission, Decimal("0.2"))
    assert calls == ["TransactWriteItems"]  # the spend, its release and the operation marker


def test_a_settle_retried_after_its_answer_was_lost_applies_once(table):
    record = new_record(max_budget=Decimal(10), tpm_limit=1000, max_parallel_requests=1)
    _, admission = acquire(record, Decimal("0.5"))
    usage = Usage(input_tokens=100, output_tokens=10)
    assert settle(record, admission, Decimal("0.3"), usage) is holds.Settled.APPLIED
    for _ in range(2):  # the ledger's retries: the same operation
        assert settle(record, admission, Decimal("0.3"), usage) is holds.Settled.ALREADY_APPLIED
    item = assert_headroom_invariant(record)
    assert (item["spend"], item["requests"], item["input_tokens"]) == (Decimal("0.3"), 1, 100)
    assert stored(record, f"RATE#{rates.window(NOW)}")["tokens"] == 110


def test_a_settle_after_the_sweep_records_its_spend_once(table, clock):
    """A reservation whose lease passed is released by an admission that finds the budget spent; the late settle
    of its request still records the spend, once, and does not release it a second time."""
    record = new_record(max_budget=Decimal(1))
    _, dead = acquire(record, Decimal(1))
    clock[0] += timedelta(seconds=budgets.RESERVATION_LEASE_SECONDS + 1)
    outcome, admission = acquire(record, Decimal("0.5"))
    assert isinstance(outcome, holds.Admitted)  # the dead request's reservation was swept
    assert stored(record)["reservations"].keys() == {admission.request_id}

    assert settle(record, dead, Decimal("0.4")) is holds.Settled.APPLIED
    assert settle(record, dead, Decimal("0.4")) is holds.Settled.ALREADY_APPLIED
    item = assert_headroom_invariant(record)
    assert (item["spend"], item["reserved"], item["requests"]) == (Decimal("0.4"), Decimal("0.5"), 1)


def test_a_retried_admission_whose_first_write_applied_is_admitted(table):
    record = new_record(max_budget=Decimal(10), rpm_limit=100, max_parallel_requests=1)
    first, admission = acquire(record, Decimal("0.5"), request_id="gwreq_same")
    again, _ = acquire(record, Decimal("0.5"), request_id="gwreq_same")  # the same write, its answer lost
    assert isinstance(first, holds.Admitted) and isinstance(again, holds.Admitted)
    settle(record, admission, Decimal("0.1"))
    item = assert_headroom_invariant(record)
    assert (item["reserved"], item["reservations"], stored(record, "PARALLEL")["slots"]) == (0, {}, {})


def test_a_conflicting_write_is_retried(table, monkeypatch):
    """DynamoDB cancels a transaction that meets another write to one of its items: admission tries again."""
    from botocore.exceptions import ClientError

    record = new_record(max_budget=Decimal(10), max_parallel_requests=1)
    transact, conflicts = gateway_table._transact, []

    def conflicting_once(actions, token):
        if not conflicts:
            conflicts.append(token)
            reasons = [{"Code": "TransactionConflict"}, {"Code": "None"}]
            error = {"Error": {"Code": "TransactionCanceledException"}, "CancellationReasons": reasons}
            raise ClientError(error, "TransactWriteItems")
        transact(actions, token)

    monkeypatch.setattr(gateway_table, "_transact", conflicting_once)
    outcome, _ = acquire(record, Decimal("0.5"))
    assert isinstance(outcome, holds.Admitted) and conflicts
    assert stored(record)["reserved"] == Decimal("0.5")


def test_settle_of_a_deleted_key_does_not_recreate_it(table, test_runtime):
    record = new_record(max_budget=Decimal(1))
    _, held = acquire(record, Decimal("0.1"))
    key_records.delete(record)
    usage = Usage(input_tokens=5)
    assert settle(record, held, Decimal("0.5"), usage) is holds.Settled.APPLIED  # a budgeted key: written at once
    increments = governance.spend_increments(Decimal("0.5"), usage, True)

    async def through_the_ledger() -> None:  # a key without budget: coalesced, written at the flush
        test_runtime.ledger.add(key_records.record_pk(record.key_id), "KEY", increments, only_if_exists=True)
        await test_runtime.ledger.flush()

    asyncio.run(through_the_ledger())
    assert stored(record) == {}


def test_counters_are_added_once_per_operation_and_an_item_gone_is_left_out(table):
    def write(*items: tuple[str, str, Decimal, bool]) -> ledger_module.Write:
        """The ledger's write of counters to several items in one transaction."""
        return ledger_module.counters_write([(pk, sk, {"spend": amount}, only) for pk, sk, amount, only in items])

    first = write(("P", "S", Decimal("0.25"), False))
    assert first.apply() is holds.Settled.APPLIED
    assert first.apply() is holds.Settled.ALREADY_APPLIED  # its retry, after an answer lost
    assert write(("P", "S", Decimal("0.5"), False), ("Q", "S", Decimal(2), False)).apply() is holds.Settled.APPLIED
    assert gateway_table.get("P", "S") == {"pk": "P", "sk": "S", "spend": Decimal("0.75")}
    # A key deleted while its request ran: its counters are left out, the others' written all the same.
    assert write(("gone", "S", Decimal(1), True), ("Q", "S", Decimal(1), True)).apply() is holds.Settled.APPLIED
    assert gateway_table.get("gone", "S") is None and gateway_table.get("Q", "S")["spend"] == 3


def test_regenerate_moves_the_key_not_the_record(table, test_runtime):
    record = new_record(key_alias="rotating", max_budget=Decimal(2))
    first = record.token
    second_plain, third_plain = keys.new_key(), keys.new_key()

    keys.regenerate(test_runtime.key_cache, key_records.load(first), second_plain)
    second = keys.hash_key(second_plain)
    assert key_records.load(first) is None
    assert key_records.load(second).key_id == first  # the record keeps its identity (and its counters)

    keys.regenerate(test_runtime.key_cache, key_records.load(second), third_plain)
    third = keys.hash_key(third_plain)
    assert key_records.load(first) is None and key_records.load(second) is None
    assert key_records.load(third).token == third and key_records.load_by_alias("rotating").token == third
    with pytest.raises(key_records.KeyExists):  # a key that was ever used is never accepted again
        keys.regenerate(test_runtime.key_cache, key_records.load(third), second_plain)
    assert key_records.load(third) is not None and key_records.load(second) is None

    # A hold taken with the old key is refused once the key moved on (on every instance: the condition is on the
    # record), and this instance forgets the key at once.
    outcome, _ = acquire(record, Decimal("0.1"))
    assert isinstance(outcome, Gone) and governance.refusal(test_runtime, outcome).status == 401

    key_records.delete(key_records.load(third))
    assert key_records.load(third) is None and key_records.load_by_alias("rotating") is None
    assert table.client.call("Scan", {"TableName": table.name})["Items"] == []


def test_parallel_slots(table, clock, test_runtime):
    record = new_record(max_parallel_requests=2)
    held = []
    for _ in ("a", "b"):
        outcome, admission = acquire(record)
        assert isinstance(outcome, holds.Admitted) and admission.slot is not None
        held.append(admission)
    refused, _ = acquire(record)
    assert isinstance(refused, TooManyParallel)
    error = governance.refusal(test_runtime, refused)
    assert error.status == 429 and error.headers == {"retry-after": "1"}

    settle(record, held[0], forwarded=False)
    assert isinstance(acquire(record)[0], holds.Admitted)

    # Neither of the two held now is ever released (their instance died): after the lease they are taken back.
    clock[0] += timedelta(seconds=rates.PARALLEL_SLOT_LEASE_SECONDS + 1)
    outcome, last = acquire(record)
    assert isinstance(outcome, holds.Admitted)
    assert set(stored(record, "PARALLEL")["slots"]) == {last.slot}


def test_rate_window_counts(table, clock, test_runtime):
    record = new_record(rpm_limit=2, tpm_limit=100)
    assert isinstance(acquire(record)[0], holds.Admitted)
    clock[0] = NOW + timedelta(seconds=59)
    assert isinstance(acquire(record)[0], holds.Admitted)
    clock[0] = NOW + timedelta(seconds=30)
    refused, _ = acquire(record)
    assert isinstance(refused, RateLimited) and refused.limit == "rpm"
    assert governance.refusal(test_runtime, refused).headers == {"retry-after": "30"}
    clock[0] = NOW + timedelta(seconds=60)
    assert isinstance(acquire(record)[0], holds.Admitted)  # a new minute

    clock[0] = NOW + timedelta(minutes=5)
    for zero in ({"rpm_limit": 0}, {"tpm_limit": 0}):  # a limit of 0 refuses even the minute's first request
        refused, _ = acquire(new_record(**zero))
        assert isinstance(refused, RateLimited) and governance.refusal(test_runtime, refused).status == 429
