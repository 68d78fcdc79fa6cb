"""The user API over raw HTTP, as curl or a LiteLLM script uses it: users with their own budget, the key /user/new
hands out once, emails that name one user, paging, and what deleting a user takes with it."""

from __future__ import annotations

from decimal import Decimal

from anthropic_gateway import org_api
from anthropic_gateway.storage import table
from anthropic_gateway.storage.layout import USER_SK, email_pk, user_pk
from support.orgs import error_of, exact, new_key, new_team, new_user, ok, unique, works

# -- /user/new ----------------------------------------------------------------------------------------------------


def test_new_user_gets_a_working_key_shown_once_by_default(gateway, admin):
    user_id = unique("ana")
    created = ok(
        admin.post("/user/new", json={"user_id": user_id, "user_alias": "Ana", "key_alias": unique("ana-key")})
    )

    assert created["user_id"] == user_id and created["key"].startswith("sk-") and created["token"]
    assert list(created)[:4] == ["user_id", "user_alias", "user_email", "user_role"]
    assert created["user_role"] == "internal_user" and created["teams"] == [] and created["spend"] == 0
    assert works(gateway.url, created["key"])
    info = admin.get("/user/info", params={"user_id": user_id})
    assert created["key"] not in info.text  # shown once: only its hash afterwards
    [key] = info.json()["keys"]
    assert (key["token"], key["user_id"], key["team_id"]) == (created["token"], user_id, None)
    assert key["max_budget"] is None  # the user's own budget governs it, not one of its own


def test_new_user_without_a_key_with_every_setting(admin):
    settings = {
        "user_id": unique("bo"),
        "user_alias": "Bo",
        "user_email": unique("bo") + "@example.com",
        "user_role": "proxy_admin_viewer",
        "models": ["claude-haiku-4-5"],
        "max_budget": 300,
        "budget_duration": "1mo",
        "rpm_limit": 60,
        "tpm_limit": 100_000,
        "max_parallel_requests": 3,
        "metadata": {"employee": 1234},
        "blocked": True,
    }
    created = ok(admin.post("/user/new", json={**settings, "auto_create_key": False}))
    assert {name: created[name] for name in settings} == settings
    assert (created["key"], created["token"]) == (None, None)
    info = ok(admin.get("/user/info", params={"user_id": settings["user_id"]}))
    assert info["keys"] == [] and info["user_info"]["key_count"] == 0
    assert {name: info["user_info"][name] for name in settings} == settings
    item = table.get(user_pk(settings["user_id"]), USER_SK)
    assert item["budget_headroom"] == item["max_budget"] == 300 and item["reservations"] == {}


def test_the_new_users_key_takes_a_duration(admin):
    created = ok(admin.post("/user/new", json={"user_id": unique("cy"), "duration": "1h"}))
    assert created["expires"] and created["expires"] > created["created_at"]


def test_new_user_joins_its_teams_in_the_same_write_or_nothing_is_created(admin):
    team = new_team(admin)
    user = new_user(admin, teams=[team["team_id"]])
    assert user["teams"] == [team["team_id"]]
    roles = ok(admin.get("/team/info", params={"team_id": team["team_id"]}))["team_info"]["members_with_roles"]
    assert roles == [{"user_id": user["user_id"], "role": "user"}]

    lost = unique("lost")
    status, kind, text = error_of(
        admin.post("/user/new", json={"user_id": lost, "teams": [team["team_id"], "no-such-team"]})
    )
    assert (status, kind) == (404, "not_found_error") and "no-such-team" in text
    assert error_of(admin.get("/user/info", params={"user_id": lost}))[0] == 404


def test_user_ids_and_emails_name_one_user(admin):
    email = unique("dee") + "@Example.com"
    first = new_user(admin, user_email=email)
    status, kind, _ = error_of(admin.post("/user/new", json={"user_id": first["user_id"]}))
    assert (status, kind) == (409, "invalid_request_error")
    status, _, text = error_of(admin.post("/user/new", json={"user_email": email.lower()}))
    assert status == 409 and "user_email" in text


def test_budgets_are_exact(admin):
    raw = f'{{"user_id": "{unique("exact")}", "max_budget": 0.000000001, "auto_create_key": false}}'
    created = exact(admin.post("/user/new", content=raw))
    assert created["max_budget"] == Decimal("0.000000001")
    assert '"max_budget":0.000000001' in admin.get("/user/info", params={"user_id": created["user_id"]}).text


