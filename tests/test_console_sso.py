"""Single sign-on in the console, driven in a real headless Chromium: "Sign in with SSO" through the test suite's
OpenID provider and back, the session cookie as the browser keeps it, the console working with it (CSRF token
included), a change without the token refused, sign-out, and a failed sign-in explained.

The provider is at http://localhost:<port> and the gateway at http://127.0.0.1:<port>: different sites to the
browser, as an identity provider and a gateway are, so the sign-in cookie's SameSite=Lax and the session's
SameSite=Strict meet what they meet in production. Secure cookies work over plain http here because Chromium
treats localhost and 127.0.0.1 as secure contexts (as `make dev` at http://localhost:4000 relies on).
"""

from __future__ import annotations

import uuid

import pytest
from playwright.sync_api import expect

from support.orgs import ok, works
from tests import test_console, test_sso
from tests.test_console import Watched
from tests.test_sso import ADMIN, DEV

# The console tests' browser and the SSO tests' provider and gateway (one of each per module).
browser = test_console.browser
idp = test_sso.idp
sso_gateway = test_sso.sso_gateway


@pytest.fixture
def watched(browser, sso_gateway):
    """The console tests' watched browser context, on the gateway with single sign-on on."""
    watched = Watched(browser, sso_gateway)
    yield watched
    watched.context.close()


SESSION, SIGN_IN = "__Host-gateway-session", "__Host-gateway-sign-in"


def sso_sign_in(watched: Watched, idp, sub: str) -> None:
    idp.sign_in_as = sub
    watched.page.goto(watched.url)
    watched.page.get_by_role("button", name="Sign in with SSO").click()


def cookies(watched: Watched) -> dict:
    return {cookie["name"]: cookie for cookie in watched.context.cookies()}


def test_sso_sign_in_sets_a_strict_http_only_secure_session_and_the_console_works_with_it(
    watched: Watched, sso_gateway, idp, admin
):
    page = watched.page
    sso_sign_in(watched, idp, ADMIN.sub)
    expect(page.get_by_role("heading", name="Keys")).to_be_visible()
    expect(page.locator("#who")).to_have_text(f"{ADMIN.email} · proxy_admin")
    assert page.url == f"{sso_gateway.url}/ui#/keys"

    session = cookies(watched)[SESSION]
    assert (session["httpOnly"], session["secure"], session["sameSite"], session["path"]) == (True, True, "Strict", "/")
    assert session["domain"] == "127.0.0.1" and SIGN_IN not in cookies(watched)  # no Domain: this host only
    assert page.evaluate("document.cookie") == ""  # the page's scripts cannot read it
    assert page.evaluate("sessionStorage.length") == 0  # no master key anywhere

    # A key made through the console (its request carries the CSRF token), working on the pass-through.
    alias = f"sso-console-{uuid.uuid4().hex[:8]}"
    page.get_by_role("button", name="Create key").click()
    form = page.get_by_role("region", name="Create a key")
    form.get_by_label("Alias").fill(alias)
    form.get_by_role("button", name="Create key").click()
    key = page.get_by_role("region", name=f"New key {alias}").locator("#new-key-value").inner_text()
    assert works(sso_gateway.url, key)
    assert ok(admin.get("/key/info", params={"key": key}))["info"]["key_alias"] == alias
    assert watched.errors == []


def test_a_change_made_with_the_session_but_without_its_csrf_token_is_refused(watched: Watched, sso_gateway, idp):
    page = watched.page
    sso_sign_in(watched, idp, ADMIN.sub)
    expect(page.get_by_role("heading", name="Keys")).to_be_visible()
    post = """async (csrf) => {
        const headers = {"content-type": "application/json"};
        if (csrf) headers["x-csrf-token"] = csrf;
        const response = await fetch("/key/generate", {method: "POST", credentials: "same-origin", headers,
                                                       body: JSON.stringify({metadata: {via: "page"}})});
        return [response.status, (await response.json())];
    }"""
    status, body = page.evaluate(post, None)
    assert status == 403 and "x-csrf-token" in body["error"]["message"]
    csrf = page.evaluate('fetch("/sso/session").then((r) => r.json()).then((s) => s.csrf_token)')
    status, body = page.evaluate(post, csrf)
    assert status == 200 and body["key"].startswith("sk-")


def test_sign_out_ends_the_session_in_this_browser(watched: Watched, sso_gateway, idp):
    page = watched.page
    sso_sign_in(watched, idp, ADMIN.sub)
    expect(page.get_by_role("heading", name="Keys")).to_be_visible()
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("button", name="Sign in with SSO")).to_be_visible()
    assert SESSION not in cookies(watched)
    assert page.evaluate('fetch("/key/list").then((r) => r.status)') == 401
    page.reload()
    expect(page.get_by_label("Master key")).to_be_visible()  # still signed out after a reload


def test_a_person_signs_in_with_their_role_and_is_not_refused_what_it_allows(watched: Watched, sso_gateway, idp):
    """An internal_user opens the console on their own keys (docs/access.md): signed in, their role shown, and no
    refusal on the way in (before roles were enforced, such a person was told the console needed proxy_admin)."""
    page = watched.page
    sso_sign_in(watched, idp, DEV.sub)
    expect(page.locator("#who")).to_have_text(f"{DEV.email} · internal_user")
    expect(page.get_by_role("alert")).to_have_count(0)


def test_a_declined_sign_in_comes_back_to_the_sign_in_page_with_the_reason(watched: Watched, sso_gateway, idp):
    page = watched.page
    idp.deny_next = True
    sso_sign_in(watched, idp, ADMIN.sub)
    expect(page.get_by_role("alert")).to_have_text("The sign-in was declined at the identity provider.")
    assert page.url == f"{sso_gateway.url}/ui"  # the reason is not left in the address bar
    assert SESSION not in cookies(watched)
    # Master-key sign-in stays beside it.
    expect(page.get_by_label("Master key")).to_be_visible()
