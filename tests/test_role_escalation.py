"""Escalation attempts on the admin API, over raw HTTP: a team admin may never obtain a credential that acts beyond
their teams, an internal user never one beyond themselves, and a key whose team or user is blocked or gone is
refused on the admin API as it is on the messages API.

A key acts with its user's role on the admin API only when its plain key went to its user or to a proxy_admin: a
key a team admin makes, regenerates or hands to another user, or one moved to another user, works on the messages
API and has no role on the admin API until its user (or a proxy_admin) regenerates it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from support.orgs import error_of, new_key, new_team, new_user, ok, unique, works


@dataclass
class Setup:
    admin: httpx.Client  # the master key
    lead: httpx.Client  # an internal_user, admin of team A
    lead_id: str
    team_a: str
    team_b: str
    member: str  # internal_user in teams A and B
    member_key_b: dict[str, Any]  # the member's key in team B, made by the master key
    root: str  # a proxy_admin user, member of team A


@pytest.fixture(scope="module")
def setup(gateway) -> Iterator[Setup]:
    from tests.conftest import MASTER_KEY

    admin = httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {MASTER_KEY}"}, timeout=30)
    lead_id = new_user(admin, user_id=unique("lead"), user_role="internal_user")["user_id"]
    member = new_user(admin, user_id=unique("member"), user_role="internal_user")["user_id"]
    root = new_user(admin, user_id=unique("root"), user_role="proxy_admin")["user_id"]
    team_a = new_team(
        admin,
        members_with_roles=[{"user_id": lead_id, "role": "admin"}, {"user_id": member}, {"user_id": root}],
    )["team_id"]
    team_b = new_team(admin, members_with_roles=[{"user_id": member}])["team_id"]
    member_key_b = new_key(admin, team_id=team_b, user_id=member)
    lead_key = new_key(admin, user_id=lead_id)["key"]
    lead = httpx.Client(base_url=gateway.url, headers={"x-api-key": lead_key}, timeout=30)
    yield Setup(admin, lead, lead_id, team_a, team_b, member, member_key_b, root)
    lead.close()
    admin.close()


def _as(gateway, key: str) -> httpx.Client:
    return httpx.Client(base_url=gateway.url, headers={"x-api-key": key}, timeout=30)


def _refused(response: httpx.Response, *words: str) -> str:
    status, kind, message = error_of(response)
    assert (status, kind) == (403, "permission_error"), (status, message)
    assert all(word in message for word in words), message
    return message


def _role_of(setup: Setup, user_id: str) -> str:
    return str(ok(setup.admin.get("/user/info", params={"user_id": user_id}))["user_info"]["user_role"])


# -- the probe: a team admin reaching a proxy_admin's role --------------------------------------------------------


def test_a_team_admin_cannot_add_a_proxy_admin_nor_make_keys_for_one(setup):
    viewer = new_user(setup.admin, user_role="proxy_admin_viewer")["user_id"]
    for user_id, role in ((setup.root, "proxy_admin"), (viewer, "proxy_admin_viewer")):
        body = {"team_id": setup.team_a, "member": {"user_id": user_id}}
        _refused(setup.lead.post("/team/member_add", json=body), user_id, role, "needs proxy_admin")
    # The master key added the proxy_admin to team A: the team admin still may not make or regenerate its keys.
    _refused(
        setup.lead.post("/key/generate", json={"team_id": setup.team_a, "user_id": setup.root}),
        setup.root,
        "proxy_admin",
    )
    root_key = new_key(setup.admin, team_id=setup.team_a, user_id=setup.root)
    _refused(setup.lead.post("/key/regenerate", json={"key": root_key["token"]}), setup.root, "needs proxy_admin")
    # ...nor give its own key (whose plain key it holds) to the proxy_admin
    own = ok(setup.lead.post("/key/generate", json={"team_id": setup.team_a}))
    _refused(setup.lead.post("/key/update", json={"key": own["token"], "user_id": setup.root}), setup.root)
    assert ok(setup.admin.get("/key/info", params={"key": own["token"]}))["info"]["user_id"] is None
    assert _role_of(setup, setup.lead_id) == "internal_user"


def test_a_key_a_team_admin_makes_for_a_member_has_no_role_on_the_admin_api(setup, gateway):
    key = ok(setup.lead.post("/key/generate", json={"team_id": setup.team_a, "user_id": setup.member}))
    assert key["user_id"] == setup.member and key["delegated_by"].startswith("key:")
    info = ok(setup.admin.get("/key/info", params={"key": key["token"]}))["info"]
    assert info["delegated_by"] == key["delegated_by"]
    with _as(gateway, key["key"]) as as_member:
        _refused(as_member.get("/key/list"), "no role", setup.member)
        # the member's key in another team stays out of reach
        _refused(as_member.post("/key/regenerate", json={"key": setup.member_key_b["token"]}), "no role")
        _refused(as_member.post("/user/update", json={"user_id": setup.lead_id, "user_role": "proxy_admin"}))
    assert works(gateway.url, key["key"])  # it is a key for the messages API
    assert works(gateway.url, setup.member_key_b["key"])  # not regenerated
    assert _role_of(setup, setup.lead_id) == "internal_user"


def test_a_key_a_team_admin_regenerates_for_a_member_has_no_role_until_the_member_takes_it_back(setup, gateway):
    # The member's own key in team A, made by the master key: it acts as the member on the admin API.
    made = new_key(setup.admin, team_id=setup.team_a, user_id=setup.member)
    with _as(gateway, made["key"]) as as_member:
        ok(as_member.get("/key/list"))
    assert made["delegated_by"] is None
    regenerated = ok(setup.lead.post("/key/regenerate", json={"key": made["token"]}))
    assert regenerated["delegated_by"] is not None
    entries = ok(setup.admin.get("/audit", params={"action": "key.regenerate", "target": f"key:{made['token']}"}))
    [entry] = entries["entries"]
    assert entry["before"]["delegated_by"] is None and entry["after"]["delegated_by"] == regenerated["delegated_by"]
    with _as(gateway, regenerated["key"]) as held_by_lead:
        _refused(held_by_lead.get("/key/list"), "no role")
        _refused(held_by_lead.post("/key/regenerate", json={"key": setup.member_key_b["token"]}), "no role")
        _refused(held_by_lead.post("/key/regenerate", json={"key": regenerated["token"]}), "no role")
    assert works(gateway.url, regenerated["key"])
    # The member, with a key of its own, regenerates it: the new plain key only the member has acts as the member.
    with _as(gateway, setup.member_key_b["key"]) as as_member:
        taken_back = ok(as_member.post("/key/regenerate", json={"key": regenerated["token"]}))
    assert taken_back["delegated_by"] is None
    with _as(gateway, taken_back["key"]) as as_member:
        assert regenerated["token"] not in ok(as_member.get("/key/list"))["keys"]
        assert taken_back["token"] in ok(as_member.get("/key/list"))["keys"]


def test_a_key_moved_to_another_user_has_no_role_until_regenerated(setup, gateway):
    # The team admin's own key, moved to the member: the team admin still holds it.
    own = ok(setup.lead.post("/key/generate", json={"team_id": setup.team_a}))
    moved = ok(setup.lead.post("/key/update", json={"key": own["token"], "user_id": setup.member}))
    assert moved["user_id"] == setup.member
    with _as(gateway, own["key"]) as held_by_lead:
        _refused(held_by_lead.post("/key/regenerate", json={"key": setup.member_key_b["token"]}), "no role")
    # The master key moving a key does the same: whoever held it before still does.
    key = new_key(setup.admin, user_id=setup.lead_id)
    ok(setup.admin.post("/key/update", json={"key": key["token"], "team_id": setup.team_a, "user_id": setup.member}))
    with _as(gateway, key["key"]) as held:
        _refused(held.get("/key/list"), "no role")
    # ...until a proxy_admin regenerates it, handing the new key on
    again = ok(setup.admin.post("/key/regenerate", json={"key": key["token"]}))
    with _as(gateway, again["key"]) as as_member:
        ok(as_member.get("/key/list"))


def test_a_team_admin_own_keys_still_act_as_the_team_admin(setup, gateway):
    own = ok(setup.lead.post("/key/generate", json={"team_id": setup.team_a, "user_id": setup.lead_id}))
    with _as(gateway, own["key"]) as again:
        listed = ok(again.get("/key/list", params={"size": 100}))["keys"]
        assert own["token"] in listed
        regenerated = ok(again.post("/key/regenerate", json={"key": own["token"]}))
    with _as(gateway, regenerated["key"]) as again:
        ok(again.get("/team/info", params={"team_id": setup.team_a}))


# -- keys of blocked or gone teams and users ----------------------------------------------------------------------


def _unusable(response: httpx.Response, *words: str) -> None:
    status, kind, message = error_of(response)
    assert (status, kind) == (401, "authentication_error"), (status, message)
    assert all(word in message for word in words), message


def test_a_key_of_a_blocked_team_or_user_is_refused_on_the_admin_api(setup, gateway):
    admin = setup.admin
    boss = new_user(admin, user_role="proxy_admin")["user_id"]
    team = new_team(admin, members_with_roles=[{"user_id": boss}])["team_id"]
    in_team, own = new_key(admin, team_id=team, user_id=boss), new_key(admin, user_id=boss)
    with _as(gateway, in_team["key"]) as http, _as(gateway, own["key"]) as other:
        ok(http.get("/key/list"))
        ok(admin.post("/team/block", json={"team_id": team}))
        _unusable(http.get("/key/list"), team, "blocked")
        _unusable(http.post("/key/generate", json={}), team, "blocked")
        ok(other.get("/key/list"))  # the user's key outside the team is not the team's
        ok(admin.post("/team/unblock", json={"team_id": team}))
        ok(http.get("/key/list"))
        ok(admin.post("/user/update", json={"user_id": boss, "blocked": True}))
        _unusable(http.get("/key/list"), boss, "blocked")
        _unusable(other.get("/key/list"), boss, "blocked")
        ok(admin.post("/user/update", json={"user_id": boss, "blocked": False}))
        ok(http.get("/key/list"))
        ok(admin.post("/team/delete", json={"team_ids": [team]}))
        _unusable(http.get("/key/list"))  # deleted with its team
        ok(admin.post("/user/delete", json={"user_ids": [boss]}))
        _unusable(other.get("/key/list"))
