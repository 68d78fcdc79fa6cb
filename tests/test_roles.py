"""Roles on the admin API, over raw HTTP: every admin route x every kind of caller x a target of its own and one
of someone else's, allowed (200) or refused (403 permission_error saying what is missing). A virtual key of a user
without an admin role never reaches another user's data; lists show only what the caller may see."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from support.orgs import error_of, new_key, new_team, new_user, ok, unique

CALLERS = (
    "master",
    "proxy_admin",
    "proxy_admin_viewer",
    "team_admin",
    "internal_user",
    "internal_user_viewer",
    "no_user",
)
ALL, OWN, NONE = {"own", "other"}, {"own"}, set()


@dataclass
class World:
    """The callers, and the things they reach: team A (the team admin's, with the internal users and member M),
    team B (another user's, with member O), a key of each user, and the keys of M and O."""

    admin: httpx.Client  # the master key
    clients: dict[str, httpx.Client]
    user_ids: dict[str, str | None]
    team_a: dict[str, Any]
    team_b: dict[str, Any]
    own_keys: dict[str, dict[str, Any]]
    other_key: dict[str, Any]


@pytest.fixture(scope="module")
def world(gateway) -> Iterator[World]:
    from tests.conftest import MASTER_KEY

    admin = httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {MASTER_KEY}"}, timeout=30)
    clients, user_ids = {"master": admin}, {"master": None}
    roles = {
        "proxy_admin": "proxy_admin",
        "proxy_admin_viewer": "proxy_admin_viewer",
        "team_admin": "internal_user",  # admin of team A, nothing more
        "internal_user": "internal_user",
        "internal_user_viewer": "internal_user_viewer",
    }
    own_keys = {}
    for caller, role in roles.items():
        user_id = new_user(admin, user_id=unique(caller), user_role=role)["user_id"]
        key = new_key(admin, user_id=user_id)
        own_keys[caller] = key
        clients[caller] = httpx.Client(base_url=gateway.url, headers={"x-api-key": key["key"]}, timeout=30)
        user_ids[caller] = user_id
    clients["no_user"], user_ids["no_user"] = (
        httpx.Client(base_url=gateway.url, headers={"x-api-key": new_key(admin)["key"]}, timeout=30),
        None,
    )
    member_a, member_b = new_user(admin)["user_id"], new_user(admin)["user_id"]
    in_a = [{"user_id": user_ids[c], "role": "user"} for c in ("internal_user", "internal_user_viewer")]
    team_a = new_team(
        admin,
        max_budget=100,
        members_with_roles=[{"user_id": user_ids["team_admin"], "role": "admin"}, {"user_id": member_a}, *in_a],
    ) | {"member": member_a}
    team_b = new_team(admin, max_budget=100, members_with_roles=[{"user_id": member_b}]) | {"member": member_b}
    own_keys["team_admin"] = new_key(admin, team_id=team_a["team_id"], user_id=member_a)
    other_key = new_key(admin, team_id=team_b["team_id"], user_id=member_b)
    yield World(admin, clients, user_ids, team_a, team_b, own_keys, other_key)
    for client in clients.values():
        client.close()


@dataclass
class Case:
    """One call: the caller, whose target it is, and whether it is expected to change it (then the target is
    made fresh, so the next cases find the shared world as it was; a refused call targets the shared world)."""

    world: World
    caller: str
    whose: str  # own | other
    allowed: bool = False

    @property
    def me(self) -> str | None:
        return self.world.user_ids[self.caller]

    @property
    def admin(self) -> httpx.Client:
        return self.world.admin

    @property
    def http(self) -> httpx.Client:
        return self.world.clients[self.caller]

    def team(self) -> dict[str, Any]:
        """Own: team A (the team admin's); other: team B; a fresh team for a proxy admin's allowed change."""
        if self.allowed and self.caller in ("master", "proxy_admin"):
            return new_team(self.admin, members_with_roles=[{"user_id": unique("m")}]) | {"member": None}
        return self.world.team_a if self.whose == "own" else self.world.team_b

    def member(self, team: dict[str, Any]) -> str:
        """A member of `team` to change: a fresh one when the change is allowed."""
        if self.allowed:
            user_id = unique("member")
            ok(self.admin.post("/team/member_add", json={"team_id": team["team_id"], "member": {"user_id": user_id}}))
            return user_id
        return str(team["member"])

    def user(self) -> str:
        """The caller's own user, or someone else's (a fresh one when the change is allowed)."""
        if self.whose == "own" and self.me is not None:
            return self.me
        return str(new_user(self.admin)["user_id"]) if self.allowed else str(self.world.team_b["member"])

    def key(self) -> dict[str, Any]:
        """A key the caller owns or administers (own), or another user's in another team (other)."""
        if not self.allowed:
            return (
                self.world.own_keys.get(self.caller, self.world.other_key)
                if self.whose == "own"
                else self.world.other_key
            )
        if self.whose == "own" and self.caller == "team_admin":
            return new_key(self.admin, team_id=self.world.team_a["team_id"], user_id=self.world.team_a["member"])
        if self.whose == "own" and self.me is not None:
            return new_key(self.admin, user_id=self.me)
        return new_key(self.admin, team_id=self.world.team_b["team_id"], user_id=self.world.team_b["member"])


def _key_generate(case: Case) -> httpx.Response:
    if case.caller == "team_admin":
        team = case.world.team_a if case.whose == "own" else case.world.team_b
        return case.http.post("/key/generate", json={"team_id": team["team_id"], "max_budget": 10})
    if case.whose == "own":
        return case.http.post("/key/generate", json={"max_budget": 1})  # an internal user's own key
    return case.http.post("/key/generate", json={"user_id": case.world.team_b["member"], "max_budget": 1})


def _key(path: str, body: Callable[[dict[str, Any]], dict[str, Any]]) -> Callable[[Case], httpx.Response]:
    return lambda case: case.http.post(path, json=body(case.key()))


def _team(method: str, path: str, body: Callable[[dict[str, Any]], dict[str, Any]]) -> Callable[[Case], httpx.Response]:
    def call(case: Case) -> httpx.Response:
        team = case.team()
        if method == "GET":
            return case.http.get(path, params=body(team))
        return case.http.post(path, json=body(team))

    return call


def _member(path: str, body: Callable[[str, str], dict[str, Any]]) -> Callable[[Case], httpx.Response]:
    def call(case: Case) -> httpx.Response:
        team = case.world.team_a if case.whose == "own" else case.world.team_b
        return case.http.post(path, json=body(team["team_id"], case.member(team)))

    return call


def _user_delete(case: Case) -> httpx.Response:
    # Allowed: a fresh user (a proxy admin deleting itself would end this test's caller).
    user_id = str(new_user(case.admin)["user_id"]) if case.allowed else case.user()
    return case.http.post("/user/delete", json={"user_ids": [user_id]})


def _tag(method: str, path: str) -> Callable[[Case], httpx.Response]:
    def call(case: Case) -> httpx.Response:
        name = unique("tag") if case.allowed or method == "GET" else "shared-tag"
        if name != "shared-tag" or case.admin.get("/tag/info", params={"name": name}).status_code == 404:
            ok(case.admin.post("/tag/new", json={"name": name}))
        if path == "/tag/info" and method == "POST":
            return case.http.post(path, json={"names": [name]})
        if method == "GET":
            return case.http.get(path, params={"name": name} if path == "/tag/info" else {})
        return case.http.post(path, json={"name": name, **({"max_budget": 5} if path == "/tag/update" else {})})

    return call


A, P = {"master", "proxy_admin"}, {"master", "proxy_admin", "proxy_admin_viewer"}
READ_OWN = {"team_admin": OWN, "internal_user": OWN, "internal_user_viewer": OWN}

# route -> (how to call it, who may, on which targets): {caller: targets}; absent callers may not at all.
ROUTES: dict[str, tuple[Callable[[Case], httpx.Response], dict[str, set[str]]]] = {
    "POST /key/generate": (_key_generate, {**dict.fromkeys(A, ALL), "team_admin": OWN, "internal_user": OWN}),
    "GET /key/info": (
        lambda case: case.http.get("/key/info", params={"key": case.key()["token"]}),
        {**dict.fromkeys(P, ALL), **READ_OWN},
    ),
    "POST /key/update": (
        _key("/key/update", lambda key: {"key": key["token"], "rpm_limit": 5}),
        {**dict.fromkeys(A, ALL), "team_admin": OWN},
    ),
    "POST /key/block": (
        _key("/key/block", lambda key: {"key": key["token"]}),
        {**dict.fromkeys(A, ALL), "team_admin": OWN, "internal_user": OWN},
    ),
    "POST /key/unblock": (
        _key("/key/unblock", lambda key: {"key": key["token"]}),
        {**dict.fromkeys(A, ALL), "team_admin": OWN},
    ),
    "POST /key/regenerate": (
        _key("/key/regenerate", lambda key: {"key": key["token"]}),
        {**dict.fromkeys(A, ALL), "team_admin": OWN, "internal_user": OWN},
    ),
    "POST /key/delete": (
        _key("/key/delete", lambda key: {"keys": [key["token"]]}),
        {**dict.fromkeys(A, ALL), "team_admin": OWN, "internal_user": OWN},
    ),
    "GET /spend/tags": (lambda case: case.http.get("/spend/tags"), dict.fromkeys(P, ALL)),
    "GET /spend/tags/totals": (lambda case: case.http.get("/spend/tags/totals"), dict.fromkeys(P, ALL)),
    # Filtered to the caller's teams (users): a team admin reads its teams' rows, anyone its own user's.
    "GET /spend/teams": (lambda case: case.http.get("/spend/teams"), {**dict.fromkeys(P, ALL), "team_admin": ALL}),
    "GET /spend/users": (
        lambda case: case.http.get("/spend/users"),
        dict.fromkeys(set(CALLERS) - {"no_user"}, ALL),
    ),
    "POST /team/new": (lambda case: case.http.post("/team/new", json={"team_alias": "x"}), dict.fromkeys(A, ALL)),
    "POST /team/update": (
        _team("POST", "/team/update", lambda team: {"team_id": team["team_id"], "rpm_limit": 9}),
        dict.fromkeys(A, ALL),
    ),
    "POST /team/block": (
        _team("POST", "/team/block", lambda team: {"team_id": team["team_id"]}),
        dict.fromkeys(A, ALL),
    ),
    "POST /team/unblock": (
        _team("POST", "/team/unblock", lambda team: {"team_id": team["team_id"]}),
        dict.fromkeys(A, ALL),
    ),
    "POST /team/delete": (
        _team("POST", "/team/delete", lambda team: {"team_ids": [team["team_id"]]}),
        dict.fromkeys(A, ALL),
    ),
    "GET /team/info": (
        _team("GET", "/team/info", lambda team: {"team_id": team["team_id"]}),
        {**dict.fromkeys(P, ALL), "team_admin": OWN},
    ),
    "POST /team/member_add": (
        _member("/team/member_add", lambda team, _: {"team_id": team, "member": {"user_id": unique("new")}}),
        {**dict.fromkeys(A, ALL), "team_admin": OWN},
    ),
    "POST /team/member_update": (
        _member("/team/member_update", lambda team, user: {"team_id": team, "user_id": user, "max_budget_in_team": 1}),
        {**dict.fromkeys(A, ALL), "team_admin": OWN},
    ),
    "POST /team/member_delete": (
        _member("/team/member_delete", lambda team, user: {"team_id": team, "user_id": user}),
        {**dict.fromkeys(A, ALL), "team_admin": OWN},
    ),
    "POST /user/new": (
        lambda case: case.http.post("/user/new", json={"auto_create_key": False}),
        dict.fromkeys(A, ALL),
    ),
    "POST /user/update": (
        lambda case: case.http.post("/user/update", json={"user_id": case.user(), "user_alias": "renamed"}),
        dict.fromkeys(A, ALL),
    ),
    "POST /user/delete": (_user_delete, dict.fromkeys(A, ALL)),
    "GET /user/info": (
        lambda case: case.http.get("/user/info", params={"user_id": case.user()}),
        {**dict.fromkeys(P, ALL), **READ_OWN},
    ),
    "POST /tag/new": (lambda case: case.http.post("/tag/new", json={"name": unique("tag")}), dict.fromkeys(A, ALL)),
    "POST /tag/update": (_tag("POST", "/tag/update"), dict.fromkeys(A, ALL)),
    "POST /tag/delete": (_tag("POST", "/tag/delete"), dict.fromkeys(A, ALL)),
    "GET /tag/info": (_tag("GET", "/tag/info"), dict.fromkeys(P, ALL)),
    "POST /tag/info": (_tag("POST", "/tag/info"), dict.fromkeys(P, ALL)),
    "GET /tag/list": (_tag("GET", "/tag/list"), dict.fromkeys(P, ALL)),
    "GET /audit": (lambda case: case.http.get("/audit"), dict.fromkeys(P, ALL)),
}


@pytest.mark.parametrize("route", list(ROUTES))
def test_every_route_allows_exactly_the_roles_that_may_use_it(world, route):
    call, allowed = ROUTES[route]
    outcomes = {}
    for caller in CALLERS:
        for whose in ("own", "other"):
            response = call(Case(world, caller, whose, allowed=whose in allowed.get(caller, set())))
            outcomes[caller, whose] = response.status_code
            if whose in allowed.get(caller, set()):
                assert response.status_code == 200, (route, caller, whose, response.text)
            else:
                status, kind, message = error_of(response)
                assert (status, kind) == (403, "permission_error"), (route, caller, whose, message)
                assert "needs" in message or "no role" in message, message  # says what is missing
    assert len(outcomes) == 2 * len(CALLERS)


# -- lists show what the caller may see -----------------------------------------------------------------------


def _listed(case: Case, path: str, params: dict[str, Any]) -> httpx.Response:
    return case.http.get(path, params=params)


@pytest.mark.parametrize("caller", [caller for caller in CALLERS if caller != "no_user"])
def test_lists_show_own_things_and_others_only_to_proxy_admins(world, caller):
    # Fresh keys: the newest, so on the first page of every list that may show them.
    own_case, other_case = Case(world, caller, "own", allowed=True), Case(world, caller, "other", allowed=True)
    own_key, other_key = own_case.key(), other_case.key()
    sees_all = caller in P

    keys = ok(own_case.http.get("/key/list", params={"size": 100}))["keys"]
    assert own_key["token"] in keys and (other_key["token"] in keys) is sees_all
    spend_rows = ok(own_case.http.get("/spend/keys", params={"limit": 100}))
    spent = {row["token"] for row in spend_rows}
    if sees_all and len(spend_rows) == 100:
        # The top 100 by spend among every key the suite made so far: fresh keys need not be in it, but a list that
        # is not filtered to the caller shows keys that are not its own.
        assert spent - {own_key["token"]}
    else:
        assert (other_key["token"] in spent) is sees_all
    if not sees_all:
        assert own_key["token"] in spent

    teams = {team["team_id"] for team in ok(own_case.http.get("/team/list"))}
    assert (world.team_b["team_id"] in teams) is sees_all
    assert (world.team_a["team_id"] in teams) is (sees_all or caller == "team_admin")

    users = {user["user_id"] for user in ok(own_case.http.get("/user/list", params={"page_size": 100}))["users"]}
    if not sees_all:
        assert users == {own_case.me}  # itself, no one else
    else:
        assert world.team_b["member"] in {
            u["user_id"] for u in ok(own_case.http.get("/user/list", params={"team": world.team_b["team_id"]}))["users"]
        }


def test_a_key_without_a_user_and_no_key_at_all_are_refused_everywhere(world, gateway):
    status, kind, message = error_of(world.clients["no_user"].get("/key/list"))
    assert (status, kind) == (403, "permission_error") and "no user" in message
    with httpx.Client(base_url=gateway.url) as anonymous:
        assert error_of(anonymous.get("/audit"))[:2] == (401, "authentication_error")


# -- within the team's and the user's limits -------------------------------------------------------------------


def test_a_team_admin_keeps_keys_and_member_budgets_within_the_teams(world):
    case = Case(world, "team_admin", "own")
    team = case.team()  # max_budget 100
    status, kind, message = error_of(
        case.http.post("/key/generate", json={"team_id": team["team_id"], "max_budget": 101})
    )
    assert (status, kind) == (403, "permission_error") and "max_budget" in message and "100" in message
    key = ok(case.http.post("/key/generate", json={"team_id": team["team_id"], "max_budget": 100}))
    status, _, _ = error_of(case.http.post("/key/update", json={"key": key["token"], "max_budget": 500}))
    assert status == 403
    assert ok(case.admin.get("/key/info", params={"key": key["token"]}))["info"]["max_budget"] == 100
    body = {"team_id": team["team_id"], "member": {"user_id": unique("m")}, "max_budget_in_team": 150}
    assert error_of(case.http.post("/team/member_add", json=body))[0] == 403
    # ...and cannot move a key out of its teams
    other = Case(world, "master", "other").team()
    status, _, message = error_of(
        case.http.post("/key/update", json={"key": key["token"], "team_id": other["team_id"]})
    )
    assert status == 403 and other["team_id"] in message
    # the master key is not bound by a team's limits (break glass)
    assert ok(case.admin.post("/key/update", json={"key": key["token"], "max_budget": 500}))["max_budget"] == 500


def test_an_internal_user_keeps_its_keys_within_its_user_budget(world, gateway):
    admin = world.admin
    user_id = new_user(admin, max_budget=20)["user_id"]
    with httpx.Client(base_url=gateway.url, headers={"x-api-key": new_key(admin, user_id=user_id)["key"]}) as me:
        assert error_of(me.post("/key/generate", json={"max_budget": 21}))[:2] == (403, "permission_error")
        key = ok(me.post("/key/generate", json={"max_budget": 20}))
        assert key["user_id"] == user_id  # its own key, without naming itself
        # blocking its own key is allowed; unblocking one is not (an admin may have blocked it)
        ok(me.post("/key/block", json={"key": key["token"]}))
        assert error_of(me.post("/key/unblock", json={"key": key["token"]}))[0] == 403


def test_a_role_change_applies_at_the_next_request(world, gateway):
    admin = world.admin
    user_id = new_user(admin, user_role="internal_user_viewer")["user_id"]
    with httpx.Client(base_url=gateway.url, headers={"x-api-key": new_key(admin, user_id=user_id)["key"]}) as me:
        assert error_of(me.get("/audit"))[0] == 403
        ok(admin.post("/user/update", json={"user_id": user_id, "user_role": "proxy_admin_viewer"}))
        ok(me.get("/audit"))
        ok(admin.post("/user/update", json={"user_id": user_id, "blocked": True}))
        assert error_of(me.get("/audit"))[:2] == (401, "authentication_error")  # as on the messages API