def test_new_user_refuses_values_out_of_range(admin):
    cases = [
        ({"user_role": "root"}, "user_role"),
        ({"user_email": "not an email"}, "user_email"),
        ({"user_email": "a@b@c"}, "user_email"),
        ({"max_budget": -0.5}, "max_budget"),
        ({"budget_duration": "0d"}, "budget_duration"),
        ({"teams": [f"t{i}" for i in range(21)]}, "teams"),
        ({"auto_create_key": "yes"}, "auto_create_key"),
        ({"duration": "forever"}, "duration"),
        ({"key_alias": ""}, "key_alias"),
        ({"password": "hunter22"}, "password"),
        ({"metadata": [1]}, "metadata"),
    ]
    for body, field in cases:
        status, kind, text = error_of(admin.post("/user/new", json=body))
        assert (status, kind) == (400, "invalid_request_error") and field in text, body


def test_a_taken_key_alias_says_the_user_exists_without_its_key(admin):
    alias = unique("alias")
    new_key(admin, key_alias=alias)
    user_id = unique("eve")
    status, _, text = error_of(admin.post("/user/new", json={"user_id": user_id, "key_alias": alias}))
    assert status == 400 and "was created" in text and alias in text
    assert ok(admin.get("/user/info", params={"user_id": user_id}))["keys"] == []


# -- /user/update, info ---------------------------------------------------------------------------------------------


def test_update_by_id_or_email_changes_only_what_is_sent(admin):
    email = unique("fay") + "@example.com"
    user = new_user(admin, user_email=email, max_budget=10, models=["claude-haiku-4-5"])
    table.write([table.Update(
        user_pk(user["user_id"]), USER_SK, "SET spend = :s, budget_headroom = :h", "attribute_exists(pk)",
        {}, {":s": Decimal(4), ":h": Decimal(6)},
    )])  # fmt: skip

    answer = ok(admin.post("/user/update", json={"user_email": email, "max_budget": 25, "user_role": "proxy_admin"}))
    assert answer["user_id"] == user["user_id"]
    data = answer["data"]
    assert (data["max_budget"], data["spend"], data["user_role"], data["models"]) == (
        25,
        4,
        "proxy_admin",
        ["claude-haiku-4-5"],
    )
    assert table.get(user_pk(user["user_id"]), USER_SK)["budget_headroom"] == 21

    renamed = ok(admin.post("/user/update", json={"user_id": user["user_id"], "user_alias": "Fay"}))["data"]
    assert renamed["user_alias"] == "Fay" and renamed["user_email"] == email


def test_a_new_email_moves_the_claim_and_a_taken_one_is_refused(admin):
    old, new, taken = (unique(name) + "@example.com" for name in ("old", "new", "taken"))
    user = new_user(admin, user_email=old)
    new_user(admin, user_email=taken)

    assert error_of(admin.post("/user/update", json={"user_id": user["user_id"], "user_email": taken}))[0] == 409
    ok(admin.post("/user/update", json={"user_id": user["user_id"], "user_email": new}))
    assert table.get(email_pk(old), "EMAIL") is None and table.get(email_pk(new), "EMAIL")["user_id"] == user["user_id"]
    new_user(admin, user_email=old)  # free again


def test_update_and_info_refusals(admin):
    assert error_of(admin.post("/user/update", json={"user_id": unique("nope"), "rpm_limit": 1}))[0] == 404
    assert error_of(admin.post("/user/update", json={"user_email": unique("nope") + "@x.io", "rpm_limit": 1}))[0] == 404
    assert error_of(admin.post("/user/update", json={"rpm_limit": 1}))[0] == 400
    assert error_of(admin.post("/user/update", json={"user_id": "u", "teams": ["t"]}))[0] == 400
    assert error_of(admin.get("/user/info"))[0] == 400
    assert error_of(admin.get("/user/info", params={"user_id": unique("nope")}))[0] == 404


def test_info_shows_the_users_keys_teams_and_spend(admin):
    team = new_team(admin, team_alias="Infra")
    user = new_user(admin, teams=[team["team_id"]], max_budget=50)
    personal = new_key(admin, user_id=user["user_id"])
    in_team = new_key(admin, user_id=user["user_id"], team_id=team["team_id"])

    info = ok(admin.get("/user/info", params={"user_id": user["user_id"]}))

    assert info["user_id"] == user["user_id"]
    assert {key["token"] for key in info["keys"]} == {personal["token"], in_team["token"]}
    assert info["user_info"]["key_count"] == 2 and info["user_info"]["max_budget"] == 50
    assert {"spend", "total_spend", "reserved_spend", "budget_reset_at"} <= set(info["user_info"])
    [shown_team] = info["teams"]
    assert (shown_team["team_id"], shown_team["team_alias"], shown_team["key_count"]) == (team["team_id"], "Infra", 1)


