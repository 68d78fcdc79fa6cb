"""Spend per team and per user by day (`GET /spend/teams`, `GET /spend/users`), the tagged requests' totals with
each request once (`GET /spend/tags/totals`), one meaning of "requests" for keys, tags, teams and users; and the
access line's team_id, user_id and Claude Code session id, and the `Team` dimension, through the real SDK and raw
HTTP against the gateway."""

from __future__ import annotations

import asyncio
import json
import threading
from datetime import date, timedelta
from decimal import Decimal

import anthropic
import httpx
import pytest

from anthropic_gateway import day_spend, keys, metrics, pricing
from anthropic_gateway.runtime import Runtime
from anthropic_gateway.settings import get_settings
from anthropic_gateway.storage import teams
from anthropic_gateway.usage import Usage
from support.captured_lines import stored_key
from support.orgs import error_of, exact, new_key, new_team, new_user, ok, unique
from tests.conftest import MASTER_KEY

# How the gateways price models: UNKNOWN_MODEL_RATE and BEDROCK_MODEL_IDS as they are by default.
UNKNOWN_MODELS = pricing.UnknownModels("max", "")

MODEL = "claude-haiku-4-5"
HELLO: list[anthropic.types.MessageParam] = [{"role": "user", "content": "Hi"}]


def around_today() -> dict[str, str]:
    # A day either side, so a test running across midnight UTC still sees its requests.
    today = day_spend.today()
    return {"start_date": (today - timedelta(days=1)).isoformat(), "end_date": (today + timedelta(days=1)).isoformat()}


def cost(usage: dict[str, int]) -> Decimal:
    return pricing.cost_usd(MODEL, Usage(**usage), UNKNOWN_MODELS)


def sdk(gateway, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url + "/anthropic", api_key=key, max_retries=0)


def raw(gateway, key: str, *, headers: dict[str, str] | None = None, body: dict | None = None) -> httpx.Response:
    message = {"model": MODEL, "max_tokens": 16, "messages": HELLO, **(body or {})}
    with httpx.Client(base_url=gateway.url + "/anthropic", headers={"x-api-key": key}, timeout=30) as http:
        return http.post("/v1/messages", json=message, headers=headers or {})


def by_id(admin: httpx.Client, path: str, field: str, params: dict | None = None) -> dict[str, dict]:
    """A dated report by team_id (user_id), every amount the exact Decimal written."""
    response = admin.get(path, params=params or around_today())
    assert response.status_code == 200, response.text
    return {row[field]: row for row in exact(response)}


def key_requests(admin: httpx.Client, key: str) -> int:
    return int(ok(admin.get("/key/info", params={"key": key}))["info"]["requests"])


def test_spend_per_team_and_per_user_count_the_requests_of_their_keys(gateway, admin):
    team = new_team(admin, team_alias=unique("Search"))
    team_id = team["team_id"]
    ana = new_user(admin, user_email=unique("ana") + "@example.com", user_alias="Ana", teams=[team_id])
    bo = new_user(admin, user_email=unique("bo") + "@example.com", teams=[team_id])
    ana_in_team = new_key(admin, team_id=team_id, user_id=ana["user_id"])["key"]
    ana_alone = new_key(admin, user_id=ana["user_id"])["key"]  # the user's own key, in no team
    bo_in_team = new_key(admin, team_id=team_id, user_id=bo["user_id"])["key"]
    usages = [
        {"input_tokens": 1200, "output_tokens": 80, "cache_read_input_tokens": 300},
        {"input_tokens": 7, "output_tokens": 3},
        {"input_tokens": 50_000, "output_tokens": 1_000},
        {"input_tokens": 99, "output_tokens": 11, "cache_read_input_tokens": 1},
    ]

    sdk(gateway, ana_in_team).messages.create(
        model=MODEL, max_tokens=16, messages=HELLO, extra_headers={"x-fake-usage": json.dumps(usages[0])}
    )
    with sdk(gateway, ana_in_team).messages.stream(
        model=MODEL, max_tokens=16, messages=HELLO, extra_headers={"x-fake-usage": json.dumps(usages[1])}
    ) as stream:
        stream.get_final_message()
    assert raw(gateway, bo_in_team, headers={"x-fake-usage": json.dumps(usages[2])}).status_code == 200
    assert raw(gateway, ana_alone, headers={"x-fake-usage": json.dumps(usages[3])}).status_code == 200
    # An upstream's error answer counts as a request (it reached the upstream); the gateway's own refusal does not.
    assert raw(gateway, bo_in_team, headers={"x-fake-error": "400"}).status_code == 400
    refused = raw(gateway, ana_in_team, headers={"x-litellm-tags": "not!plain"})
    assert refused.status_code == 400 and error_of(refused)[1] == "invalid_request_error"
    gateway.drain()  # spend per day is recorded at settle and written by the ledger

    team_row = by_id(admin, "/spend/teams", "team_id")[team_id]
    assert team_row["team_alias"] == team["team_alias"]
    assert team_row["log_count"] == 4
    assert team_row["total_spend"] == cost(usages[0]) + cost(usages[1]) + cost(usages[2])  # exact Decimal
    assert team_row["input_tokens"] == 1200 + 7 + 50_000 and team_row["output_tokens"] == 80 + 3 + 1_000
    assert team_row["cache_read_input_tokens"] == 300
    assert team_row["total_tokens"] == 1200 + 80 + 300 + 7 + 3 + 50_000 + 1_000
    [day] = team_row["daily"]
    assert day["log_count"] == 4 and day["spend"] == team_row["total_spend"]

    users = by_id(admin, "/spend/users", "user_id")
    ana_row, bo_row = users[ana["user_id"]], users[bo["user_id"]]
    assert (ana_row["user_alias"], ana_row["user_email"]) == ("Ana", ana["user_email"])
    assert ana_row["log_count"] == 3  # both of her keys, in the team and alone; her refused request is not counted
    assert ana_row["total_spend"] == cost(usages[0]) + cost(usages[1]) + cost(usages[3])
    assert (bo_row["log_count"], bo_row["total_spend"]) == (2, cost(usages[2]))
    # The team's rows and the users' rows add up: a request has one team and one user.
    assert ana_row["total_spend"] - cost(usages[3]) + bo_row["total_spend"] == team_row["total_spend"]

    # "Requests" means the same on keys: the refused request is not one of ana's key's, the upstream's error is bo's.
    assert (key_requests(admin, ana_in_team), key_requests(admin, bo_in_team)) == (2, 2)

    # Nothing for days without requests.
    long_ago = {"start_date": "2001-01-01", "end_date": "2001-01-31"}
    assert team_id not in by_id(admin, "/spend/teams", "team_id", long_ago)
    assert ana["user_id"] not in by_id(admin, "/spend/users", "user_id", long_ago)


