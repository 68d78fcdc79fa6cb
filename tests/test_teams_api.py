"""The team API over raw HTTP, as curl or a LiteLLM script uses it: teams, members and their budgets, team keys,
and what deleting a team takes with it."""

from __future__ import annotations

from decimal import Decimal

import pytest

from anthropic_gateway import org_api
from anthropic_gateway.storage import table, teams
from anthropic_gateway.storage.layout import TEAM_SK, member_sk, team_pk
from support.orgs import error_of, exact, new_key, new_team, new_user, ok, unique, works

# -- /team/new ----------------------------------------------------------------------------------------------------


def test_new_team_stores_every_setting_and_answers_in_litellms_shape(admin):
    settings = {
        "team_id": unique("search"),
        "team_alias": "Search",
        "models": ["claude-sonnet-4-5", "claude-haiku-*"],
        "max_budget": 5000,
        "budget_duration": "30d",
        "rpm_limit": 600,
        "tpm_limit": 2_000_000,
        "max_parallel_requests": 40,
        "tags": ["team:search"],
        "metadata": {"cost_center": "CC-42", "owners": ["ana@example.com"]},
    }
    team = ok(admin.post("/team/new", json=settings))

    assert {name: team[name] for name in settings} == settings
    assert list(team)[:2] == ["team_id", "team_alias"]
    assert team["blocked"] is False and team["members_with_roles"] == [] and team["key_count"] == 0
    assert team["spend"] == team["reserved_spend"] == 0 and team["budget_reset_at"] > team["created_at"]
    info = ok(admin.get("/team/info", params={"team_id": settings["team_id"]}))
    assert info["team_id"] == settings["team_id"] and info["team_info"] == team
    assert info["keys"] == [] and info["team_memberships"] == []


def test_budgets_are_exact_decimals_from_the_wire_to_the_table_and_back(admin):
    raw = f'{{"team_id": "{unique("exact")}", "max_budget": 123456789.123456789}}'
    team = exact(admin.post("/team/new", content=raw))
    assert team["max_budget"] == Decimal("123456789.123456789")
    item = table.get(team_pk(team["team_id"]), TEAM_SK)
    assert item["max_budget"] == item["budget_headroom"] == Decimal("123456789.123456789")
    assert item["spend"] == item["reserved"] == 0 and item["reservations"] == {}  # the hold bookkeeping, started
    status, _, text = error_of(admin.post("/team/new", content=b'{"max_budget": 1.0000000000000000001}'))
    assert status == 400 and "max_budget" in text  # more digits than anyone means: refused, never rounded


def test_a_team_id_is_generated_when_not_given_and_never_reused(admin):
    first = ok(admin.post("/team/new", json={"team_alias": "no id"}))
    second = ok(admin.post("/team/new", json={"team_alias": "no id"}))
    assert first["team_id"] != second["team_id"] and len(first["team_id"]) == 36

    status, kind, text = error_of(admin.post("/team/new", json={"team_id": first["team_id"]}))
    assert (status, kind) == (409, "invalid_request_error") and first["team_id"] in text
    assert ok(admin.get("/team/info", params={"team_id": first["team_id"]}))["team_info"]["team_alias"] == "no id"


def test_new_team_with_members_creates_missing_users_in_the_same_write(admin):
    existing = new_user(admin)["user_id"]
    fresh = unique("fresh")
    team = new_team(
        admin,
        members_with_roles=[{"user_id": existing, "role": "admin"}, {"user_id": fresh}],
    )
    assert team["members_with_roles"] == sorted(
        [{"user_id": existing, "role": "admin"}, {"user_id": fresh, "role": "user"}], key=lambda m: m["user_id"]
    )
    for user_id in (existing, fresh):
        user = ok(admin.get("/user/info", params={"user_id": user_id}))
        assert user["user_info"]["teams"] == [team["team_id"]]
    assert ok(admin.get("/user/info", params={"user_id": fresh}))["user_info"]["user_role"] == "internal_user"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"max_budget": -1}, "max_budget"),
        ({"max_budget": "5"}, "max_budget"),
        ({"max_budget": 1e13}, "max_budget"),
        ({"budget_duration": "a month"}, "budget_duration"),
        ({"budget_duration": "36501d"}, "budget_duration"),
        ({"rpm_limit": 1.5}, "rpm_limit"),
        ({"tpm_limit": -1}, "tpm_limit"),
        ({"models": ["x"] * 101}, "models"),
        ({"tags": ["sk-" + "a" * 30]}, "tags"),
        ({"tags": [f"t{i}" for i in range(11)]}, "tags"),
        ({"metadata": {"": 1}}, "metadata"),
        ({"metadata": {"blob": "x" * 20000}}, "metadata"),
        ({"team_id": "has space"}, "team_id"),
        ({"team_id": ""}, "team_id"),
        ({"team_id": "x" * 257}, "team_id"),
        ({"team_alias": "\x00"}, "team_alias"),
        ({"members_with_roles": [{"user_id": "u", "role": "owner"}]}, "members_with_roles"),
        ({"members_with_roles": [{"user_id": f"u{i}"} for i in range(21)]}, "members_with_roles"),
        ({"organization_id": "org"}, "organization_id"),
    ],
)
def test_new_team_refuses_every_value_out_of_range_with_a_400_naming_the_field(admin, body, field):
    status, kind, text = error_of(admin.post("/team/new", json=body))
    assert (status, kind) == (400, "invalid_request_error") and field in text


