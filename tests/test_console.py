"""The admin console at /ui, driven in a real headless Chromium (Debian's, through Playwright) against the
gateway on loopback, with the real Anthropic SDK checking that what the console does holds on the pass-through.

CONSOLE_SCREENSHOTS=1 also writes docs/console-keys.png and docs/console-spend.png (with a few demo keys and
some days of tag spend written first, so the pictures show a console in use).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import anthropic
import httpx
import pytest
from playwright.sync_api import Page, Playwright, expect, sync_playwright
from samcli.yamlhelper import yaml_parse

from anthropic_gateway import console, day_spend
from anthropic_gateway.runtime import Runtime
from anthropic_gateway.settings import get_settings
from anthropic_gateway.usage import Usage
from tests.conftest import MASTER_KEY

DEBIAN_CHROMIUM = "/usr/bin/chromium"  # Debian's package; `make test` installs it when run as root (Makefile)
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SCREENSHOTS = os.environ.get("CONSOLE_SCREENSHOTS") == "1"
HELLO = [{"role": "user", "content": "Hello from the console test"}]

expect.set_options(timeout=20_000)  # two shared cores: generous, and only ever spent when a test fails


def chromium(playwright: Playwright) -> str | None:
    """The Chromium to drive: $CHROMIUM when set (used as given: a wrong path fails the tests, it does not skip
    them), else Debian's, else one on PATH, else Playwright's own download (`playwright install chromium`)."""
    if configured := os.environ.get("CHROMIUM"):
        return configured
    found = [DEBIAN_CHROMIUM, shutil.which("chromium"), shutil.which("chromium-browser")]
    found.append(playwright.chromium.executable_path)
    return next((path for path in found if path and os.access(path, os.X_OK)), None)


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        executable = chromium(playwright)
        if executable is None:
            pytest.skip(
                "no Chromium for the console's browser tests: set CHROMIUM=/path/to/chromium, install Debian's "
                "chromium ('sudo apt-get install chromium', or make test as root), or 'playwright install chromium'"
            )
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def test_the_browser_tests_find_a_chromium_or_say_why_not(monkeypatch, tmp_path):
    """$CHROMIUM first; Playwright's own download when there is no other; none: the tests skip with a reason."""
    monkeypatch.setitem(globals(), "DEBIAN_CHROMIUM", str(tmp_path / "not-installed"))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("PLAYWRIGHT_BROWSERS_PATH", str(tmp_path / "playwright"))
    monkeypatch.delenv("CHROMIUM", raising=False)
    with sync_playwright() as playwright:
        assert chromium(playwright) is None
        downloaded = Path(playwright.chromium.executable_path)
        assert downloaded.is_relative_to(tmp_path / "playwright")
        downloaded.parent.mkdir(parents=True)
        downloaded.touch(mode=0o755)
        assert chromium(playwright) == str(downloaded)
        monkeypatch.setenv("CHROMIUM", "/opt/chromium/chrome")
        assert chromium(playwright) == "/opt/chromium/chrome"


class Watched:
    """A fresh browser context (no storage) with what the page did recorded: dialogs, request URLs, errors."""

    def __init__(self, browser, gateway):
        self.context = browser.new_context(viewport={"width": 1440, "height": 900})
        self.page = self.context.new_page()
        self.url = gateway.url + "/ui"
        self.dialogs: list[str] = []
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.page.on("dialog", lambda dialog: (self.dialogs.append(dialog.message), dialog.dismiss()))
        self.page.on("request", lambda request: self.requests.append(request.url))
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))

    def sign_in(self, key: str = MASTER_KEY) -> None:
        self.page.goto(self.url)
        field = self.page.get_by_label("Master key")
        field.fill(key)
        field.press("Enter")  # the form submits on Enter

    def assert_master_key_kept_in_session_only(self) -> None:
        page = self.page
        assert MASTER_KEY not in page.url
        assert all(MASTER_KEY not in url for url in self.requests), "the master key went into a URL"
        assert all(MASTER_KEY not in cookie["value"] for cookie in self.context.cookies())
        assert MASTER_KEY not in page.evaluate("JSON.stringify(Object.entries(localStorage))")
        assert self.errors == [], self.errors


@pytest.fixture
def watched(browser, gateway):
    watched = Watched(browser, gateway)
    yield watched
    watched.context.close()


def sdk(gateway, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url + "/anthropic", api_key=key, max_retries=0)


def works(gateway, key: str) -> bool:
    try:
        sdk(gateway, key).messages.create(model="claude-haiku-4-5", max_tokens=8, messages=HELLO)
    except anthropic.AuthenticationError:
        return False
    return True