def test_the_tagged_totals_count_a_request_with_two_tags_once(gateway, admin):
    """/spend/tags has a request with two tags in both rows; /spend/tags/totals counts it once, and a request the
    gateway refused counts nowhere (tags, totals and keys alike)."""
    first, second = unique("team:t"), unique("app:t")
    key = new_key(admin, models=[MODEL])["key"]
    usages = [{"input_tokens": 1000, "output_tokens": 100}, {"input_tokens": 20, "output_tokens": 2}]
    gateway.drain()
    before = exact(admin.get("/spend/tags/totals", params=around_today()))

    tagged = {"litellm_metadata": {"tags": [first, second]}}
    assert raw(gateway, key, headers={"x-fake-usage": json.dumps(usages[0])}, body=tagged).status_code == 200
    sdk(gateway, key).messages.create(
        model=MODEL,
        max_tokens=16,
        messages=HELLO,
        extra_headers={"x-fake-usage": json.dumps(usages[1]), "x-litellm-tags": first},
    )
    assert raw(gateway, key, headers={"x-fake-usage": json.dumps(usages[1])}).status_code == 200  # no tag
    refused = raw(gateway, key, body={**tagged, "model": "claude-opus-4-1"})  # outside the key's models
    assert refused.status_code == 403
    gateway.drain()

    rows = {row["individual_request_tag"]: row for row in exact(admin.get("/spend/tags", params=around_today()))}
    assert (rows[first]["log_count"], rows[second]["log_count"]) == (2, 1)
    after = exact(admin.get("/spend/tags/totals", params=around_today()))
    assert (after["start_date"], after["end_date"]) == (around_today()["start_date"], around_today()["end_date"])
    assert after["log_count"] - before["log_count"] == 2  # the rows say 3
    assert after["total_spend"] - before["total_spend"] == cost(usages[0]) + cost(usages[1])
    assert after["input_tokens"] - before["input_tokens"] == 1020
    assert after["total_tokens"] - before["total_tokens"] == 1122
    assert sum(day["log_count"] for day in after["daily"]) == after["log_count"]
    assert key_requests(admin, key) == 3  # the refused request is not one either


def _record(*calls: tuple[dict, Decimal, date]) -> None:
    """(where, cost, day): recorded as settle records a request, then the ledger's flush."""

    async def record_and_flush() -> None:
        runtime = Runtime(get_settings())  # a ledger like the gateway's, on this loop
        for where, amount, day in calls:
            day_spend.add(
                runtime.ledger, day_spend.counters(amount, Usage(input_tokens=1), forwarded=True), day=day, **where
            )
        await runtime.ledger.flush()

    asyncio.run(record_and_flush())