def test_bodies_that_are_not_json_objects_are_400s(admin):
    for content in (b"{", b"[]", b'{"max_budget": NaN}', b"[" * 5000 + b"]" * 5000):
        status, kind, _ = error_of(admin.post("/team/new", content=content))
        assert (status, kind) == (400, "invalid_request_error"), content[:20]


def test_the_team_api_needs_the_master_key(gateway, admin):
    import httpx

    virtual = new_key(admin)["key"]
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        assert http.get("/team/list").status_code == 401
        assert http.post("/team/new", json={}, headers={"authorization": f"Bearer {virtual}"}).status_code == 403
        assert (
            http.get("/team/list", headers={"authorization": "Bearer sk-wrong-0123456789abcdefghij"}).status_code == 401
        )


# -- /team/update, block, info, list ------------------------------------------------------------------------------


def test_update_changes_only_what_is_sent_and_moves_the_headroom_with_the_budget(admin):
    team = new_team(admin, team_alias="before", max_budget=100, models=["claude-haiku-4-5"], tags=["a"])
    table.write([table.Update(  # as if requests had spent 30 and held 5 (what settle and admission write)
        team_pk(team["team_id"]), TEAM_SK, "SET spend = :s, reserved = :r, budget_headroom = :h",
        "attribute_exists(pk)", {}, {":s": Decimal(30), ":r": Decimal(5), ":h": Decimal(65)},
    )])  # fmt: skip

    answer = ok(admin.post("/team/update", json={"team_id": team["team_id"], "max_budget": 250.5, "tags": None}))

    assert answer["team_id"] == team["team_id"]
    updated = answer["data"]
    assert (updated["max_budget"], updated["spend"], updated["reserved_spend"]) == (250.5, 30, 5)
    assert updated["team_alias"] == "before" and updated["models"] == ["claude-haiku-4-5"] and updated["tags"] == []
    item = table.get(team_pk(team["team_id"]), TEAM_SK)
    assert item["budget_headroom"] == item["max_budget"] - item["spend"] - item["reserved"] == Decimal("215.5")

    removed = ok(admin.post("/team/update", json={"team_id": team["team_id"], "max_budget": None}))["data"]
    assert removed["max_budget"] is None
    assert table.get(team_pk(team["team_id"]), TEAM_SK)["budget_headroom"] == -35  # 0 - 30 - 5: no budget left


def test_update_starts_a_new_budget_period_and_refuses_unknown_teams_and_fields(admin):
    team = new_team(admin)
    updated = ok(admin.post("/team/update", json={"team_id": team["team_id"], "budget_duration": "1d"}))["data"]
    assert updated["budget_duration"] == "1d" and updated["budget_reset_at"] > updated["updated_at"]

    status, kind, text = error_of(admin.post("/team/update", json={"team_id": unique("nope"), "rpm_limit": 1}))
    assert (status, kind) == (404, "not_found_error") and "not found" in text
    assert error_of(admin.post("/team/update", json={"rpm_limit": 1}))[0] == 400  # no team_id
    assert error_of(admin.post("/team/update", json={"team_id": team["team_id"], "spend": 0}))[0] == 400


