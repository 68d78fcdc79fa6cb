"""Issue 19's rule on the pass-through: a request is admitted only if every scope it belongs to allows it (its key,
its team, its membership in that team, its user, each registered tag it carries). Through the real SDK and raw HTTP
against the running gateway, with moto as DynamoDB; spend is read from the table, exactly.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import anthropic
import httpx
import pytest

from anthropic_gateway import keys
from anthropic_gateway.storage import key_records, table
from anthropic_gateway.storage.layout import TAG_SK, TEAM_SK, USER_SK, member_sk, tag_pk, team_pk, user_pk
from support.orgs import error_of, new_key, ok, unique
from support.waiting import eventually
from tests.test_governance import HELLO, MODEL, cost, usage_header

USAGE = {"input_tokens": 10, "output_tokens": 40}
ONE = cost(**USAGE)  # what each request here costs


@pytest.fixture
def frozen_clock(monkeypatch):
    """Rate windows read keys.utcnow: pinned to the start of a minute, moved by hand."""
    now = [datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(days=1)]
    monkeypatch.setattr(keys, "utcnow", lambda: now[0])
    return now


def post_exact(admin: httpx.Client, path: str, body: dict) -> dict:
    """POST with amounts written exactly as the Decimals they are (httpx would send floats)."""
    text = json.dumps(body, default=lambda amount: f"__{amount}__")
    text = text.replace('"__', "").replace('__"', "")
    return ok(admin.post(path, content=text, headers={"content-type": "application/json"}))


def team(admin: httpx.Client, **settings: object) -> str:
    team_id = unique("team")
    post_exact(admin, "/team/new", {"team_id": team_id, **settings})
    return team_id


def user(admin: httpx.Client, *, teams: tuple[str, ...] = (), **settings: object) -> str:
    user_id = unique("user")
    post_exact(admin, "/user/new", {"user_id": user_id, "teams": list(teams), "auto_create_key": False, **settings})
    return user_id


def key(admin: httpx.Client, **settings: object) -> str:
    return str(new_key(admin, **settings)["key"])


def sdk(gateway, api_key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url + "/anthropic", api_key=api_key, max_retries=0)


def ask(gateway, api_key: str, *, model: str = MODEL, tags: str | None = None) -> httpx.Response:
    """One Messages request over raw HTTP, costing ONE."""
    headers = {"x-api-key": api_key, "anthropic-version": "2023-06-01", **usage_header(**USAGE)}
    if tags is not None:
        headers["x-litellm-tags"] = tags
    body = {"model": model, "max_tokens": USAGE["output_tokens"], "messages": HELLO}
    return httpx.post(gateway.url + "/anthropic/v1/messages", headers=headers, json=body, timeout=30)


def record(pk: str, sk: str) -> dict:
    return table.get(pk, sk) or {}


def key_item(api_key: str) -> dict:
    return record(key_records.record_pk(keys.hash_key(api_key)), "KEY")


def spend_of(item: dict) -> Decimal:
    return Decimal(item.get("spend", 0))


def nothing_held(item: dict) -> bool:
    return item.get("reserved", 0) == 0 and not item.get("reservations")


def refused_as(response: httpx.Response, status: int, kind: str, message: str) -> bool:
    return response.status_code == status and error_of(response) == (status, kind, message)


def over_budget(response: httpx.Response, named: str, budget: Decimal) -> bool:
    """Whether `response` is the 402 of the scope `named` (e.g. "Team 'search'") having reached `budget`."""
    status, kind, message = error_of(response)
    assert (status, kind) == (402, "billing_error"), message
    assert response.headers["x-should-retry"] == "false"
    return refused_budget(message, named) == budget


def refused_budget(message: str, named: str) -> Decimal | None:
    """The budget a refusal of `named` names ("Team 'search' has reached its budget of $5000.00 ..."), if it is one."""
    found = re.match(re.escape(named) + r" has reached (?:its|their) budget of \$([0-9.]+)", message)
    return Decimal(found.group(1)) if found else None


# -- budgets ------------------------------------------------------------------------------------------------------


def test_a_team_budget_holds_for_100_concurrent_requests_through_10_keys(admin, gateway, fake_upstream):
    budget = ONE * 5
    team_id = team(admin, max_budget=budget)
    team_keys = [key(admin, team_id=team_id) for _ in range(10)]
    stream = {**usage_header(**USAGE), "x-fake-chunks": "4", "x-fake-delay-ms": "20"}

    def attempt(index: int) -> bool:
        client = sdk(gateway, team_keys[index % 10])
        try:
            with client.messages.stream(
                model=MODEL, max_tokens=USAGE["output_tokens"], messages=HELLO, extra_headers=stream
            ) as answer:
                return answer.get_final_message().usage.output_tokens == USAGE["output_tokens"]
        except anthropic.APIStatusError as exc:
            assert exc.status_code == 402, exc
            assert refused_budget(exc.body["error"]["message"], f"Team {team_id!r}") == budget, exc.body
            return False

    with ThreadPoolExecutor(max_workers=100) as pool:
        admitted = sum(pool.map(attempt, range(100)))
    assert admitted >= 1
    # Then one at a time until the team's budget refuses: what the burst's reservations left is still usable.
    for _ in range(10):
        if ask(gateway, team_keys[admitted % 10]).status_code != 200:
            break
        admitted += 1
        gateway.drain()
    gateway.drain()

    team_item = record(team_pk(team_id), TEAM_SK)
    # Every request's estimate covers its cost, so the last one admitted is the only one that can cross the budget:
    # within the bound "the requests in flight when it was crossed", by at most one request.
    assert spend_of(team_item) == ONE * admitted < budget + ONE
    assert team_item["requests"] == admitted and nothing_held(team_item)
    items = [key_item(api_key) for api_key in team_keys]
    assert sum(spend_of(item) for item in items) == spend_of(team_item)  # exactly: Decimal, no rounding
    assert sum(item.get("requests", 0) for item in items) == admitted
    assert len([r for r in fake_upstream.requests if r.path == "/v1/messages"]) == admitted

    assert all(over_budget(ask(gateway, api_key), f"Team {team_id!r}", budget) for api_key in team_keys)


def test_a_users_budget_holds_across_their_keys_in_two_teams(admin, gateway):
    search, ads = team(admin), team(admin)
    ana = user(admin, teams=(search, ads), max_budget=ONE * Decimal("2.5"))
    in_search, in_ads = key(admin, team_id=search, user_id=ana), key(admin, team_id=ads, user_id=ana)

    assert [ask(gateway, api_key).status_code for api_key in (in_search, in_ads, in_search)] == [200, 200, 200]
    gateway.drain()
    for api_key in (in_ads, in_search):
        assert over_budget(ask(gateway, api_key), f"User {ana!r}", ONE * Decimal("2.5"))

    user_item = record(user_pk(ana), USER_SK)
    assert spend_of(user_item) == ONE * 3 == spend_of(key_item(in_search)) + spend_of(key_item(in_ads))
    assert spend_of(record(team_pk(search), TEAM_SK)) == ONE * 2 and spend_of(record(team_pk(ads), TEAM_SK)) == ONE
    assert spend_of(record(team_pk(search), member_sk(ana))) == ONE * 2  # spend in the team, per member


def test_a_member_budget_holds_inside_its_team_only(admin, gateway):
    search = team(admin)
    bo, cy = user(admin), user(admin)
    post_exact(admin, "/team/member_add", {"team_id": search, "member": {"user_id": bo}, "max_budget_in_team": ONE})
    post_exact(admin, "/team/member_add", {"team_id": search, "member": {"user_id": cy}})
    bos_team_key, bos_own_key = key(admin, team_id=search, user_id=bo), key(admin, user_id=bo)
    cys_team_key = key(admin, team_id=search, user_id=cy)

    assert ask(gateway, bos_team_key).status_code == 200
    gateway.drain()
    refused = ask(gateway, bos_team_key)
    assert over_budget(refused, f"User {bo!r} in team {search!r}", ONE)
    assert "/team/member_update" in error_of(refused)[2]
    # Bo's own key (no team) and Cy's key in the team are not governed by Bo's budget in the team.
    assert ask(gateway, bos_own_key).status_code == 200 and ask(gateway, cys_team_key).status_code == 200
    gateway.drain()
    assert spend_of(record(team_pk(search), member_sk(bo))) == ONE
    assert spend_of(record(user_pk(bo), USER_SK)) == ONE * 2
    assert spend_of(record(team_pk(search), TEAM_SK)) == ONE * 2


def test_a_tag_budget_holds_across_keys_of_different_teams_and_a_teams_default_tags(admin, gateway):
    tag = unique("app:nightly")
    post_exact(admin, "/tag/new", {"name": tag, "max_budget": ONE * Decimal("1.5"), "budget_duration": "1d"})
    first, second = key(admin, team_id=team(admin)), key(admin, team_id=team(admin))
    tagging_team = team(admin, tags=[tag])  # every request of its keys carries the tag
    third = key(admin, team_id=tagging_team)

    assert ask(gateway, first, tags=tag).status_code == 200
    assert ask(gateway, second, tags=tag).status_code == 200
    gateway.drain()
    for api_key, tags in ((first, tag), (second, f"other,{tag}"), (third, None)):
        refused = ask(gateway, api_key, tags=tags)
        assert over_budget(refused, f"Tag {tag!r}", ONE * Decimal("1.5"))
        assert " for this period (spent" in error_of(refused)[2]
    assert ask(gateway, first).status_code == 200  # without the tag, the key's requests go on

    gateway.drain()
    tag_item = record(tag_pk(tag), TAG_SK)
    assert spend_of(tag_item) == ONE * 2 and tag_item["requests"] == 2 and nothing_held(tag_item)


def test_a_tag_budget_holds_from_the_first_request_of_a_process_that_has_not_read_the_registry(admin, gateway):
    tag = unique("app:cold")
    post_exact(admin, "/tag/new", {"name": tag, "max_budget": 0})
    gateway.app.runtime.tag_registry.clear()  # as a new instance starts: no copy of the registered tags yet
    refused = ask(gateway, key(admin), tags=tag)  # the registry is read for this request, not after it
    assert over_budget(refused, f"Tag {tag!r}", Decimal(0))


# -- models and rates ---------------------------------------------------------------------------------------------


def test_the_models_a_request_may_use_are_the_intersection_of_its_scopes_allowlists(admin, gateway):
    search = team(admin, models=["claude-sonnet-4-5", "claude-opus-4-*"])
    ana = user(admin, teams=(search,), models=["claude-sonnet-4-5", "claude-haiku-4-5"])
    narrow = key(admin, team_id=search, user_id=ana, models=["claude-haiku-4-5", "claude-sonnet-4-5"])
    open_key = key(admin, team_id=search, user_id=ana)

    def refusal(api_key: str, model: str) -> str:
        status, kind, message = error_of(ask(gateway, api_key, model=model))
        assert (status, kind) == (403, "permission_error"), message
        return message

    assert ask(gateway, narrow, model="claude-sonnet-4-5").status_code == 200  # in all three lists
    assert refusal(narrow, "claude-haiku-4-5").startswith(f"Team {search!r} may not use model 'claude-haiku-4-5'")
    assert refusal(narrow, "claude-opus-4-1").startswith("This key may not use model 'claude-opus-4-1'")
    assert refusal(open_key, "claude-opus-4-1").startswith(f"User {ana!r} may not use model 'claude-opus-4-1'")
    assert ask(gateway, key(admin, team_id=search), model="claude-opus-4-1").status_code == 200  # no user: team only


def test_a_team_rpm_limit_counts_the_requests_of_all_its_keys(admin, gateway, frozen_clock):
    search = team(admin, rpm_limit=3)
    first, second = key(admin, team_id=search), key(admin, team_id=search)
    assert [ask(gateway, api_key).status_code for api_key in (first, second, first)] == [200, 200, 200]

    for api_key in (second, first):
        limited = ask(gateway, api_key)
        status, kind, message = error_of(limited)
        assert (status, kind) == (429, "rate_limit_error")
        assert message.startswith(f"Rate limit reached: team {search!r} may make 3 requests per minute")
        assert limited.headers["retry-after"] == "60"  # the clock is at the start of a minute
    assert ask(gateway, key(admin)).status_code == 200  # a key of no team is not counted

    frozen_clock[0] += timedelta(minutes=1)
    assert ask(gateway, second).status_code == 200


def governed_by(admin: httpx.Client, kind: str, **limits: object) -> tuple[str, str, str | None, str]:
    """Two keys whose requests a scope of `kind` (team, user, tag) with `limits` governs, and nothing else does:
    the keys, the tags their requests carry to belong to it, and the scope as a refusal names it."""
    if kind == "team":
        team_id = team(admin, **limits)
        return key(admin, team_id=team_id), key(admin, team_id=team_id), None, f"team {team_id!r}"
    if kind == "user":
        search = team(admin)
        ana = user(admin, teams=(search,), **limits)
        return key(admin, user_id=ana), key(admin, team_id=search, user_id=ana), None, f"user {ana!r}"
    tag = unique("app:limited")
    post_exact(admin, "/tag/new", {"name": tag, **limits})
    return key(admin, team_id=team(admin)), key(admin, team_id=team(admin)), tag, f"tag {tag!r}"


def rate_limited(response: httpx.Response) -> str:
    """The message of a 429 refusal at the start of the frozen minute (retry-after: the whole minute)."""
    status, kind, message = error_of(response)
    assert (status, kind) == (429, "rate_limit_error"), message
    assert response.headers["retry-after"] == "60" and message.endswith(" Retry in 60 s."), message
    return message


@pytest.mark.parametrize("kind", ["user", "tag"])
def test_a_user_or_tag_rpm_limit_counts_the_requests_of_all_its_keys(admin, gateway, frozen_clock, kind):
    first, second, tags, named = governed_by(admin, kind, rpm_limit=1)
    assert ask(gateway, first, tags=tags).status_code == 200
    message = rate_limited(ask(gateway, second, tags=tags))
    assert message == f"Rate limit reached: {named} may make 1 request per minute. Retry in 60 s."
    assert ask(gateway, key(admin)).status_code == 200  # a key outside the scope is not counted
    if kind == "tag":
        assert ask(gateway, second).status_code == 200  # without the tag, the key is not in the tag's scope

    frozen_clock[0] += timedelta(minutes=1)
    assert ask(gateway, second, tags=tags).status_code == 200


@pytest.mark.parametrize("kind", ["team", "user", "tag"])
def test_a_team_user_or_tag_tpm_limit_counts_the_tokens_of_all_its_keys(admin, gateway, frozen_clock, kind):
    tokens = USAGE["input_tokens"] + USAGE["output_tokens"]  # what each request here uses
    first, second, tags, named = governed_by(admin, kind, tpm_limit=tokens)
    assert ask(gateway, first, tags=tags).status_code == 200
    gateway.drain()  # its tokens count from its settle on
    message = rate_limited(ask(gateway, second, tags=tags))
    used = f"may use {tokens} tokens per minute and has used {tokens} in this one"
    assert message == f"Rate limit reached: {named} {used}. Retry in 60 s."
    assert ask(gateway, key(admin)).status_code == 200  # a key outside the scope is not counted

    frozen_clock[0] += timedelta(minutes=1)
    assert ask(gateway, second, tags=tags).status_code == 200


def test_a_tags_models_allowlist_applies_to_every_request_that_carries_it(admin, gateway):
    tag = unique("app:haiku-only")
    post_exact(admin, "/tag/new", {"name": tag, "models": ["claude-haiku-4-5"]})
    api_key = key(admin, team_id=team(admin))

    status, kind, message = error_of(ask(gateway, api_key, model="claude-sonnet-4-5", tags=f"other,{tag}"))
    assert (status, kind) == (403, "permission_error")
    assert message == f"Tag {tag!r} may not use model 'claude-sonnet-4-5' (model). Allowed models: claude-haiku-4-5."
    assert ask(gateway, api_key, model="claude-haiku-4-5", tags=tag).status_code == 200
    assert ask(gateway, api_key, model="claude-sonnet-4-5").status_code == 200  # without the tag: no allowlist


def test_a_team_parallel_limit_counts_the_streams_of_all_its_keys(admin, gateway):
    search = team(admin, max_parallel_requests=1)
    first, second = key(admin, team_id=search), key(admin, team_id=search)
    slow = {"x-fake-chunks": "50", "x-fake-delay-ms": "100"}
    with sdk(gateway, first).messages.stream(model=MODEL, max_tokens=64, messages=HELLO, extra_headers=slow) as s:
        next(iter(s.text_stream))  # in flight, holding the team's only slot
        limited = ask(gateway, second)
        assert error_of(limited)[:2] == (429, "rate_limit_error") and limited.headers["retry-after"] == "1"
        assert f"team {search!r} may have 1 in flight" in error_of(limited)[2]
    gateway.drain()
    assert ask(gateway, second).status_code == 200


# -- blocking -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["team", "user"])
def test_blocking_a_team_or_a_user_stops_its_keys_and_unblocking_restores_them(admin, gateway, kind):
    search = team(admin)
    ana = user(admin, teams=(search,))
    both, own = key(admin, team_id=search, user_id=ana), key(admin, user_id=ana)
    stopped = [both] if kind == "team" else [both, own]
    going = [own] if kind == "team" else []
    named = search if kind == "team" else ana

    if kind == "team":
        ok(admin.post("/team/block", json={"team_id": search}))
    else:
        ok(admin.post("/user/update", json={"user_id": ana, "blocked": True}))
    for api_key in stopped:  # through this instance: at once
        blocked = f"This key's {kind} {named!r} is blocked."
        assert error_of(ask(gateway, api_key)) == (401, "authentication_error", blocked)
    assert all(ask(gateway, api_key).status_code == 200 for api_key in going)

    if kind == "team":
        ok(admin.post("/team/unblock", json={"team_id": search}))
    else:
        ok(admin.post("/user/update", json={"user_id": ana, "blocked": False}))
    assert all(ask(gateway, api_key).status_code == 200 for api_key in stopped)


def test_a_team_blocked_by_another_instance_stops_its_keys_within_the_cache_ttl(admin, gateway):
    search = team(admin, max_budget=100)
    team_key = key(admin, team_id=search)
    assert ask(gateway, team_key).status_code == 200  # the team is cached here now
    # Another instance's /team/block: the record changes in the table, this instance's cache does not know.
    table.write([table.Update(team_pk(search), TEAM_SK, "SET blocked = :yes", None, {}, {":yes": True})])
    refused = ask(gateway, team_key)  # refused by the budget hold at once, or by the reread team after the TTL
    assert error_of(refused) == (401, "authentication_error", f"This key's team {search!r} is blocked.")

    table.write([table.Update(team_pk(search), TEAM_SK, "SET blocked = :no", None, {}, {":no": False})])
    eventually(lambda: ask(gateway, team_key).status_code == 200, what="the unblocked team read again after the TTL")


def test_a_key_of_a_user_removed_from_the_team_is_refused(admin, gateway):
    search = team(admin)
    ana = user(admin, teams=(search,))
    team_key = key(admin, team_id=search, user_id=ana)
    assert ask(gateway, team_key).status_code == 200
    # The membership gone, its keys not yet (what a member_delete stopped half-way leaves).
    table.write([table.Delete(team_pk(search), member_sk(ana))])
    message = f"This key's user {ana!r} is no longer in team {search!r}."
    eventually(lambda: refused_as(ask(gateway, team_key), 401, "authentication_error", message), what="refused")


# -- cost ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def long_cache_ttl(gateway_with):
    """A gateway whose KEY_CACHE_TTL is 60 s (the tests run with 0.5 s), so that what is cached stays cached for the
    test (the keys, teams and users it asks about are made through the session's gateway)."""
    return gateway_with(key_cache_ttl=60.0)


READS = ("GetItem", "BatchGetItem", "Query")


def _request_reads(aws_calls) -> list[str]:
    """The reads requests make themselves: not the registries' listing of teams and tags (one Query of gsi1 per
    KEY_CACHE_TTL, made in the background whenever it falls due, so it can land in any window), nor the sweep of
    open batches a gateway's first request starts (one Query of gsi1 a minute, in the background)."""
    return [operation for operation, body in aws_calls if operation in READS and b'"gsi1"' not in body]


def test_a_key_without_team_user_or_tags_reads_what_it_read_before(admin, long_cache_ttl, aws_calls):
    gateway = long_cache_ttl
    plain = key(admin)
    aws_calls.clear()
    assert ask(gateway, plain).status_code == 200
    assert _request_reads(aws_calls) == ["GetItem"]  # its record, once
    aws_calls.clear()
    assert ask(gateway, plain).status_code == 200
    gateway.drain()
    assert _request_reads(aws_calls) == []


def test_a_team_keys_owners_are_read_in_one_call_then_cached(admin, long_cache_ttl, aws_calls):
    gateway = long_cache_ttl
    search = team(admin, max_budget=100)
    ana = user(admin, teams=(search,), max_budget=100)
    team_key = key(admin, team_id=search, user_id=ana)
    aws_calls.clear()
    assert ask(gateway, team_key).status_code == 200
    # Its record, then its team, user and membership together, under the request's deadline.
    assert _request_reads(aws_calls) == ["GetItem", "BatchGetItem"]
    aws_calls.clear()
    assert ask(gateway, team_key).status_code == 200
    gateway.drain()
    assert _request_reads(aws_calls) == []