# -- /user/list -----------------------------------------------------------------------------------------------------


def test_list_pages_through_users_newest_first_and_filters(admin):
    team = new_team(admin)
    made = [
        new_user(admin, teams=[team["team_id"]], user_email=unique(f"p{i}") + "@paging.example")["user_id"]
        for i in range(5)
    ]
    viewer = new_user(admin, teams=[team["team_id"]], user_role="internal_user_viewer")["user_id"]

    pages = [
        ok(admin.get("/user/list", params={"team": team["team_id"], "page": page, "page_size": 2}))
        for page in (1, 2, 3)
    ]

    assert [(p["total"], p["page"], p["page_size"], p["total_pages"]) for p in pages] == [
        (6, n, 2, 3) for n in (1, 2, 3)
    ]
    listed = [user["user_id"] for p in pages for user in p["users"]]
    assert listed == [viewer, *reversed(made)]  # every user once, newest first
    only_viewers = ok(admin.get("/user/list", params={"team": team["team_id"], "role": "internal_user_viewer"}))
    assert [user["user_id"] for user in only_viewers["users"]] == [viewer]
    by_email = ok(admin.get("/user/list", params={"team": team["team_id"], "user_email": "PAGING.EXAMPLE"}))
    assert by_email["total"] == 5
    past_the_end = ok(admin.get("/user/list", params={"team": team["team_id"], "page": 9, "page_size": 2}))
    assert past_the_end["users"] == [] and past_the_end["total"] == 6


def test_list_bounds_its_page(admin):
    assert error_of(admin.get("/user/list", params={"page_size": 101}))[0] == 400
    assert error_of(admin.get("/user/list", params={"page": 0}))[0] == 400
    assert error_of(admin.get("/user/list", params={"role": "root"}))[0] == 400


# -- /user/delete ---------------------------------------------------------------------------------------------------


def test_delete_takes_the_users_keys_memberships_and_email(gateway, admin):
    team = new_team(admin)
    email = unique("gus") + "@example.com"
    user = ok(admin.post("/user/new", json={"user_id": unique("gus"), "user_email": email, "teams": [team["team_id"]]}))
    team_key = new_key(admin, user_id=user["user_id"], team_id=team["team_id"])["key"]
    colleague_key = new_key(admin, team_id=team["team_id"])["key"]

    answer = ok(admin.post("/user/delete", json={"user_ids": [user["user_id"]]}))

    assert answer == {"deleted_users": [user["user_id"]], "deleted_keys": 2, "deleted_memberships": 1}
    assert not works(gateway.url, user["key"]) and not works(gateway.url, team_key)
    assert works(gateway.url, colleague_key)
    info = ok(admin.get("/team/info", params={"team_id": team["team_id"]}))
    assert info["team_info"]["members_with_roles"] == [] and info["team_info"]["key_count"] == 1
    assert error_of(admin.get("/user/info", params={"user_id": user["user_id"]}))[0] == 404
    new_user(admin, user_email=email)  # the email is free again


def test_delete_names_existing_users_or_deletes_nothing(admin):
    user = new_user(admin)
    status, kind, text = error_of(admin.post("/user/delete", json={"user_ids": [user["user_id"], "ghost-user"]}))
    assert (status, kind) == (404, "not_found_error") and "ghost-user" in text
    assert ok(admin.get("/user/info", params={"user_id": user["user_id"]}))
    assert error_of(admin.post("/user/delete", json={"user_ids": []}))[0] == 400


def test_a_user_with_many_keys_is_deleted_in_bounded_steps_and_blocked_meanwhile(admin, monkeypatch):
    monkeypatch.setattr(org_api, "MAX_CASCADE", 2)
    user = new_user(admin)
    for _ in range(3):
        new_key(admin, user_id=user["user_id"])

    status, _, text = error_of(admin.post("/user/delete", json={"user_ids": [user["user_id"]]}))

    assert status == 409 and "Repeat" in text
    assert ok(admin.get("/user/info", params={"user_id": user["user_id"]}))["user_info"]["blocked"] is True
    assert error_of(admin.post("/key/generate", json={"user_id": user["user_id"]}))[0] == 400
    assert error_of(admin.post("/user/update", json={"user_id": user["user_id"], "blocked": False}))[0] == 409
    assert ok(admin.post("/user/delete", json={"user_ids": [user["user_id"]]}))["deleted_keys"] == 1