def test_block_and_unblock_answer_the_team(admin):
    team = new_team(admin)
    assert ok(admin.post("/team/block", json={"team_id": team["team_id"]}))["blocked"] is True
    assert ok(admin.get("/team/info", params={"team_id": team["team_id"]}))["team_info"]["blocked"] is True
    assert ok(admin.post("/team/unblock", json={"team_id": team["team_id"]}))["blocked"] is False
    assert error_of(admin.post("/team/block", json={"team_id": unique("nope")}))[0] == 404
    assert error_of(admin.post("/team/block", json={}))[0] == 400


def test_info_shows_spend_reserved_period_members_with_their_spend_and_key_count(admin):
    team = new_team(admin, max_budget=5000, budget_duration="30d")
    user = new_user(admin)["user_id"]
    ok(
        admin.post(
            "/team/member_add",
            json={"team_id": team["team_id"], "member": {"user_id": user}, "max_budget_in_team": 300},
        )
    )
    key = new_key(admin, team_id=team["team_id"], user_id=user)
    table.write([table.Update(  # the member has spent 12.5 in this team
        team_pk(team["team_id"]), member_sk(user), "SET spend = :s, budget_headroom = :h", "attribute_exists(pk)",
        {}, {":s": Decimal("12.5"), ":h": Decimal("287.5")},
    )])  # fmt: skip

    info = ok(admin.get("/team/info", params={"team_id": team["team_id"]}))

    shown = info["team_info"]
    assert (shown["max_budget"], shown["budget_duration"], shown["key_count"]) == (5000, "30d", 1)
    assert {"spend", "reserved_spend", "budget_reset_at"} <= set(shown)
    [membership] = info["team_memberships"]
    assert membership["user_id"] == user and membership["spend"] == 12.5 and membership["max_budget_in_team"] == 300
    assert membership["budget_duration"] == "30d"  # a member budget's period is the team's unless given
    assert membership["litellm_budget_table"]["max_budget"] == 300
    [shown_key] = info["keys"]
    assert shown_key["token"] == key["token"] and shown_key["user_id"] == user and key["key"] not in str(info)


def test_info_and_list_start_a_budget_period_that_ended_while_the_team_was_idle(admin):
    team = new_team(admin, max_budget=10, budget_duration="1d")
    table.write([table.Update(  # spent 4 in a period that ended an hour ago
        team_pk(team["team_id"]), TEAM_SK, "SET spend = :s, budget_headroom = :h, budget_reset_at = :t",
        "attribute_exists(pk)", {}, {":s": Decimal(4), ":h": Decimal(6), ":t": "2020-01-01T00:00:00+00:00"},
    )])  # fmt: skip
    shown = ok(admin.get("/team/info", params={"team_id": team["team_id"]}))["team_info"]
    assert shown["spend"] == 0 and shown["budget_reset_at"] > team["created_at"]
    assert table.get(team_pk(team["team_id"]), TEAM_SK)["budget_headroom"] == 10


def test_info_needs_a_team_that_exists(admin):
    assert error_of(admin.get("/team/info"))[0] == 400
    status, kind, _ = error_of(admin.get("/team/info", params={"team_id": unique("nope")}))
    assert (status, kind) == (404, "not_found_error")
    assert error_of(admin.get("/team/info", params={"team_id": "x" * 5000}))[0] == 404


def test_list_shows_every_team_or_a_users_teams(admin):
    user = new_user(admin)["user_id"]
    mine = new_team(admin, members_with_roles=[{"user_id": user}])
    other = new_team(admin)

    listed = ok(admin.get("/team/list"))
    assert isinstance(listed, list) and {mine["team_id"], other["team_id"]} <= {t["team_id"] for t in listed}
    assert [t["team_id"] for t in ok(admin.get("/team/list", params={"user_id": user}))] == [mine["team_id"]]
    assert error_of(admin.get("/team/list", params={"user_id": unique("nobody")}))[0] == 404


# -- members --------------------------------------------------------------------------------------------------------


