"""The team, user and tag APIs under property-based fuzzing, as the key API is (test_fuzz_admin.py): any JSON in
any field gets a 2xx or a 4xx in Anthropic's shape, never a 5xx, and the reads still answer after each case."""

from __future__ import annotations

from urllib.parse import quote

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from support.orgs import unique
from tests.conftest import MASTER_KEY
from tests.test_fuzz_admin import EDGE_NUMBERS, EDGE_STRINGS, FUZZ, assert_answered_well, deep, json_values, post

durations = st.from_regex(r"\A\d{1,7}(s|m|h|d|w|mo)\Z") | EDGE_STRINGS
limits = st.integers(min_value=-5, max_value=10**13)
ids = st.text(min_size=1, max_size=12).map(lambda text: f"fz-{text}") | EDGE_STRINGS
metadata = st.dictionaries(st.text(max_size=6), json_values, max_size=5) | st.integers(0, 60).map(
    lambda depth: {"d": deep(depth)}
)
member = st.fixed_dictionaries(
    {},
    optional={
        "user_id": ids,
        "user_email": st.emails() | EDGE_STRINGS,
        "role": st.sampled_from(["admin", "user", "x"]),
    },
)
plausible = {
    "models": st.lists(st.text(max_size=30) | EDGE_STRINGS, max_size=5),
    "max_budget": st.floats(min_value=0, max_value=1e13) | EDGE_NUMBERS,
    "max_budget_in_team": st.floats(min_value=0, max_value=1e13) | EDGE_NUMBERS,
    "budget_duration": durations,
    "duration": durations,
    "rpm_limit": limits,
    "tpm_limit": limits,
    "max_parallel_requests": limits,
    "metadata": metadata,
    "tags": st.lists(st.text(max_size=70) | st.sampled_from(["team:a", "app:b"]), max_size=12),
    "blocked": st.booleans(),
    "team_alias": st.text(max_size=300),
    "user_alias": st.text(max_size=300),
    "user_email": st.emails() | EDGE_STRINGS,
    "user_role": st.sampled_from(["internal_user", "proxy_admin", "root"]),
    "teams": st.lists(ids, max_size=3),
    "auto_create_key": st.booleans(),
    "members_with_roles": st.lists(member, max_size=3),
    "member": member | st.lists(member, max_size=3),
    "role": st.sampled_from(["admin", "user", "x"]),
    "description": st.text(max_size=1100),
    "name": st.text(max_size=70),
}


def bodies(*fields: str) -> st.SearchStrategy[dict]:
    values = st.sampled_from(fields).flatmap(
        lambda name: st.tuples(st.just(name), plausible[name] | json_values | EDGE_NUMBERS | EDGE_STRINGS)
    )
    return st.lists(values, max_size=5).map(dict) | st.dictionaries(st.text(max_size=10), json_values, max_size=3)


SCOPE = ("models", "max_budget", "budget_duration", "rpm_limit", "tpm_limit", "max_parallel_requests")
TEAM = (*SCOPE, "team_alias", "tags", "metadata", "blocked", "members_with_roles")
USER = (*SCOPE, "user_alias", "user_email", "user_role", "metadata", "blocked", "teams", "auto_create_key", "duration")
TAG = (*SCOPE, "description")


@pytest.fixture(scope="module")
def master(gateway):
    with httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {MASTER_KEY}"}, timeout=30) as http:
        yield http


@pytest.fixture(scope="module")
def team(master):
    """One team, one member and one tag every case may change: whatever a case leaves must still be readable."""
    team_id, user_id, tag = unique("fz-team"), unique("fz-user"), unique("fz-tag")
    assert master.post("/team/new", json={"team_id": team_id, "members_with_roles": [{"user_id": user_id}]}).is_success
    assert master.post("/tag/new", json={"name": tag}).is_success
    yield {"team_id": team_id, "user_id": user_id, "name": tag}
    master.post("/team/delete", json={"team_ids": [team_id]})
    master.post("/user/delete", json={"user_ids": [user_id]})
    master.post("/tag/delete", json={"name": tag})


def assert_reads_still_work(http: httpx.Client, existing: dict) -> None:
    for path, query in (
        ("/team/info", {"team_id": existing["team_id"]}),
        ("/user/info", {"user_id": existing["user_id"]}),
        ("/tag/info", {"name": existing["name"]}),
        ("/team/list", {}),
        ("/user/list", {"page_size": 100}),
        ("/tag/list", {}),
    ):
        response = http.get(path, params=query)
        assert response.status_code == 200, (path, response.text[:500])


def clean_up(http: httpx.Client, path: str, response: httpx.Response) -> None:
    if response.status_code != 200:
        return
    created = response.json()
    if path == "/team/new":
        http.post("/team/delete", json={"team_ids": [created["team_id"]]})
        ids = [member["user_id"] for member in created["members_with_roles"]]
        if ids:
            http.post("/user/delete", json={"user_ids": ids})
    elif path == "/user/new":
        http.post("/user/delete", json={"user_ids": [created["user_id"]]})
    elif path == "/tag/new":
        http.post("/tag/delete", json={"name": created["tag"]["name"]})


@FUZZ
@given(data=st.data())
def test_creates_never_fail_with_a_5xx(master, team, data):
    path, fields = data.draw(st.sampled_from([("/team/new", TEAM), ("/user/new", USER), ("/tag/new", (*TAG, "name"))]))
    response = post(master, path, data.draw(bodies(*fields)))
    assert_answered_well(response)
    try:
        assert_reads_still_work(master, team)
    finally:
        clean_up(master, path, response)


@FUZZ
@given(data=st.data())
def test_changes_never_fail_with_a_5xx(master, team, data):
    path, fields, target = data.draw(
        st.sampled_from(
            [
                ("/team/update", TEAM[:-1], "team_id"),
                ("/team/member_update", ("role", "max_budget_in_team", "budget_duration"), "team_id"),
                ("/team/member_add", ("member", "max_budget_in_team", "budget_duration"), "team_id"),
                ("/user/update", USER[:-3], "user_id"),
                ("/tag/update", TAG, "name"),
            ]
        )
    )
    body = {**data.draw(bodies(*fields)), target: team[target]}
    if path == "/team/member_update":
        body["user_id"] = team["user_id"]
    response = post(master, path, body)
    assert_answered_well(response)
    if path == "/team/member_add" and response.status_code == 200:
        added = [user["user_id"] for user in response.json()["updated_users"] if user["user_id"] != team["user_id"]]
        master.post("/user/delete", json={"user_ids": added})
    assert_reads_still_work(master, team)


@FUZZ
@given(value=json_values | EDGE_STRINGS)
def test_lookups_by_any_name_never_fail_with_a_5xx(master, value):
    for path, body in (
        ("/team/block", {"team_id": value}),
        ("/team/delete", {"team_ids": [value]}),
        ("/team/member_delete", {"team_id": value, "user_email": value}),
        ("/user/delete", {"user_ids": [value]}),
        ("/tag/delete", {"name": value}),
        ("/tag/info", {"names": [value]}),
    ):
        assert_answered_well(post(master, path, body))
    raw = quote(str(value).encode("utf-8", "surrogatepass"), safe="")
    for path, name in (("/team/info", "team_id"), ("/team/list", "user_id"), ("/user/info", "user_id"),
                       ("/user/list", "user_email"), ("/tag/info", "name")):  # fmt: skip
        assert_answered_well(master.get(f"{path}?{name}={raw}"))
