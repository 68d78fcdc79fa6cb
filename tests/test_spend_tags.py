"""Spend per tag: daily aggregates in DynamoDB and `GET /spend/tags` (master key)."""

from __future__ import annotations

import asyncio
import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import date, timedelta
from decimal import Decimal

import httpx
import pytest

from anthropic_gateway import day_spend, money, pricing, tag_spend
from anthropic_gateway.runtime import Runtime
from anthropic_gateway.settings import get_settings
from anthropic_gateway.usage import Usage
from support.captured_lines import stored_key

# How the gateways price models: UNKNOWN_MODEL_RATE and BEDROCK_MODEL_IDS as they are by default.
UNKNOWN_MODELS = pricing.UnknownModels("max", "")

MODEL = "claude-haiku-4-5"


@pytest.fixture
def unique() -> str:
    """Tags no other test (or earlier run against the same moto) has used."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def gw(gateway):
    with httpx.Client(base_url=gateway.url + "/anthropic", headers={"x-api-key": stored_key()}, timeout=30) as client:
        yield client


def around_today() -> dict:
    # A day either side, so a test running across midnight UTC still sees its requests.
    today = day_spend.today()
    return {"start_date": (today - timedelta(days=1)).isoformat(), "end_date": (today + timedelta(days=1)).isoformat()}


def report(admin: httpx.Client, params: dict) -> dict[str, dict]:
    """The report by tag (tag spend is written after the response: drain the gateway first)."""
    response = admin.get("/spend/tags", params=params)
    assert response.status_code == 200, response.text
    return {row["individual_request_tag"]: row for row in response.json()}


def cost(usage: dict) -> float:
    return float(
        pricing.cost_usd(
            MODEL, Usage(**usage, cache_creation_5m_input_tokens=usage["cache_creation_input_tokens"]), UNKNOWN_MODELS
        )
    )


def test_spend_per_tag_matches_the_requests_made(gateway, gw, admin, unique):
    team, app = f"team:{unique}", f"app:{unique}"
    sent = [
        (
            {"input_tokens": 100, "output_tokens": 10, "cache_creation_input_tokens": 5, "cache_read_input_tokens": 50},
            [team, app],
            False,
        ),
        (
            {
                "input_tokens": 2000,
                "output_tokens": 300,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
            },
            [team, app],
            True,
        ),
        (
            {"input_tokens": 7, "output_tokens": 3, "cache_creation_input_tokens": 1000, "cache_read_input_tokens": 9},
            [team],
            False,
        ),
    ]
    for usage, tags, stream in sent:
        body = {
            "model": MODEL,
            "max_tokens": 32,
            "stream": stream,
            "messages": [{"role": "user", "content": "Hi"}],
            "litellm_metadata": {"tags": tags},
        }
        response = gw.post("/v1/messages", json=body, headers={"x-fake-usage": json.dumps(usage)})
        assert response.status_code == 200

    gateway.drain()
    rows = report(admin, around_today())
    assert (rows.get(team, {}).get("log_count"), rows.get(app, {}).get("log_count")) == (3, 2), rows

    for tag, included in ((team, sent), (app, sent[:2])):
        row = rows[tag]
        assert row["total_spend"] == pytest.approx(sum(cost(usage) for usage, _, _ in included), rel=1e-9)
        for name in day_spend.TOKENS:
            assert row[name] == sum(usage[name] for usage, _, _ in included)
        assert row["total_tokens"] == sum(sum(usage.values()) for usage, _, _ in included)
        assert len(row["daily"]) == 1 and row["daily"][0]["log_count"] == row["log_count"]
        assert row["daily"][0]["spend"] == pytest.approx(row["total_spend"])
    assert rows[team]["total_spend"] > rows[app]["total_spend"]
    order = [tag for tag in rows if tag in (team, app)]
    assert order == [team, app]  # highest spend first
    # Nothing for days without requests.
    long_ago = {"start_date": "2001-01-01", "end_date": "2001-01-31"}
    assert not {team, app} & set(report(admin, long_ago))


def _record_now(*calls: tuple) -> None:
    """(tags, cost, usage, day): recorded as settle records a request (on an event loop), then the ledger's flush."""

    async def record_and_flush() -> None:
        runtime = Runtime(get_settings())
        for tags, cost, usage, day in calls:
            day_spend.add(runtime.ledger, day_spend.counters(cost, usage, forwarded=True), tags=tags, day=day)
        await runtime.ledger.flush()

    asyncio.run(record_and_flush())