def test_member_add_takes_one_member_or_a_list_and_gives_each_a_budget_in_the_team(admin):
    team = new_team(admin, budget_duration="30d", max_budget=1000)
    first, second = new_user(admin)["user_id"], new_user(admin)["user_id"]

    added = ok(
        admin.post("/team/member_add", json={"team_id": team["team_id"], "member": {"user_id": first, "role": "admin"}})
    )
    assert added["members_with_roles"] == [{"user_id": first, "role": "admin"}]
    assert added["updated_team_memberships"][0]["max_budget_in_team"] is None

    body = {
        "team_id": team["team_id"],
        "member": [{"user_id": second}],
        "max_budget_in_team": 250.25,
        "budget_duration": "7d",
    }
    added = ok(admin.post("/team/member_add", json=body))
    [membership] = added["updated_team_memberships"]
    assert (membership["user_id"], membership["max_budget_in_team"], membership["budget_duration"]) == (
        second,
        250.25,
        "7d",
    )
    assert [u["user_id"] for u in added["updated_users"]] == [second]
    assert added["updated_users"][0]["teams"] == [team["team_id"]]
    item = table.get(team_pk(team["team_id"]), member_sk(second))
    assert item["budget_headroom"] == item["max_budget"] == Decimal("250.25") and item["reservations"] == {}


def test_member_add_by_email_finds_the_user_or_creates_one(admin):
    team = new_team(admin)
    email = unique("ana") + "@example.com"
    known = new_user(admin, user_email=email.upper())["user_id"]
    stranger = unique("bo") + "@example.com"

    added = ok(
        admin.post(
            "/team/member_add",
            json={"team_id": team["team_id"], "member": [{"user_email": email}, {"user_email": stranger}]},
        )
    )

    by_email = {u["user_email"]: u for u in added["updated_users"]}
    assert by_email[email.upper()]["user_id"] == known  # emails match whatever their case
    assert by_email[stranger]["teams"] == [team["team_id"]] and len(by_email[stranger]["user_id"]) == 36


def test_member_add_refusals(admin):
    team = new_team(admin)
    user = new_user(admin)["user_id"]
    ok(admin.post("/team/member_add", json={"team_id": team["team_id"], "member": {"user_id": user}}))

    status, kind, text = error_of(
        admin.post("/team/member_add", json={"team_id": team["team_id"], "member": {"user_id": user}})
    )
    assert (status, kind) == (409, "invalid_request_error") and user in text
    assert (
        error_of(admin.post("/team/member_add", json={"team_id": unique("nope"), "member": {"user_id": user}}))[0]
        == 404
    )
    twice = [{"user_id": "dup-" + team["team_id"]}, {"user_id": "dup-" + team["team_id"]}]
    assert error_of(admin.post("/team/member_add", json={"team_id": team["team_id"], "member": twice}))[0] == 400
    same_email = [{"user_email": "Same@x.example"}, {"user_id": unique("other"), "user_email": "same@X.example"}]
    assert error_of(admin.post("/team/member_add", json={"team_id": team["team_id"], "member": same_email}))[0] == 400
    assert error_of(admin.post("/team/member_add", json={"team_id": team["team_id"], "member": {}}))[0] == 400
    many = [{"user_id": f"m{i}"} for i in range(org_api.MAX_PER_CALL + 1)]
    assert error_of(admin.post("/team/member_add", json={"team_id": team["team_id"], "member": many}))[0] == 400
    # Nothing of a refused call is written: the new user of a failed list was not created either.
    late = unique("late")
    body = {"team_id": team["team_id"], "member": [{"user_id": late}, {"user_id": user}]}
    assert error_of(admin.post("/team/member_add", json=body))[0] == 409
    assert error_of(admin.get("/user/info", params={"user_id": late}))[0] == 404


def test_member_update_changes_role_and_budget_keeping_the_headroom_true(admin):
    team = new_team(admin)
    email = unique("cy") + "@example.com"
    user = new_user(admin, user_email=email)["user_id"]
    ok(
        admin.post(
            "/team/member_add", json={"team_id": team["team_id"], "member": {"user_id": user}, "max_budget_in_team": 10}
        )
    )
    table.write([table.Update(
        team_pk(team["team_id"]), member_sk(user), "SET spend = :s, budget_headroom = :h", "attribute_exists(pk)",
        {}, {":s": Decimal(4), ":h": Decimal(6)},
    )])  # fmt: skip

    updated = ok(
        admin.post(
            "/team/member_update",
            json={"team_id": team["team_id"], "user_email": email, "role": "admin", "max_budget_in_team": 20},
        )
    )

    assert (updated["user_id"], updated["role"], updated["max_budget_in_team"], updated["spend"]) == (
        user,
        "admin",
        20,
        4,
    )
    assert updated["user_email"] == email  # as LiteLLM's answer has it
    assert table.get(team_pk(team["team_id"]), member_sk(user))["budget_headroom"] == 16
    roles = ok(admin.get("/team/info", params={"team_id": team["team_id"]}))["team_info"]["members_with_roles"]
    assert roles == [{"user_id": user, "role": "admin"}]
    assert (
        error_of(
            admin.post("/team/member_update", json={"team_id": team["team_id"], "user_id": unique("x"), "role": "user"})
        )[0]
        == 404
    )
    assert error_of(admin.post("/team/member_update", json={"team_id": team["team_id"], "role": "user"}))[0] == 400
    assert (
        error_of(admin.post("/team/member_update", json={"team_id": team["team_id"], "user_id": user, "role": "boss"}))[
            0
        ]
        == 400
    )