def test_reports_are_exact_per_day_and_keep_teams_and_users_deleted_since(admin):
    first, third = date(2024, 2, 28), date(2024, 3, 1)  # across a leap day
    team_id, user_id, tags = unique("gone-team"), unique("gone-user"), [unique("x:a"), unique("x:b")]
    _record(
        ({"team_id": team_id, "user_id": user_id, "tags": tags}, Decimal("0.1"), first),
        ({"team_id": team_id, "user_id": user_id, "tags": tags}, Decimal("0.2"), third),
        ({"team_id": team_id}, Decimal("123456789.123456789"), third + timedelta(days=1)),  # outside the range
    )
    params = {"start_date": first.isoformat(), "end_date": third.isoformat()}

    response = admin.get("/spend/teams", params=params)
    row = {row["team_id"]: row for row in exact(response)}[team_id]
    assert row["team_alias"] is None  # no such team (any more): its spend stays
    assert row["total_spend"] == Decimal("0.3") and '"total_spend":0.3,' in response.text  # no float in between
    assert [(day["date"], day["spend"], day["log_count"]) for day in row["daily"]] == [
        ("2024-02-28", Decimal("0.1"), 1),
        ("2024-03-01", Decimal("0.2"), 1),
    ]
    user = {row["user_id"]: row for row in exact(admin.get("/spend/users", params=params))}[user_id]
    assert (user["user_alias"], user["user_email"], user["log_count"], user["input_tokens"]) == (None, None, 2, 2)
    totals = exact(admin.get("/spend/tags/totals", params=params))
    tag_rows = {row["individual_request_tag"]: row for row in exact(admin.get("/spend/tags", params=params))}
    assert tag_rows[tags[0]]["total_spend"] == tag_rows[tags[1]]["total_spend"] == Decimal("0.3")
    assert totals["total_spend"] >= Decimal("0.3")  # other tests' history on those days counts too
    long_after = exact(admin.get("/spend/teams", params={"start_date": "2024-03-02", "end_date": "2024-03-02"}))
    assert {row["team_id"]: row for row in long_after}[team_id]["total_spend"] == Decimal("123456789.123456789")


@pytest.mark.parametrize("path", ["/spend/teams", "/spend/users", "/spend/tags/totals"])
def test_the_dated_reports_take_the_same_ranges_and_need_the_master_key(gateway, admin, path):
    for params, fragment in [
        ({"start_date": "2025-13-01", "end_date": "2025-12-31"}, "start_date"),
        ({"start_date": "2025-01-02", "end_date": "2025-01-01"}, "after"),
        ({"start_date": "2024-01-01", "end_date": "2025-01-01"}, "366"),  # 367 days
    ]:
        status, kind, text = error_of(admin.get(path, params=params))
        assert (status, kind) == (400, "invalid_request_error") and fragment in text
    assert admin.get(path).status_code == 200  # the last 30 days
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        assert error_of(client.get(path))[0] == 401
        assert error_of(client.get(path, headers={"x-api-key": stored_key()}))[:2] == (403, "permission_error")


# -- the access line and the Team dimension --------------------------------------------------------------------------


def test_the_access_line_and_the_blobs_carry_team_user_and_claude_code_session(gateway, admin, captured):
    team = new_team(admin)
    user = new_user(admin, teams=[team["team_id"]])
    key = new_key(admin, team_id=team["team_id"], user_id=user["user_id"])["key"]
    session = "4f1c2a9e-8b7d-4c3e-9a1f-0e2d3c4b5a69"

    response = raw(gateway, key, headers={"x-claude-code-session-id": session})
    lines = captured.for_request(response.headers["x-gateway-request-id"])
    access = lines.access
    assert (access["team_id"], access["user_id"], access["session_id"]) == (team["team_id"], user["user_id"], session)
    assert lines.overall()["Team"] == team["team_id"]  # a registered team is a dimension value of its own
    assert ["service", "Team"] in lines.overall()["_aws"]["CloudWatchMetrics"][0]["Dimensions"]
    for blob in lines.blobs:  # metadata on every blob of the request, for Logs Insights
        assert (blob["team_id"], blob["user_id"]) == (team["team_id"], user["user_id"])

    # The session id is the client's: kept to 128 printable ASCII bytes, else left out.
    long = raw(gateway, key, headers={"x-claude-code-session-id": "s" * 5000})
    assert captured.for_request(long.headers["x-gateway-request-id"]).access["session_id"] == "s" * 128
    odd = raw(gateway, key, headers={"x-claude-code-session-id": "abc\tdef"})
    assert "session_id" not in captured.for_request(odd.headers["x-gateway-request-id"]).access
    foreign = raw(gateway, key, headers={"x-claude-code-session-id": "café".encode()})
    assert "session_id" not in captured.for_request(foreign.headers["x-gateway-request-id"]).access

    # A key with no team, and the master key: no Team dimension, no team_id.
    for other in (stored_key(), MASTER_KEY):
        plain = raw(gateway, other)
        plain_lines = captured.for_request(plain.headers["x-gateway-request-id"])
        assert "Team" not in plain_lines.overall() and "team_id" not in plain_lines.access
        assert ["service", "Team"] not in plain_lines.overall()["_aws"]["CloudWatchMetrics"][0]["Dimensions"]