def test_daily_breakdown_over_a_range(aws, unique):
    tag, other = f"range:{unique}", f"other:{unique}"
    first, third = date(2024, 2, 28), date(2024, 3, 1)  # across a leap day
    _record_now(
        ([tag], Decimal("0.5"), Usage(input_tokens=10, output_tokens=20), first),
        ([tag, other], Decimal("0.25"), Usage(input_tokens=1, cache_read_input_tokens=4), third),
        ([tag], Decimal(100), None, third + timedelta(days=1)),  # outside the range
    )

    rows = {row["individual_request_tag"]: row for row in tag_spend.report(first, third)}

    assert rows[tag]["log_count"] == 2 and rows[tag]["total_spend"] == 0.75
    assert (rows[tag]["input_tokens"], rows[tag]["output_tokens"], rows[tag]["cache_read_input_tokens"]) == (11, 20, 4)
    assert [(d["date"], d["spend"], d["log_count"]) for d in rows[tag]["daily"]] == [
        ("2024-02-28", 0.5, 1),
        ("2024-03-01", 0.25, 1),
    ]
    assert rows[other]["daily"] == [
        {
            "date": "2024-03-01",
            "spend": 0.25,
            "log_count": 1,
            "input_tokens": 1,
            "output_tokens": 0,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 4,
            "total_tokens": 5,
        }
    ]


def test_concurrent_updates_all_count(aws, unique):
    tag, day = f"atomic:{unique}", date(2024, 5, 5)
    with ThreadPoolExecutor(max_workers=16) as pool:
        # Each thread its own event loop and flush: 32 writers racing on one item, as Lambda instances would.
        list(pool.map(lambda _: _record_now(([tag], Decimal("0.1"), Usage(input_tokens=3), day)), range(32)))

    rows = {row["individual_request_tag"]: row for row in tag_spend.report(day, day)}
    assert rows[tag]["log_count"] == 32 and rows[tag]["input_tokens"] == 96
    assert rows[tag]["total_spend"] == Decimal("3.2")  # Decimal sums in DynamoDB: no float drift


def test_spend_is_answered_exactly(admin, unique):
    """Money leaves as exact plain JSON numbers, written from Decimal: no binary float, no exponent."""
    day = date(2024, 6, 1)
    amounts = {"0.3": ("0.1", "0.2"), "123456789.123456789": ("123456789.123456789",), "0.0000001": ("1e-7",)}
    _record_now(
        *[([f"{total}:{unique}"], Decimal(part), None, day) for total, parts in amounts.items() for part in parts]
    )

    response = admin.get("/spend/tags", params={"start_date": day.isoformat(), "end_date": day.isoformat()})
    assert response.status_code == 200
    rows = {row["individual_request_tag"]: row for row in money.loads(response.content)}
    for total in amounts:
        row = rows[f"{total}:{unique}"]
        assert row["total_spend"] == row["daily"][0]["spend"] == Decimal(total)
        assert f'"total_spend":{total},' in response.text


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"start_date": "2025-13-01", "end_date": "2025-12-31"}, "start_date"),
        ({"start_date": "20250101", "end_date": "2025-01-02"}, "start_date"),
        ({"start_date": "2025-01-01", "end_date": "yesterday"}, "end_date"),
        ({"start_date": "2025-01-02", "end_date": "2025-01-01"}, "after"),
        ({"start_date": "2024-01-01", "end_date": "2025-01-01"}, "366"),  # 367 days
    ],
)
def test_bad_date_ranges_are_400(admin, params, fragment):
    response = admin.get("/spend/tags", params=params)
    assert response.status_code == 400
    error = response.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert fragment in error["error"]["message"]


def test_defaults_and_single_day(admin):
    assert admin.get("/spend/tags").status_code == 200
    assert admin.get("/spend/tags", params={"start_date": "2025-01-01", "end_date": "2025-01-01"}).json() == []


def test_master_key_only(gateway):
    with httpx.Client(base_url=gateway.url) as client:
        assert client.get("/spend/tags").status_code == 401
        virtual = client.get("/spend/tags", headers={"x-api-key": stored_key()})
        assert virtual.status_code == 403 and virtual.json()["error"]["type"] == "permission_error"