def test_member_delete_removes_the_member_and_its_keys_in_the_team_only(gateway, admin):
    team, elsewhere = new_team(admin), new_team(admin)
    user, colleague = new_user(admin)["user_id"], new_user(admin)["user_id"]
    for team_id in (team["team_id"], elsewhere["team_id"]):
        ok(
            admin.post(
                "/team/member_add", json={"team_id": team_id, "member": [{"user_id": user}, {"user_id": colleague}]}
            )
        )
    leaving = new_key(admin, team_id=team["team_id"], user_id=user)["key"]
    staying = [
        new_key(admin, team_id=elsewhere["team_id"], user_id=user)["key"],
        new_key(admin, team_id=team["team_id"], user_id=colleague)["key"],
        new_key(admin, team_id=team["team_id"])["key"],
        new_key(admin, user_id=user)["key"],
    ]

    answer = ok(admin.post("/team/member_delete", json={"team_id": team["team_id"], "user_id": user}))

    assert answer["deleted_keys"] == 1 and answer["members_with_roles"] == [{"user_id": colleague, "role": "user"}]
    assert answer["key_count"] == 2
    assert not works(gateway.url, leaving) and all(works(gateway.url, key) for key in staying)
    assert ok(admin.get("/user/info", params={"user_id": user}))["user_info"]["teams"] == [elsewhere["team_id"]]
    status, _, text = error_of(admin.post("/team/member_delete", json={"team_id": team["team_id"], "user_id": user}))
    assert status == 404 and "not a member" in text


# -- keys in teams ----------------------------------------------------------------------------------------------------


def test_a_key_joins_a_team_and_user_only_when_they_exist_and_the_user_is_a_member(admin):
    team = new_team(admin)
    member, outsider = new_user(admin)["user_id"], new_user(admin)["user_id"]
    ok(admin.post("/team/member_add", json={"team_id": team["team_id"], "member": {"user_id": member}}))

    key = new_key(admin, team_id=team["team_id"], user_id=member)
    assert (key["team_id"], key["user_id"]) == (team["team_id"], member)
    info = ok(admin.get("/key/info", params={"key": key["token"]}))["info"]
    assert (info["team_id"], info["user_id"]) == (team["team_id"], member)

    refusals = [
        ({"team_id": unique("nope")}, "team_id"),
        ({"user_id": unique("nobody")}, "user_id"),
        ({"team_id": team["team_id"], "user_id": outsider}, "not a member"),
        ({"team_id": "two words"}, "team_id"),
    ]
    for body, expected in refusals:
        status, kind, text = error_of(admin.post("/key/generate", json=body))
        assert (status, kind) == (400, "invalid_request_error") and expected in text, body
    assert ok(admin.get("/team/info", params={"team_id": team["team_id"]}))["team_info"]["key_count"] == 1


def test_key_update_moves_a_key_between_teams_and_out_of_them(admin):
    first, second = new_team(admin), new_team(admin)
    user = new_user(admin)["user_id"]
    ok(admin.post("/team/member_add", json={"team_id": second["team_id"], "member": {"user_id": user}}))
    key = new_key(admin, team_id=first["team_id"])

    def counts() -> tuple[int, int]:
        return tuple(teams.key_count(team["team_id"]) for team in (first, second))

    moved = ok(admin.post("/key/update", json={"key": key["token"], "team_id": second["team_id"], "user_id": user}))
    assert (moved["team_id"], moved["user_id"]) == (second["team_id"], user) and counts() == (0, 1)
    assert ok(admin.get("/user/info", params={"user_id": user}))["user_info"]["key_count"] == 1

    status, _, text = error_of(admin.post("/key/update", json={"key": key["token"], "team_id": first["team_id"]}))
    assert status == 400 and "not a member" in text and counts() == (0, 1)  # its user is not in the first team

    out = ok(admin.post("/key/update", json={"key": key["token"], "team_id": None, "user_id": None}))
    assert (out["team_id"], out["user_id"]) == (None, None) and counts() == (0, 0)
    assert ok(admin.get("/user/info", params={"user_id": user}))["keys"] == []