def confirm(page: Page, button: str) -> None:
    dialog = page.locator("dialog#confirm")
    expect(dialog).to_be_visible()
    dialog.get_by_role("button", name=button).click()
    expect(dialog).to_be_hidden()


def screenshot(page: Page, name: str) -> None:
    if SCREENSHOTS:
        page.screenshot(path=DOCS / name, full_page=True)


# -- the static files ----------------------------------------------------------------------------------------------


def test_console_files_need_no_key_and_carry_the_security_headers(gateway):
    with httpx.Client(base_url=gateway.url, timeout=10) as http:
        page = http.get("/ui")
        assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
        assert '<script type="module" src="ui/app.js">' in page.text
        for name, content_type in [("app.js", "text/javascript"), ("console.css", "text/css")]:
            asset = http.get(f"/ui/{name}")
            assert asset.status_code == 200 and asset.headers["content-type"].startswith(content_type)
        for response in (page, asset):
            csp = response.headers["content-security-policy"]
            assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe" not in csp
            assert response.headers["x-content-type-options"] == "nosniff"
        assert http.get("/ui/").headers["location"] == "../ui"  # relative: keeps any base path
        for missing in ("/ui/nope.js", "/ui/../app.py", "/ui/%2e%2e/app.py", "/ui/.hidden", "/ui/ui/app.js"):
            response = http.get(missing)
            assert response.status_code == 404 and response.json()["type"] == "error", missing


def test_the_stack_outputs_the_console_url_on_the_http_api():
    template = yaml_parse((ROOT / "template.yaml").read_text())
    assert template["Outputs"]["ConsoleUrl"]["Value"] == {
        "Fn::Sub": "https://${HttpApi}.execute-api.${AWS::Region}.${AWS::URLSuffix}/ui"
    }
    routes = {
        event["Properties"]["Path"] for event in template["Resources"]["ApiFunction"]["Properties"]["Events"].values()
    }
    assert {"/ui", "/ui/{proxy+}"} <= routes


def test_console_assets_fit_the_budget():
    files = [path for path in console.ASSETS.rglob("*") if path.is_file()]
    assert sum(path.stat().st_size for path in files) <= 300 * 1024
    assert not [path for path in files if path.suffix not in (".html", ".css", ".js", ".svg")]


# -- signing in ------------------------------------------------------------------------------------------------------


