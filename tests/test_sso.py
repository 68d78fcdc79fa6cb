"""Single sign-on against the test suite's own OpenID provider (support/fake_oidc.py) over loopback, through raw
HTTP, the real CLI (`anthropic-gateway login` / `key`) and the real SDK: console sessions and their cookies, CSRF,
roles from groups, users made at first sign-in, personal keys and their renewal.

The console in Chromium: tests/test_console_sso.py. ID-token verification case by case: tests/test_oidc.py.
"""

from __future__ import annotations

import json
import os
import re
import stat
import uuid
from datetime import datetime, timedelta
from http.cookies import SimpleCookie
from urllib.parse import parse_qs, urlsplit

import anthropic
import boto3
import httpx
import pytest

from anthropic_gateway import keys, login_cli, sso
from anthropic_gateway.settings import get_settings
from support.fake_oidc import FakeOidc, OidcUser, new_rsa_key
from support.gateways import start_gateway
from support.orgs import HELLO, error_of, new_team, ok, works

RUN = uuid.uuid4().hex[:8]
ADMIN = OidcUser(f"admin-{RUN}", f"ada-{RUN}@example.com", "Ada Admin", groups=["gw-admins", "search-devs"])
DEV = OidcUser(f"dev-{RUN}", f"dev-{RUN}@example.com", "Dev Eloper", groups=["search-devs", "unmapped"])
VIEWER = OidcUser(f"viewer-{RUN}", f"vi-{RUN}@example.com", "Vi Ewer", groups=["gw-viewers"])
LONER = OidcUser(f"loner-{RUN}", f"lo-{RUN}@example.com", "Lo Ner")
TEAM = f"search-{RUN}"
CLIENT_SECRET = "idp-client-secret-0123456789"


@pytest.fixture(scope="module")
def idp():
    with FakeOidc(client_id="gateway-app", client_secret=CLIENT_SECRET, users=[ADMIN, DEV, VIEWER, LONER]) as fake:
        yield fake


@pytest.fixture(scope="module")
def sso_gateway(gateway, idp):
    """A gateway of the module's own with single sign-on on: its runtime's settings read with OIDC_* set (the
    environment is put back as it was at once), on the session's table, secrets and fake upstream."""
    with httpx.Client(base_url=gateway.url, headers={"Authorization": "Bearer " + _master()}, timeout=30) as admin:
        if admin.get("/team/info", params={"team_id": TEAM}).status_code == 404:
            new_team(admin, team_id=TEAM, team_alias="Search")
    secret_name = f"anthropic-gateway/oidc-client-{RUN}"
    boto3.client("secretsmanager").create_secret(Name=secret_name, SecretString=CLIENT_SECRET)
    environment = {
        "OIDC_ISSUER": idp.issuer,
        "OIDC_CLIENT_ID": "gateway-app",
        "OIDC_CLIENT_SECRET_NAME": secret_name,
        "OIDC_GROUP_ROLES": json.dumps({"gw-admins": "proxy_admin", "gw-viewers": "proxy_admin_viewer"}),
        "OIDC_GROUP_TEAMS": json.dumps({"search-devs": TEAM}),
        "PERSONAL_KEY_HOURS": "12",
    }
    with pytest.MonkeyPatch.context() as patch:
        for name, value in environment.items():
            patch.setenv(name, value)
        get_settings.cache_clear()
        try:
            settings = get_settings()
        finally:
            get_settings.cache_clear()  # read again, without OIDC_*, by everything else
    with start_gateway(settings) as server:
        yield server


def _master() -> str:
    from tests.conftest import MASTER_KEY

    return MASTER_KEY


# -- the console's sign-in, as a browser does it (without one) ------------------------------------------------------


def set_cookies(response: httpx.Response) -> dict[str, SimpleCookie]:
    """The cookies a response sets, by name, with their attributes."""
    found = {}
    for header in response.headers.get_list("set-cookie"):
        cookie = SimpleCookie()
        cookie.load(header)
        for name in cookie:
            found[name] = cookie
    return found


def sign_in(gateway_url: str, idp: FakeOidc, sub: str) -> httpx.Response:
    """The console's "Sign in with SSO" by hand: /sso/login, the provider's /authorize, back to /sso/callback with
    the sign-in cookie. The callback's response."""
    with httpx.Client(timeout=30) as http:
        started = http.get(f"{gateway_url}/sso/login")
        assert started.status_code == 302, started.text
        flow = set_cookies(started)["__Host-gateway-sign-in"]["__Host-gateway-sign-in"].value
        at_provider = http.get(started.headers["location"] + f"&login_hint={sub}")
        assert at_provider.status_code == 302, at_provider.text
        back = at_provider.headers["location"]
        assert back.startswith(f"{gateway_url}/sso/callback?")
        return http.get(back, headers={"cookie": f"__Host-gateway-sign-in={flow}"})