def newest_team(admin, **fields):
    """A team created after every team the suite stored, whatever clocks other tests moved: a refresh of the
    registry (one may start in the background whenever KEY_CACHE_TTL passes) keeps the oldest, never this one."""
    later = keys.utcnow() + timedelta(days=365 * 200)
    with pytest.MonkeyPatch.context() as clock:
        clock.setattr(keys, "utcnow", lambda: later)
        return new_team(admin, **fields)


def test_a_team_the_registry_does_not_hold_is_counted_as_other(gateway, admin, captured, monkeypatch):
    """Teams past the registry's bound (MAX_DIMENSION_TEAMS, the oldest kept) are `other`: the dimension's values
    stay bounded however many teams there are."""
    registry = gateway.app.runtime.team_registry
    registry.load()  # a fresh copy: one read in flight could still drop teams other tests deleted
    held = len(registry.snapshot())
    monkeypatch.setattr(registry, "limit", held)
    team = newest_team(admin)
    assert team["team_id"] not in registry.snapshot()
    key = new_key(admin, team_id=team["team_id"])["key"]

    response = raw(gateway, key)
    lines = captured.for_request(response.headers["x-gateway-request-id"])
    assert lines.overall()["Team"] == metrics.OTHER
    assert lines.access["team_id"] == team["team_id"]  # the access log keeps the id

    # CloudWatch takes only ASCII dimension values: a registered team named otherwise is `other` too.
    monkeypatch.setattr(registry, "limit", held + 10)
    accented = newest_team(admin, team_id=unique("\u00e9quipe"))["team_id"]
    assert accented in registry.snapshot()
    response = raw(gateway, new_key(admin, team_id=accented)["key"])
    lines = captured.for_request(response.headers["x-gateway-request-id"])
    assert (lines.overall()["Team"], lines.access["team_id"]) == (metrics.OTHER, accented)

    monkeypatch.setattr(registry, "limit", held + 1)
    registry.refresh()  # what a refresh after KEY_CACHE_TTL does; the newest team is the one left out
    assert len(registry.snapshot()) == held + 1


def test_the_team_registry_reads_teams_created_elsewhere_without_io_on_the_request_path(gateway, admin):
    """A team created through another instance (here: straight into the table) reaches this process's registry
    with a refresh, which a stale registry starts in a thread of its own; snapshots never wait for it."""
    from anthropic_gateway.settings import get_settings
    from anthropic_gateway.storage import table

    team = teams.TeamRecord(
        team_id=unique("elsewhere"), created_at="2026-01-01T00:00:00+00:00", updated_at="2026-01-01T00:00:00+00:00"
    )
    table.handle().put_item(Item=team.to_item())
    registry = teams.TeamRegistry(get_settings())
    assert team.team_id not in registry.snapshot()  # answers at once; the refresh it started runs in its own thread
    registry.refresh()
    assert registry.snapshot()[team.team_id].created_at == team.created_at

    # Created and deleted through the gateway: in its registry at once.
    served = gateway.app.runtime.team_registry
    created = new_team(admin)["team_id"]
    assert created in served.snapshot()
    ok(admin.post("/team/delete", json={"team_ids": [created]}))
    assert created not in served.snapshot()


def test_a_cold_instance_counts_its_first_team_request_under_the_team(gateway, admin, captured, fake_upstream):
    """The registry starts its read as a team key's request arrives (not when the metrics are written), so even a
    fresh instance's first request of a team gets the team's own value."""
    team_id = new_team(admin)["team_id"]
    key = new_key(admin, team_id=team_id)["key"]
    gateway.app.runtime.team_registry.clear()  # as on a cold instance: nothing read yet
    gate = unique("cold")
    body = {"model": MODEL, "max_tokens": 16, "stream": True, "messages": HELLO}
    with (
        httpx.Client(base_url=gateway.url + "/anthropic", headers={"x-api-key": key}, timeout=30) as http,
        http.stream("POST", "/v1/messages", json=body, headers={"x-fake-hold": gate}) as response,
    ):
        # The stream's head is here: the key was authenticated and the registry's read started in its own thread.
        for thread in threading.enumerate():
            if thread.name == "team-registry":
                thread.join()
        fake_upstream.release(gate)
        response.read()
    assert captured.for_request(response.headers["x-gateway-request-id"]).overall()["Team"] == team_id