def test_wrong_master_key_is_refused_with_a_message(watched, virtual_key):
    page = watched.page
    watched.sign_in("sk-not-the-master-key-0000000000")
    expect(page.get_by_role("alert")).to_have_text("Wrong key: the gateway did not accept it.")
    assert page.evaluate("sessionStorage.length") == 0

    page.get_by_label("Master key").fill(virtual_key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("That key has no role on the admin API")
    expect(page.get_by_role("heading", name="Keys")).to_have_count(0)


def test_sign_in_keeps_the_key_in_session_storage_and_sign_out_forgets_it(watched):
    page = watched.page
    watched.sign_in()
    expect(page.get_by_role("heading", name="Keys")).to_be_visible()
    assert page.evaluate("Object.values(sessionStorage)") == [MASTER_KEY]
    watched.assert_master_key_kept_in_session_only()

    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_label("Master key")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0
    page.reload()
    expect(page.get_by_label("Master key")).to_be_visible()


# -- a key's whole life ----------------------------------------------------------------------------------------------


def test_key_lifecycle_in_the_console_holds_on_the_pass_through(watched, gateway, admin, showcase):
    page = watched.page
    alias = f"console-{uuid.uuid4().hex[:8]}"
    watched.sign_in()

    # Create, with every setting.
    page.get_by_role("button", name="Create key").click()
    form = page.get_by_role("region", name="Create a key")
    form.get_by_label("Alias").fill(alias)
    form.get_by_label("Models").fill("claude-haiku-4-5, claude-sonnet-*")
    form.get_by_label("Max budget (USD)").fill("5")
    form.get_by_label("Budget period").fill("30d")
    form.get_by_label("Expires after").fill("90d")
    form.get_by_label("Requests per minute").fill("120")
    form.get_by_label("Tokens per minute").fill("200000")
    form.get_by_label("Parallel requests").fill("4")
    form.get_by_label("Tags").fill("team:console, app:ui")
    form.get_by_label("Upstreams").fill("anthropic, bedrock")
    form.get_by_label("Metadata").fill('{"owner": "ana@example.com"}')
    form.get_by_role("button", name="Create key").click()

    # Shown once, with a ready snippet.
    shown = page.get_by_role("region", name=f"New key {alias}")
    key = shown.locator("#new-key-value").inner_text()
    assert re.fullmatch(r"sk-[A-Za-z0-9_-]{22,}", key)
    expect(shown).to_contain_text(f"export ANTHROPIC_BASE_URL={gateway.url}/anthropic ANTHROPIC_API_KEY={key}")
    expect(shown).to_contain_text(f'anthropic.Anthropic(base_url="{gateway.url}/anthropic", api_key="{key}")')

    # Listed, with what was set.
    row = page.locator("table.keys tbody tr", has=page.get_by_role("link", name=alias, exact=True))
    expect(row).to_contain_text(f"sk-...{key[-4:]}")
    expect(row.locator(".badge")).to_have_text("active")
    expect(row).to_contain_text("$0.00 / $5.00")
    expect(row).to_contain_text("120 / 200,000 / 4")
    expect(row).to_contain_text("team:console")
    shown.get_by_role("button", name="Done, I saved it").click()
    expect(shown).to_have_count(0)
    assert key not in page.content()
    stored = admin.get("/key/info", params={"key": key}).json()["info"]
    assert stored["models"] == ["claude-haiku-4-5", "claude-sonnet-*"] and stored["budget_duration"] == "30d"
    assert stored["tags"] == ["team:console", "app:ui"] and stored["metadata"] == {"owner": "ana@example.com"}
    assert stored["expires"] is not None and stored["upstreams"] == ["anthropic", "bedrock"]
    screenshot(page, "console-keys.png")

    # The key works through the SDK.
    assert sdk(gateway, key).messages.create(model="claude-haiku-4-5", max_tokens=8, messages=HELLO).type == "message"

    # Its page: block it, and the SDK gets 401; unblock, and it works again.
    row.get_by_role("link", name=alias).click()
    expect(page.get_by_role("heading", name=alias)).to_be_visible()
    page.get_by_role("button", name="Block", exact=True).click()
    confirm(page, "Block key")
    expect(page.get_by_role("status")).to_have_text("Key blocked: requests with it now get 401.")
    expect(page.locator("h1 .badge")).to_have_text("blocked")
    with pytest.raises(anthropic.AuthenticationError, match="blocked"):
        sdk(gateway, key).messages.create(model="claude-haiku-4-5", max_tokens=8, messages=HELLO)
    page.get_by_role("button", name="Unblock").click()
    expect(page.locator("h1 .badge")).to_have_text("active")
    assert works(gateway, key)

    # Edit its budget.
    settings = page.get_by_role("region", name="Settings")
    settings.get_by_label("Max budget (USD)").fill("12.5")
    settings.get_by_role("button", name="Save changes").click()
    expect(page.get_by_role("status")).to_have_text("Saved: max_budget.")
    expect(page.get_by_role("region", name="Usage")).to_contain_text("/ $12.50")
    assert admin.get("/key/info", params={"key": key}).json()["info"]["max_budget"] == 12.5

    # Regenerate: a new key, shown once; the old one stops at once.
    page.get_by_role("button", name="Regenerate").click()
    confirm(page, "Regenerate")
    regenerated = page.get_by_role("region", name="Regenerated key")
    new_key = regenerated.locator("#new-key-value").inner_text()
    assert new_key != key and new_key.startswith("sk-")
    assert not works(gateway, key) and works(gateway, new_key)
    regenerated.get_by_role("button", name="Done, I saved it").click()
    assert new_key not in page.content()

    # Delete: asks first; Cancel keeps the key.
    page.get_by_role("button", name="Delete").click()
    confirm(page, "Cancel")
    assert works(gateway, new_key)
    page.get_by_role("button", name="Delete").click()
    confirm(page, "Delete key")
    expect(page.get_by_role("status")).to_contain_text(f"Deleted “{alias}”")
    expect(page.get_by_role("heading", name="Keys")).to_be_visible()
    expect(page.get_by_role("link", name=alias, exact=True)).to_have_count(0)
    assert admin.get("/key/info", params={"key": new_key}).status_code == 404
    assert not works(gateway, new_key)

    assert watched.dialogs == []  # confirmations are the page's own, never window.confirm
    watched.assert_master_key_kept_in_session_only()


def test_errors_from_the_api_are_shown_in_the_page(watched, make_key):
    page = watched.page
    taken = f"taken-{uuid.uuid4().hex[:8]}"
    make_key(key_alias=taken)
    watched.sign_in()
    page.get_by_role("button", name="Create key").click()
    form = page.get_by_role("region", name="Create a key")
    form.get_by_label("Alias").fill(taken)
    form.get_by_role("button", name="Create key").click()
    expect(form.get_by_role("alert")).to_have_text(f"key_alias '{taken}' is already in use.")
    form.get_by_label("Alias").fill(f"{taken}-2")
    form.get_by_label("Budget period").fill("fortnight")
    form.get_by_role("button", name="Create key").click()
    expect(form.get_by_role("alert")).to_contain_text("budget_duration")

    page.goto(watched.url + "#/keys/" + "0" * 64)
    expect(page.get_by_role("alert")).to_contain_text("Could not load this key: Key not found")


def test_what_users_typed_is_shown_as_text_and_runs_nothing(watched, make_key):
    page = watched.page
    alias = f"<img src=x onerror=alert(1)> {uuid.uuid4().hex[:6]}"
    make_key(key_alias=alias, models=["<b>model</b>"], metadata={"note": "<script>alert(2)</script>"})
    watched.sign_in()
    page.get_by_role("searchbox", name="Filter by alias").fill(alias)
    page.get_by_role("button", name="Filter").click()

    link = page.get_by_role("link", name=alias, exact=True)
    expect(link).to_have_text(alias)
    expect(page.locator("table.keys")).to_contain_text("<b>model</b>")
    assert page.locator("main img, main b, main script").count() == 0
    link.click()
    expect(page.get_by_role("heading", name=alias)).to_be_visible()
    expect(page.get_by_label("Metadata")).to_have_value('{\n  "note": "<script>alert(2)</script>"\n}')
    assert page.locator("main img, main b, main script").count() == 0
    assert watched.dialogs == []
    watched.assert_master_key_kept_in_session_only()


# -- spend -------------------------------------------------------------------------------------------------------------


def test_spend_page_shows_the_tags_of_the_requests_made(watched, gateway, admin, make_key, showcase):
    page = watched.page
    unique = uuid.uuid4().hex[:8]
    team, app = f"team:{unique}", f"app:{unique}"
    alias = f"spender-{unique}"
    key = make_key(key_alias=alias)
    # Large usage, so these tags lead the report (and the chart) whatever else the session recorded today.
    usage = {"input_tokens": 4_000_000, "output_tokens": 2_000}
    client = sdk(gateway, key)
    for tags in ([team, app], [team, app], [team]):
        client.messages.create(
            model="claude-sonnet-4-5", max_tokens=16, messages=HELLO,
            extra_body={"litellm_metadata": {"tags": tags}}, extra_headers={"x-fake-usage": json.dumps(usage)},
        )  # fmt: skip
    gateway.drain()  # tag spend is written after the response
    rows = spend_rows(admin)
    assert rows[team]["log_count"] == 3 and rows[app]["log_count"] == 2, rows

    watched.sign_in()
    page.get_by_role("link", name="Spend", exact=True).click()
    table = page.locator("table.spend-tag")
    expect(table.locator(f'tr[data-tag="{team}"] td').nth(1)).to_have_text("3")
    expect(table.locator(f'tr[data-tag="{app}"] td').nth(1)).to_have_text("2")
    spend = table.locator(f'tr[data-tag="{team}"] td').nth(2)
    expect(spend).to_have_text(f"${rows[team]['total_spend']:,.2f}")
    chart = page.get_by_role("img", name="Spend (USD) per day and tag")
    today = day_spend.today().isoformat()
    expect(chart.locator(f'rect[data-series="{team}"][data-day="{today}"]')).to_have_count(1)
    expect(page.get_by_role("region", name="Spend per tag").locator(".legend")).to_contain_text(team)
    page.get_by_label("Metric").select_option("requests")
    expect(page.get_by_role("img", name="Requests per day and tag")).to_be_visible()
    top = page.get_by_role("region", name="Top keys by spend")
    expect(top.get_by_role("link", name=alias)).to_be_visible()

    # The tag table's last row counts each tagged request once (the rows count a two-tag request twice), from the
    # API's distinct totals; one meaning of "requests" on the page, stated.
    totals = admin.get("/spend/tags/totals").json()
    total_row = table.locator("tfoot tr").first
    expect(total_row.locator("th")).to_have_text("All tagged requests")
    expect(total_row.locator("td").first).to_have_text(f"{totals['log_count']:,}")
    assert totals["log_count"] <= sum(row["log_count"] for row in rows.values()) - 2  # our two two-tag requests
    expect(page.locator("#requests-meaning")).to_contain_text("requests the gateway refused itself")

    # A range without those days shows no such tags; an impossible one shows the API's message.
    page.get_by_label("From", exact=True).fill("2001-01-01")
    page.get_by_label("To", exact=True).fill("2001-01-31")
    page.get_by_role("button", name="Apply").click()
    expect(page.get_by_role("region", name="Spend per tag")).to_contain_text("No tagged requests in this range.")
    page.get_by_label("From", exact=True).fill("2001-02-01")
    page.get_by_role("button", name="Apply").click()
    for region in ("Spend per tag", "Spend per team", "Spend per user"):
        alert = page.get_by_role("region", name=region).get_by_role("alert")
        expect(alert).to_contain_text("start_date (2001-02-01) is after end_date (2001-01-31)")

    if SCREENSHOTS:
        page.get_by_label("Metric").select_option("spend")
        page.get_by_role("button", name="30 days").click()
        expect(page.get_by_role("region", name="Spend per tag").locator(".legend")).to_contain_text(team)
        screenshot(page, "console-spend.png")
    watched.assert_master_key_kept_in_session_only()


def spend_rows(admin: httpx.Client) -> dict[str, dict]:
    """/spend/tags, by tag."""
    response = admin.get("/spend/tags")
    assert response.status_code == 200, response.text
    return {row["individual_request_tag"]: row for row in response.json()}


# -- screenshots -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def showcase(gateway):
    """With CONSOLE_SCREENSHOTS=1: demo keys with some spend, and two weeks of spend per tag, team and user, for
    the pictures."""
    if not SCREENSHOTS:
        return
    with httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {MASTER_KEY}"}, timeout=30) as http:
        demo = [
            {"key_alias": "search-team", "models": ["claude-sonnet-4-5", "claude-haiku-4-5"], "max_budget": 50,
             "budget_duration": "30d", "rpm_limit": 100, "max_parallel_requests": 5, "tags": ["team:search"]},
            {"key_alias": "support-bot", "models": ["claude-haiku-4-5"], "max_budget": 20, "budget_duration": "1mo",
             "rpm_limit": 600, "tpm_limit": 400000, "tags": ["team:support", "app:bot"]},
            {"key_alias": "data-pipeline", "max_budget": 200, "tpm_limit": 2000000, "duration": "90d",
             "tags": ["team:data"]},
            {"key_alias": "ci-evals", "models": ["claude-*"], "max_budget": 10, "tags": ["team:platform"],
             "blocked": True},
        ]  # fmt: skip
        for team_id, alias, user_id, email in DEMO_PEOPLE:
            http.post("/team/new", json={"team_id": team_id, "team_alias": alias, "max_budget": 5000})
            http.post("/user/new", json={"user_id": user_id, "user_email": email, "teams": [team_id],
                                         "auto_create_key": False})  # fmt: skip
        for settings, usage in zip(demo, [3_000_000, 5_000_000, 20_000_000, 400_000], strict=True):
            key = http.post("/key/generate", json=settings).json()["key"]
            if not settings.get("blocked"):
                sdk(gateway, key).messages.create(
                    model="claude-haiku-4-5", max_tokens=8, messages=HELLO,
                    extra_headers={"x-fake-usage": json.dumps({"input_tokens": usage, "output_tokens": usage // 20})},
                )  # fmt: skip
    with ThreadPoolExecutor(1) as thread:  # a loop of its own: Playwright's runs on this thread
        thread.submit(asyncio.run, _seed_history()).result()


# Demo teams with one member each: (team_id, team_alias, user_id, user_email).
DEMO_PEOPLE = [
    ("search", "Search", "ana", "ana@example.com"),
    ("support", "Support", "bo", "bo@example.com"),
    ("data", "Data platform", "chen", "chen@example.com"),
]


async def _seed_history() -> None:
    """Two weeks of daily spend per tag, team and user, through a ledger like the gateway's (a runtime's), on this
    loop."""
    runtime = Runtime(get_settings())
    today = day_spend.today()
    for back in range(1, 15):
        for index, (team_id, _, user_id, _) in enumerate(DEMO_PEOPLE):
            scale = (3, 2, 5)[index]
            tokens = 100_000 * scale * (1 + (back * (index + 2)) % 5)
            usage = Usage(input_tokens=tokens, output_tokens=tokens // 10)
            cost = Decimal(tokens * 3 + tokens // 10 * 15) / 1_000_000
            counters = day_spend.counters(cost, usage, forwarded=True)
            where = {"tags": [f"team:{team_id}"], "team_id": team_id, "user_id": user_id}
            day_spend.add(runtime.ledger, counters, day=today - timedelta(days=back), **where)
    await runtime.ledger.flush()