def session_cookie(response: httpx.Response) -> str:
    cookie = set_cookies(response)["__Host-gateway-session"]["__Host-gateway-session"]
    return f"__Host-gateway-session={cookie.value}"


@pytest.fixture(scope="module")
def admin_session(sso_gateway, idp):
    """A console session of ADMIN (proxy_admin through the gw-admins group): (cookie header, CSRF token)."""
    cookie = session_cookie(sign_in(sso_gateway.url, idp, ADMIN.sub))
    csrf = ok(httpx.get(f"{sso_gateway.url}/sso/session", headers={"cookie": cookie}))["csrf_token"]
    return cookie, csrf


def test_sso_config_is_public_and_says_what_the_cli_needs(sso_gateway, idp):
    assert ok(httpx.get(f"{sso_gateway.url}/sso/config")) == {
        "enabled": True,
        "issuer": idp.issuer,
        "client_id": "gateway-app",
        "scopes": "openid email profile",
        "personal_key_hours": 12.0,
    }


def test_login_sends_the_browser_to_the_provider_with_pkce_state_and_nonce(sso_gateway, idp):
    started = httpx.get(f"{sso_gateway.url}/sso/login")
    assert started.status_code == 302 and started.headers["cache-control"] == "no-store"
    location = urlsplit(started.headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == f"{idp.issuer}/authorize"
    query = {name: values[0] for name, values in parse_qs(location.query).items()}
    assert query["response_type"] == "code" and query["client_id"] == "gateway-app"
    assert query["redirect_uri"] == f"{sso_gateway.url}/sso/callback"
    assert query["code_challenge_method"] == "S256" and len(query["code_challenge"]) == 43
    assert len(query["state"]) >= 32 and len(query["nonce"]) >= 32 and query["state"] != query["nonce"]
    assert query["scope"] == "openid email profile"
    flow = set_cookies(started)["__Host-gateway-sign-in"]["__Host-gateway-sign-in"]
    assert flow["httponly"] and flow["secure"] and flow["samesite"] == "lax" and flow["path"] == "/"


def test_first_sign_in_creates_the_user_with_role_and_teams_from_groups(sso_gateway, idp, admin):
    back = sign_in(sso_gateway.url, idp, ADMIN.sub)
    assert back.status_code == 303 and back.headers["location"] == "../ui#/keys"
    cookie = set_cookies(back)["__Host-gateway-session"]["__Host-gateway-session"]
    assert cookie["httponly"] and cookie["secure"] and cookie["samesite"] == "strict" and cookie["path"] == "/"
    assert 0 < int(cookie["max-age"]) <= 8 * 3600
    assert set_cookies(back)["__Host-gateway-sign-in"]["__Host-gateway-sign-in"]["max-age"] == "0"  # flow ended
    user = ok(admin.get("/user/info", params={"user_id": ADMIN.sub}))["user_info"]
    assert (user["user_email"], user["user_alias"], user["user_role"]) == (ADMIN.email, ADMIN.name, "proxy_admin")
    assert user["teams"] == [TEAM]
    # The confidential client authenticated at the token endpoint, with the PKCE verifier.
    exchange = [form for form in idp.token_requests if form.get("grant_type") == "authorization_code"][-1]
    assert exchange["redirect_uri"] == f"{sso_gateway.url}/sso/callback" and len(exchange["code_verifier"]) >= 43


def test_the_session_says_who_and_carries_a_csrf_token(sso_gateway, admin_session):
    cookie, csrf = admin_session
    found = ok(httpx.get(f"{sso_gateway.url}/sso/session", headers={"cookie": cookie}))
    assert (found["user_id"], found["email"], found["role"]) == (ADMIN.sub, ADMIN.email, "proxy_admin")
    assert found["teams"] == [TEAM]
    assert found["csrf_token"] == csrf and len(csrf) >= 32
    assert error_of(httpx.get(f"{sso_gateway.url}/sso/session"))[0] == 401


def test_admin_api_with_the_session_cookie_needs_the_csrf_token_to_change_anything(sso_gateway, admin_session):
    cookie, csrf = admin_session
    with httpx.Client(base_url=sso_gateway.url, headers={"cookie": cookie}, timeout=30) as http:
        assert http.get("/key/list", params={"size": 1}).status_code == 200  # reads need no token
        status, kind, message = error_of(http.post("/key/generate", json={"key_alias": f"csrf-{RUN}"}))
        assert (status, kind) == (403, "permission_error") and "x-csrf-token" in message
        wrong = http.post("/key/generate", json={"key_alias": f"csrf-{RUN}"}, headers={"x-csrf-token": csrf + "x"})
        assert wrong.status_code == 403
        assert http.get("/key/info", params={"key": keys.hash_key(f"sk-nothing-{RUN}" * 2)}).status_code == 404
        created = ok(http.post("/key/generate", json={"key_alias": f"csrf-{RUN}"}, headers={"x-csrf-token": csrf}))
    assert works(sso_gateway.url, created["key"])


def test_a_forged_or_foreign_session_cookie_is_not_a_session(sso_gateway, admin_session):
    cookie, _ = admin_session
    name, _, value = cookie.partition("=")
    header, payload, signature = value.split(".")
    for forged in (f"{header}.{payload}.{signature[:-2]}AA", "not-a-jwt", value.replace(payload, payload[::-1])):
        response = httpx.get(f"{sso_gateway.url}/key/list", headers={"cookie": f"{name}={forged}"})
        assert error_of(response)[0] == 401
    # The session is not a credential of the pass-through: only keys are.
    response = httpx.post(f"{sso_gateway.url}/anthropic/v1/messages", headers={"cookie": cookie}, json={})
    assert error_of(response)[:2] == (401, "authentication_error")


def test_roles_from_groups_gate_the_admin_api(sso_gateway, idp, admin):
    viewer = session_cookie(sign_in(sso_gateway.url, idp, VIEWER.sub))
    csrf = ok(httpx.get(f"{sso_gateway.url}/sso/session", headers={"cookie": viewer}))["csrf_token"]
    with httpx.Client(base_url=sso_gateway.url, headers={"cookie": viewer, "x-csrf-token": csrf}) as http:
        assert http.get("/key/list").status_code == 200
        status, kind, message = error_of(http.post("/key/generate", json={}))
        assert (status, kind) == (403, "permission_error") and "proxy_admin_viewer" in message
    developer = session_cookie(sign_in(sso_gateway.url, idp, DEV.sub))
    # An internal user sees its own keys only (docs/access.md), and not the audit log.
    listed = ok(httpx.get(f"{sso_gateway.url}/key/list", headers={"cookie": developer}, params={"size": 100}))
    assert all(
        ok(admin.get("/key/info", params={"key": token}))["info"]["user_id"] == DEV.sub for token in listed["keys"]
    )
    status, _, message = error_of(httpx.get(f"{sso_gateway.url}/audit", headers={"cookie": developer}))
    assert status == 403 and "internal_user" in message
    # A role changed by an admin applies to the next request of the same session.
    ok(admin.post("/user/update", json={"user_id": DEV.sub, "user_role": "proxy_admin_viewer"}))
    assert httpx.get(f"{sso_gateway.url}/audit", headers={"cookie": developer}).status_code == 200
    # ... and a blocked user's session stops at once.
    ok(admin.post("/user/update", json={"user_id": DEV.sub, "blocked": True}))
    assert error_of(httpx.get(f"{sso_gateway.url}/audit", headers={"cookie": developer}))[0] == 401
    ok(admin.post("/user/update", json={"user_id": DEV.sub, "blocked": False, "user_role": "internal_user"}))


def test_a_later_sign_in_brings_the_role_back_to_the_groups_and_keeps_an_unmapped_one(sso_gateway, idp, admin):
    sign_in(sso_gateway.url, idp, ADMIN.sub)
    ok(admin.post("/user/update", json={"user_id": ADMIN.sub, "user_role": "internal_user_viewer"}))
    sign_in(sso_gateway.url, idp, ADMIN.sub)
    assert ok(admin.get("/user/info", params={"user_id": ADMIN.sub}))["user_info"]["user_role"] == "proxy_admin"
    sign_in(sso_gateway.url, idp, LONER.sub)  # no group maps a role: the default, then whatever an admin sets
    assert ok(admin.get("/user/info", params={"user_id": LONER.sub}))["user_info"]["user_role"] == "internal_user"
    ok(admin.post("/user/update", json={"user_id": LONER.sub, "user_role": "proxy_admin_viewer"}))
    sign_in(sso_gateway.url, idp, LONER.sub)
    assert ok(admin.get("/user/info", params={"user_id": LONER.sub}))["user_info"]["user_role"] == "proxy_admin_viewer"


def test_a_taken_email_is_not_a_way_into_another_user(sso_gateway, idp, admin):
    """A user an admin made with the same email stays theirs: the person's own user is made without the email."""
    email = f"shared-{RUN}@example.com"
    ok(admin.post("/user/new", json={"user_id": f"made-by-admin-{RUN}", "user_email": email, "auto_create_key": False}))
    idp.users[f"claims-{RUN}"] = OidcUser(f"claims-{RUN}", email, "Claimant", groups=["gw-admins"])
    assert sign_in(sso_gateway.url, idp, f"claims-{RUN}").headers["location"] == "../ui#/keys"
    own = ok(admin.get("/user/info", params={"user_id": f"claims-{RUN}"}))["user_info"]
    assert own["user_email"] is None
    other = ok(admin.get("/user/info", params={"user_id": f"made-by-admin-{RUN}"}))["user_info"]
    assert (other["user_email"], other["user_role"]) == (email, "internal_user")


def test_failed_sign_ins_end_on_the_console_with_the_reason_and_no_session(sso_gateway, idp):
    url = sso_gateway.url
    # No sign-in in progress in this browser (no cookie): the code is not exchanged.
    with httpx.Client(timeout=30) as http:
        started = http.get(f"{url}/sso/login")
        at_provider = http.get(started.headers["location"] + f"&login_hint={ADMIN.sub}")
        exchanges = len(idp.token_requests)
        back = http.get(at_provider.headers["location"])
    assert back.headers["location"] == "../ui#/sign-in/expired" and "__Host-gateway-session" not in set_cookies(back)
    assert len(idp.token_requests) == exchanges
    # Another browser's state: the same.
    with httpx.Client(timeout=30) as http:
        mine = set_cookies(http.get(f"{url}/sso/login"))["__Host-gateway-sign-in"]["__Host-gateway-sign-in"].value
        theirs = http.get(f"{url}/sso/login")
        at_provider = http.get(theirs.headers["location"] + f"&login_hint={ADMIN.sub}")
        back = http.get(at_provider.headers["location"], headers={"cookie": f"__Host-gateway-sign-in={mine}"})
    assert back.headers["location"] == "../ui#/sign-in/expired" and "__Host-gateway-session" not in set_cookies(back)
    # Declined at the provider.
    idp.deny_next = True
    back = sign_in(url, idp, ADMIN.sub)
    assert back.headers["location"] == "../ui#/sign-in/denied" and "__Host-gateway-session" not in set_cookies(back)


def test_sign_out_deletes_the_cookie_and_needs_the_csrf_token(sso_gateway, idp):
    cookie = session_cookie(sign_in(sso_gateway.url, idp, LONER.sub))
    csrf = ok(httpx.get(f"{sso_gateway.url}/sso/session", headers={"cookie": cookie}))["csrf_token"]
    assert error_of(httpx.post(f"{sso_gateway.url}/sso/logout", headers={"cookie": cookie}))[0] == 403
    out = httpx.post(f"{sso_gateway.url}/sso/logout", headers={"cookie": cookie, "x-csrf-token": csrf})
    assert out.status_code == 200
    ended = set_cookies(out)["__Host-gateway-session"]["__Host-gateway-session"]
    assert ended["max-age"] == "0" and ended.value == ""


# -- personal keys ----------------------------------------------------------------------------------------------------


def personal_key(url: str, token: str, **body: object) -> httpx.Response:
    return httpx.post(f"{url}/sso/personal-key", headers={"authorization": f"Bearer {token}"}, json=body, timeout=30)


def test_an_id_token_buys_a_personal_key_under_the_persons_user_and_team(sso_gateway, idp, admin):
    issued = ok(personal_key(sso_gateway.url, idp.id_token(DEV.sub)))
    assert (issued["user_id"], issued["team_id"], issued["user_role"]) == (DEV.sub, TEAM, "internal_user")
    assert issued["key_alias"].startswith("personal:") and issued["token"] == keys.hash_key(issued["key"])
    expires = keys.utcnow() + timedelta(hours=12)
    assert abs((datetime.fromisoformat(issued["expires"]) - expires).total_seconds()) < 60
    client = anthropic.Anthropic(base_url=sso_gateway.url + "/anthropic", api_key=issued["key"], max_retries=0)
    assert client.messages.create(model="claude-haiku-4-5", max_tokens=8, messages=HELLO).content
    # Listed under the user, marked as personal, with its expiry.
    listed = ok(admin.get("/user/info", params={"user_id": DEV.sub}))["keys"]
    [shown] = [key for key in listed if key["token"] == issued["token"]]
    assert shown["metadata"] == {"personal_key": True} and shown["expires"] == issued["expires"]
    assert shown["team_id"] == TEAM


def test_personal_keys_refuse_every_bad_id_token(sso_gateway, idp):
    url = sso_gateway.url
    cases = {
        "bad signature": idp.id_token(DEV.sub, key=new_rsa_key(), kid=idp.kid),
        "wrong audience": idp.id_token(DEV.sub, aud="another-app"),
        "expired": idp.id_token(DEV.sub, iat=1_600_000_000, exp=1_600_003_600),
        "another issuer": idp.id_token(DEV.sub, iss="https://login.example.com"),
        "unknown key": idp.id_token(DEV.sub, kid="no-such-key"),
    }
    for case, token in cases.items():
        status, kind, message = error_of(personal_key(url, token))
        assert (status, kind) == (401, "authentication_error"), case
        assert token not in message
    assert error_of(httpx.post(f"{url}/sso/personal-key"))[0] == 401
    assert error_of(personal_key(url, idp.id_token(DEV.sub), team_id="not-my-team"))[:2] == (403, "permission_error")
    assert error_of(personal_key(url, idp.id_token(DEV.sub), surprise=1))[0] == 400


def test_a_person_holds_at_most_the_slots_of_personal_keys_and_the_oldest_goes_first(sso_gateway, idp, admin):
    sub = f"busy-{RUN}"
    idp.users[sub] = OidcUser(sub, f"busy-{RUN}@example.com", "Busy")
    issued = [ok(personal_key(sso_gateway.url, idp.id_token(sub)))["key"] for _ in range(sso.PERSONAL_KEY_SLOTS + 2)]
    held = ok(admin.get("/user/info", params={"user_id": sub}))["keys"]
    assert len(held) == sso.PERSONAL_KEY_SLOTS
    assert {key["token"] for key in held} == {keys.hash_key(key) for key in issued[2:]}
    assert not works(sso_gateway.url, issued[0]) and works(sso_gateway.url, issued[-1])


# -- the audit log: what a sign-in changes, by the identity provider -------------------------------------------------


def audited(admin: httpx.Client, target: str, **filters: str) -> list[dict]:
    """The audit log's entries for `target`, newest first (one page: a test's target has few)."""
    page = ok(admin.get("/audit", params={"target": target, "page_size": 100, **filters}))
    assert page["cursor"] is None
    return page["entries"]


def test_what_sign_ins_change_is_audited_once_as_the_identity_providers(sso_gateway, idp, admin, caplog):
    caplog.set_level("INFO")
    sub = f"promoted-{RUN}"
    idp.users[sub] = OidcUser(sub, f"pro-{RUN}@example.com", "Pro Moted", groups=["gw-viewers"])
    sign_in(sso_gateway.url, idp, sub)
    (created,) = audited(admin, f"user:{sub}")
    assert (created["action"], created["actor"], created["actor_user_id"]) == ("user.create", f"idp:{sub}", sub)
    assert created["before"] is None
    assert {name: created["after"][name] for name in ("user_id", "user_email", "user_role", "teams", "metadata")} == {
        "user_id": sub,
        "user_email": f"pro-{RUN}@example.com",
        "user_role": "proxy_admin_viewer",
        "teams": [],
        "metadata": {"sso": True},
    }

    # The groups change at the provider: the next sign-in promotes the person and joins the mapped team.
    idp.users[sub].groups = ["gw-admins", "search-devs"]
    sign_in(sso_gateway.url, idp, sub)
    # "Who made this person an admin?": the provider, at their sign-in.
    (promoted,) = audited(admin, f"user:{sub}", action="user.update")
    assert (promoted["actor"], promoted["actor_user_id"]) == (f"idp:{sub}", sub)
    assert (promoted["before"], promoted["after"]) == (
        {"user_role": "proxy_admin_viewer"},
        {"user_role": "proxy_admin"},
    )
    [joined] = [entry for entry in audited(admin, f"team:{TEAM}", actor=f"idp:{sub}")]
    assert joined["action"] == "team.member_add" and joined["before"] is None
    [member] = joined["after"]["members"]
    assert (member["user_id"], member["team_id"], member["role"], member["new_user"]) == (sub, TEAM, "user", False)

    # A sign-in that changes nothing records nothing: each change once.
    sign_in(sso_gateway.url, idp, sub)
    assert [entry["action"] for entry in audited(admin, f"user:{sub}")] == ["user.update", "user.create"]
    assert len(audited(admin, f"team:{TEAM}", actor=f"idp:{sub}")) == 1
    # Each stored entry is one structured log line too.
    logged = [record.__dict__["audit"] for record in caplog.records if record.getMessage() == "audit"]
    mine = [(entry["action"], entry["target"]) for entry in logged if entry["actor"] == f"idp:{sub}"]
    assert mine == [("user.create", f"user:{sub}"), ("user.update", f"user:{sub}"), ("team.member_add", f"team:{TEAM}")]


def test_personal_keys_issued_and_revoked_are_audited_by_their_hash_only(sso_gateway, idp, admin):
    sub = f"keyed-{RUN}"
    idp.users[sub] = OidcUser(sub, f"keyed-{RUN}@example.com", "Key Ed", groups=["search-devs"])
    id_tokens = [idp.id_token(sub) for _ in range(sso.PERSONAL_KEY_SLOTS + 1)]
    issued = [ok(personal_key(sso_gateway.url, token)) for token in id_tokens]  # the last one revokes the first
    revoked, first = audited(admin, f"key:{issued[0]['token']}")
    assert (revoked["action"], revoked["actor"]) == ("key.delete", f"idp:{sub}")
    assert revoked["before"]["token"] == issued[0]["token"] and revoked["after"] is None
    generated_entries = [first] + [audited(admin, f"key:{key['token']}")[0] for key in issued[1:]]
    for key, generated in zip(issued, generated_entries, strict=True):
        assert (generated["action"], generated["actor"], generated["actor_user_id"]) == (
            "key.generate",
            f"idp:{sub}",
            sub,
        )
        after = generated["after"]
        assert (after["token"], after["user_id"], after["team_id"]) == (key["token"], sub, TEAM)
        assert (after["key_alias"], after["expires"], after["metadata"]) == (
            key["key_alias"],
            key["expires"],
            {"personal_key": True},
        )
    assert [len(audited(admin, f"key:{key['token']}")) for key in issued[1:]] == [1] * sso.PERSONAL_KEY_SLOTS
    everything = json.dumps(
        [audited(admin, f"user:{sub}"), *(audited(admin, f"key:{key['token']}") for key in issued)], default=str
    )
    for key in issued:
        assert key["key"] not in everything and key["key_name"][3:] not in everything  # nor its visible end
    assert all(token not in everything for token in id_tokens)


def test_a_sign_in_whose_audit_entry_cannot_be_written_changes_nothing(sso_gateway, idp, admin, monkeypatch):
    from anthropic_gateway.storage import audit, table

    def failing_put(entry: audit.Entry, retention_days: int) -> table.Put:
        return table.Put(entry.item(retention_days), "attribute_exists(pk)")  # fails inside the change's transaction

    newcomer, holder = f"unrecorded-{RUN}", f"holder-{RUN}"
    idp.users[newcomer] = OidcUser(newcomer, f"unrec-{RUN}@example.com", "Un Recorded", groups=["gw-admins"])
    idp.users[holder] = OidcUser(holder, f"holder-{RUN}@example.com", "Hol Der")
    held = ok(personal_key(sso_gateway.url, idp.id_token(holder)))
    monkeypatch.setattr(audit.Entry, "put", failing_put)
    assert error_of(personal_key(sso_gateway.url, idp.id_token(newcomer)))[0] == 409  # no user without its entry
    assert error_of(personal_key(sso_gateway.url, idp.id_token(holder)))[0] == 409  # no key without its entry
    monkeypatch.undo()
    assert admin.get("/user/info", params={"user_id": newcomer}).status_code == 404
    assert audited(admin, f"user:{newcomer}") == []
    assert [key["token"] for key in ok(admin.get("/user/info", params={"user_id": holder}))["keys"]] == [held["token"]]


def test_changes_made_in_a_console_session_name_the_sso_subject(sso_gateway, admin_session, admin):
    cookie, csrf = admin_session
    with httpx.Client(base_url=sso_gateway.url, headers={"cookie": cookie, "x-csrf-token": csrf}) as http:
        team = ok(http.post("/team/new", json={"team_alias": f"by-session-{RUN}"}))["team_id"]
        ok(http.post("/team/update", json={"team_id": team, "max_budget": 12}))
    entries = audited(admin, f"team:{team}")
    assert [entry["action"] for entry in entries] == ["team.update", "team.create"]
    assert {(entry["actor"], entry["actor_user_id"]) for entry in entries} == {(f"sso:{ADMIN.sub}", ADMIN.sub)}
    # Found by the session's actor, and by the person's user id.
    assert [entry["target"] for entry in audited(admin, f"team:{team}", actor=f"sso:{ADMIN.sub}")] == [
        f"team:{team}"
    ] * 2
    assert len(audited(admin, f"team:{team}", actor=ADMIN.sub)) == 2


# -- the CLI: anthropic-gateway login / key -------------------------------------------------------------------------


class ProviderClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Person:
    """Stands in for the developer at the provider's page: `login` prints where to go and waits (its `sleep`);
    this records each wait asked for, moves the provider's clock by it, and opens the printed page as the given
    user at the `approve_after`th wait."""

    def __init__(self, capsys: pytest.CaptureFixture[str], sub: str, *, approve_after: int = 1) -> None:
        self.capsys, self.sub, self.approve_after = capsys, sub, approve_after
        self.waits: list[float] = []
        self.pages: list[str] = []
        self.stderr = ""
        self.clock: ProviderClock | None = None  # set by the cli fixture

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        if self.clock is not None:
            self.clock.now += seconds
        self.stderr += self.capsys.readouterr().err
        if len(self.waits) == self.approve_after:
            page = re.search(r"open (\S+)", self.stderr).group(1)
            self.pages.append(page)
            assert httpx.get(f"{page}&user={self.sub}").status_code == 200


@pytest.fixture
def cli(sso_gateway, idp, tmp_path, monkeypatch, capsys):
    """Run `anthropic-gateway login|key ...` in-process (config in a temporary directory): (status, stdout, stderr).
    The provider counts device-code time on a clock the Person's waits move."""
    monkeypatch.setenv("ANTHROPIC_GATEWAY_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.delenv("GATEWAY_URL", raising=False)
    clock = ProviderClock()
    monkeypatch.setattr(idp, "clock", clock)

    def run(*argv: str, person: Person | None = None) -> tuple[int, str, str]:
        if person is not None:
            person.clock = clock
            monkeypatch.setattr(login_cli, "sleep", person)
        status = login_cli.main(list(argv))
        out, err = capsys.readouterr()
        return status, out, (person.stderr if person else "") + err

    return run


def test_login_runs_the_device_flow_and_key_prints_a_working_personal_key(cli, sso_gateway, idp, capsys, tmp_path):
    person = Person(capsys, DEV.sub)
    status, out, err = cli("login", "--url", sso_gateway.url, person=person)
    assert status == 0, err
    assert person.pages[0].startswith(f"{idp.issuer}/device?user_code=") and "confirm the code" in err
    assert "apiKeyHelper" in err and out == ""
    credentials = tmp_path / "config" / "credentials.json"
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
    assert stat.S_IMODE(credentials.parent.stat().st_mode) == 0o700
    stored = json.loads(credentials.read_text())["gateways"][sso_gateway.url]
    assert stored["user_id"] == DEV.sub and stored["team_id"] == TEAM and stored["refresh_token"]

    status, out, _ = cli("key")
    assert status == 0 and out == stored["key"] + "\n"
    client = anthropic.Anthropic(base_url=sso_gateway.url + "/anthropic", api_key=out.strip(), max_retries=0)
    assert client.messages.create(model="claude-haiku-4-5", max_tokens=8, messages=HELLO).content
    # The device request asked for a refresh token (the provider offers offline_access) and used no secret.
    device_grants = [form for form in idp.token_requests if form.get("grant_type") == login_cli.DEVICE_GRANT]
    assert device_grants and all("client_secret" not in form for form in device_grants)


def test_key_renews_an_expired_key_with_the_refresh_token_and_signs_in_again_only_when_it_must(
    cli, sso_gateway, idp, capsys, monkeypatch
):
    assert cli("login", "--url", sso_gateway.url, person=Person(capsys, DEV.sub))[0] == 0
    _, first, _ = cli("key")
    first = first.strip()
    device_sign_ins = idp.count("/device_authorization")

    later = keys.utcnow() + timedelta(hours=13)  # past the key's 12 hours, at the gateway and on the laptop alike
    monkeypatch.setattr(keys, "utcnow", lambda: later)
    monkeypatch.setattr(login_cli, "now", lambda: later)
    assert not works(sso_gateway.url, first)
    status, second, err = cli("key")
    assert status == 0, err
    second = second.strip()
    assert second != first and works(sso_gateway.url, second)
    assert idp.count("/device_authorization") == device_sign_ins  # renewed without asking the person

    # The provider ended the session (refresh token refused): `key` signs the person in again, and only then.
    idp.refresh_tokens_work = False
    try:
        evening = later + timedelta(hours=12)
        monkeypatch.setattr(keys, "utcnow", lambda: evening)
        monkeypatch.setattr(login_cli, "now", lambda: evening)
        person = Person(capsys, DEV.sub)
        status, third, err = cli("key", person=person)
    finally:
        idp.refresh_tokens_work = True
    assert status == 0, err
    assert person.pages
    assert idp.count("/device_authorization") == device_sign_ins + 1
    assert works(sso_gateway.url, third.strip()) and not works(sso_gateway.url, second)


def test_the_admin_commands_call_with_the_personal_key_of_login_and_act_with_its_role(
    cli, sso_gateway, idp, capsys, monkeypatch, admin
):
    from anthropic_gateway import cli as keys_cli
    from anthropic_gateway import org_cli

    monkeypatch.delenv("MASTER_KEY", raising=False)
    monkeypatch.delenv("GATEWAY_KEY", raising=False)
    assert cli("login", "--url", sso_gateway.url, person=Person(capsys, DEV.sub))[0] == 0
    # No key and no URL in the environment: the gateway signed in to, with the person's key (internal_user).
    alias = f"from-the-terminal-{uuid.uuid4().hex[:8]}"
    assert keys_cli.main(["generate", "--key-alias", alias]) == 0
    created = json.loads(capsys.readouterr().out)
    assert created["user_id"] == DEV.sub  # theirs without naming it
    assert keys_cli.main(["list", "--size", "100"]) == 0
    listed = json.loads(capsys.readouterr().out)["keys"]
    assert created["token"] in listed
    assert all(ok(admin.get("/key/info", params={"key": token}))["info"]["user_id"] == DEV.sub for token in listed)
    assert org_cli.main("audit", []) == 1  # an internal user does not read the audit log
    assert "internal_user" in json.loads(capsys.readouterr().err)["error"]["message"]
    (generated,) = ok(admin.get("/audit", params={"target": f"key:{created['token']}"}))["entries"]
    saved = json.loads(login_cli.credentials_path().read_text())["gateways"][sso_gateway.url]
    personal = ok(admin.get("/key/info", params={"key": saved["token"]}))["info"]
    assert personal["metadata"] == {"personal_key": True}
    assert (generated["actor"], generated["actor_user_id"]) == (f"key:{personal['key_alias']}", DEV.sub)
    # Another gateway named, where nobody signed in: no key to call it with.
    assert keys_cli.main(["list", "--url", "http://127.0.0.1:9"]) == 2
    assert "anthropic-gateway login" in capsys.readouterr().err


def test_the_device_flow_slows_down_when_told_and_gives_up_when_the_code_expires(cli, sso_gateway, idp, capsys):
    idp.slow_down_next(1)
    person = Person(capsys, LONER.sub, approve_after=2)
    assert cli("login", "--url", sso_gateway.url, person=person)[0] == 0
    assert person.waits == [5.0, 10.0]  # RFC 8628: 5 s more after slow_down

    class Expiring(Person):
        def __call__(self, seconds: float) -> None:
            super().__call__(seconds)
            idp.expire_devices()

    status, _, err = cli("login", "--url", sso_gateway.url, person=Expiring(capsys, LONER.sub, approve_after=99))
    assert status == 1 and "expired" in err

    class Declining(Person):
        def __call__(self, seconds: float) -> None:
            super().__call__(seconds)
            idp.deny(re.search(r"code (\S+)\.", self.stderr).group(1))

    status, _, err = cli("login", "--url", sso_gateway.url, person=Declining(capsys, LONER.sub, approve_after=99))
    assert status == 1 and "declined" in err


def test_the_cli_refuses_to_send_tokens_in_the_clear_and_says_what_to_do(cli):
    status, _, err = cli("login", "--url", "http://gateway.example.com")
    assert status == 1 and "https" in err
    status, _, err = cli("key")
    assert status == 1 and "anthropic-gateway login --url" in err
    assert not os.path.exists(login_cli.credentials_path())