def test_deleting_a_key_takes_it_out_of_its_team(admin):
    team = new_team(admin)
    key = new_key(admin, team_id=team["team_id"])
    ok(admin.post("/key/delete", json={"keys": [key["token"]]}))
    assert ok(admin.get("/team/info", params={"team_id": team["team_id"]}))["team_info"]["key_count"] == 0


# -- /team/delete -----------------------------------------------------------------------------------------------------


def test_delete_takes_the_teams_keys_and_memberships_and_says_how_many(gateway, admin):
    doomed, kept = new_team(admin), new_team(admin)
    user = new_user(admin)["user_id"]
    for team_id in (doomed["team_id"], kept["team_id"]):
        ok(admin.post("/team/member_add", json={"team_id": team_id, "member": {"user_id": user}}))
    doomed_keys = [
        new_key(admin, team_id=doomed["team_id"])["key"],
        new_key(admin, team_id=doomed["team_id"], user_id=user)["key"],
    ]
    kept_key = new_key(admin, team_id=kept["team_id"], user_id=user)["key"]

    answer = ok(admin.post("/team/delete", json={"team_ids": [doomed["team_id"]]}))

    assert answer == {"deleted_teams": [doomed["team_id"]], "deleted_keys": 2, "deleted_members": 1}
    assert not any(works(gateway.url, key) for key in doomed_keys) and works(gateway.url, kept_key)
    assert error_of(admin.get("/team/info", params={"team_id": doomed["team_id"]}))[0] == 404
    assert ok(admin.get("/user/info", params={"user_id": user}))["user_info"]["teams"] == [kept["team_id"]]
    assert table.get(team_pk(doomed["team_id"]), member_sk(user)) is None


def test_delete_names_existing_teams_or_deletes_nothing(admin):
    team = new_team(admin)
    status, kind, text = error_of(admin.post("/team/delete", json={"team_ids": [team["team_id"], "ghost-team"]}))
    assert (status, kind) == (404, "not_found_error") and "ghost-team" in text
    assert ok(admin.get("/team/info", params={"team_id": team["team_id"]}))
    assert error_of(admin.post("/team/delete", json={"team_ids": []}))[0] == 400
    assert error_of(admin.post("/team/delete", json={"team_ids": [f"t{i}" for i in range(21)]}))[0] == 400


def test_a_big_team_is_deleted_in_bounded_steps_blocked_and_closed_to_new_keys_meanwhile(admin, monkeypatch):
    monkeypatch.setattr(org_api, "MAX_CASCADE", 2)
    team = new_team(admin, members_with_roles=[{"user_id": unique("m")}])
    for _ in range(3):
        new_key(admin, team_id=team["team_id"])

    status, kind, text = error_of(admin.post("/team/delete", json={"team_ids": [team["team_id"]]}))

    assert (status, kind) == (409, "invalid_request_error") and "Repeat" in text and "deleted 2 keys" in text
    left = ok(admin.get("/team/info", params={"team_id": team["team_id"]}))["team_info"]
    assert left["blocked"] is True and left["key_count"] == 1
    status, _, text = error_of(admin.post("/key/generate", json={"team_id": team["team_id"]}))
    assert status == 400 and "being deleted" in text
    assert (
        error_of(admin.post("/team/member_add", json={"team_id": team["team_id"], "member": {"user_id": unique("n")}}))[
            0
        ]
        == 409
    )
    assert error_of(admin.post("/team/unblock", json={"team_id": team["team_id"]}))[0] == 409

    assert ok(admin.post("/team/delete", json={"team_ids": [team["team_id"]]}))["deleted_keys"] == 1
    assert error_of(admin.get("/team/info", params={"team_id": team["team_id"]}))[0] == 404
