"""The console's Teams, Users and Tags pages and the key form's team and user pickers, driven in a real headless
Chromium against the gateway on loopback, with raw HTTP and the SDK checking that what the pages did holds."""

from __future__ import annotations

import json
import uuid

import anthropic
from playwright.sync_api import expect

from support.orgs import HELLO, exact, ok, works
from tests import test_console
from tests.test_console import Watched, confirm

# The console tests' own fixtures: one Chromium per module, a fresh context per test.
browser = test_console.browser
watched = test_console.watched


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def notice(page):
    """The page's success message (a list's own "none yet" line is a status too)."""
    return page.locator("p.message.success")


def test_a_team_is_created_staffed_given_a_key_and_deleted_in_the_console(watched: Watched, gateway, admin):
    page = watched.page
    team_id, email = unique("search"), unique("ana") + "@example.com"
    watched.sign_in()
    page.get_by_role("link", name="Teams").click()

    page.get_by_role("button", name="Create team").click()
    form = page.get_by_role("region", name="Create a team")
    form.get_by_label("Team ID").fill(team_id)
    form.get_by_label("Name").fill("Search")
    form.get_by_label("Max budget (USD)").fill("5000")
    form.get_by_label("Budget period").fill("30d")
    form.get_by_label("Tags").fill("team:search")
    form.get_by_role("button", name="Create team").click()

    expect(notice(page)).to_have_text("Created team Search.")
    row = page.locator(f'table.teams tr[data-team="{team_id}"]')
    expect(row).to_contain_text("$0.00 / $5,000.00")
    expect(row.locator(".bar")).to_have_count(1)
    expect(row.locator(".badge")).to_have_text("active")
    team = ok(admin.get("/team/info", params={"team_id": team_id}))["team_info"]
    assert (team["max_budget"], team["budget_duration"], team["tags"]) == (5000, "30d", ["team:search"])

    # Its page: add a member by email with a budget in the team (the user is created), then change it.
    row.get_by_role("link", name="Search").click()
    expect(page.get_by_role("heading", name="Search")).to_be_visible()
    adding = page.get_by_role("form", name="Add a member")
    adding.get_by_label("User", exact=True).fill(email)
    adding.get_by_label("Budget in team").fill("300")
    adding.get_by_role("button", name="Add member").click()
    expect(notice(page)).to_have_text(f"Added {email}.")
    [member] = ok(admin.get("/team/info", params={"team_id": team_id}))["team_memberships"]
    user_id = member["user_id"]
    member_row = page.locator(f'table.members tr[data-user="{user_id}"]')
    expect(member_row).to_contain_text("$0.00 / $300.00")
    member_row.get_by_label(f"Role of {user_id}").select_option("admin")
    member_row.get_by_label(f"Budget in team of {user_id}").fill("450.5")
    member_row.get_by_role("button", name="Save").click()
    expect(notice(page)).to_have_text(f"Saved {user_id}.")
    [member] = ok(admin.get("/team/info", params={"team_id": team_id}))["team_memberships"]
    assert (member["role"], member["max_budget_in_team"]) == ("admin", 450.5)

    # A key for the member in the team, picked in the key form.
    page.get_by_role("link", name="Keys").click()
    page.get_by_role("button", name="Create key").click()
    key_form = page.get_by_role("region", name="Create a key")
    key_form.get_by_label("Alias").fill(unique("search-key"))
    key_form.locator('select[name="team_id"]').select_option(team_id)
    expect(key_form.locator('select[name="user_id"]').locator("option")).to_have_count(2)  # (none) and the one member
    key_form.locator('select[name="user_id"]').select_option(user_id)
    key_form.get_by_role("button", name="Create key").click()
    key = page.locator("#new-key-value").inner_text()
    info = ok(admin.get("/key/info", params={"key": key}))["info"]
    assert (info["team_id"], info["user_id"]) == (team_id, user_id)
    assert works(gateway.url, key)

    # Blocking the team is asked first and shows; removing the member deletes its key in the team.
    page.goto(f"{watched.url}#/teams/{team_id}")
    page.get_by_role("button", name="Block", exact=True).click()
    confirm(page, "Block team")
    expect(page.locator("h1 .badge")).to_have_text("blocked")
    assert ok(admin.get("/team/info", params={"team_id": team_id}))["team_info"]["blocked"] is True
    expect(page.get_by_role("region", name="Team keys")).to_contain_text(user_id)
    page.locator(f'table.members tr[data-user="{user_id}"]').get_by_role("button", name="Remove").click()
    confirm(page, "Remove member")
    expect(notice(page)).to_have_text(f"Removed {user_id} and 1 of its keys.")
    assert not works(gateway.url, key)

    # Delete the team.
    page.get_by_role("button", name="Delete").click()
    confirm(page, "Delete team")
    expect(notice(page)).to_contain_text("Deleted “Search”")
    expect(page.locator(f'table.teams tr[data-team="{team_id}"]')).to_have_count(0)
    assert admin.get("/team/info", params={"team_id": team_id}).status_code == 404
    assert watched.dialogs == []
    watched.assert_master_key_kept_in_session_only()


def test_a_user_is_created_with_its_key_shown_once_blocked_and_deleted(watched: Watched, gateway, admin):
    page = watched.page
    email = unique("bo") + "@example.com"
    watched.sign_in()
    page.get_by_role("link", name="Users").click()

    page.get_by_role("button", name="Create user").click()
    form = page.get_by_role("region", name="Create a user")
    form.get_by_label("Name").fill("Bo")
    form.get_by_label("Email").fill(email)
    form.get_by_label("Role").select_option("proxy_admin_viewer")
    form.get_by_label("Max budget (USD)").fill("25")
    form.get_by_role("button", name="Create user").click()

    shown = page.get_by_role("region", name="Key of Bo")
    key = shown.locator("#new-key-value").inner_text()
    assert works(gateway.url, key)
    shown.get_by_role("button", name="Done, I saved it").click()
    assert key not in page.content()
    page.get_by_role("searchbox", name="Filter by email").fill(email)
    page.get_by_role("button", name="Filter").click()
    row = page.locator("table.users tbody tr")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("proxy_admin_viewer")
    expect(row).to_contain_text("$0.00 / $25.00")

    row.get_by_role("link", name="Bo").click()
    expect(page.get_by_role("heading", name="Bo")).to_be_visible()
    expect(page.get_by_role("region", name="User keys").locator("tbody tr")).to_have_count(1)
    settings = page.get_by_role("region", name="Settings")
    settings.get_by_label("Max budget (USD)").fill("40")
    settings.get_by_role("button", name="Save changes").click()
    expect(notice(page)).to_have_text("Saved: max_budget.")
    user_id = page.locator("h1 + p code").inner_text()
    assert ok(admin.get("/user/info", params={"user_id": user_id}))["user_info"]["max_budget"] == 40

    page.get_by_role("button", name="Block", exact=True).click()
    confirm(page, "Block user")
    expect(page.locator("h1 .badge")).to_have_text("blocked")
    page.get_by_role("button", name="Delete").click()
    confirm(page, "Delete user")
    expect(notice(page)).to_contain_text(f"Deleted {user_id} and 1 keys.")
    assert admin.get("/user/info", params={"user_id": user_id}).status_code == 404
    assert not works(gateway.url, key)
    watched.assert_master_key_kept_in_session_only()


def test_tags_are_registered_edited_and_deleted(watched: Watched, admin):
    page = watched.page
    name = unique("app:nightly")
    watched.sign_in()
    page.get_by_role("link", name="Tags").click()
    page.get_by_role("button", name="Register tag").click()
    form = page.get_by_role("region", name="Register a tag")
    form.get_by_label("Tag").fill(name)
    form.get_by_label("Description").fill("the nightly batch")
    form.get_by_label("Max budget (USD)").fill("50")
    form.get_by_label("Budget period").fill("1d")
    form.get_by_role("button", name="Register tag").click()
    expect(notice(page)).to_have_text(f"Tag {name} created successfully")
    row = page.locator(f'table.tags tr[data-tag="{name}"]')
    expect(row).to_contain_text("$0.00 / $50.00")

    row.get_by_role("button", name="Edit").click()
    editing = page.get_by_role("region", name=f"Edit {name}")
    editing.get_by_label("Requests per minute").fill("30")
    editing.get_by_role("button", name="Save changes").click()
    expect(row).to_contain_text("30 / \u2013 / \u2013")  # no tpm or parallel limit
    assert ok(admin.get("/tag/info", params={"name": name}))["rpm_limit"] == 30

    row.get_by_role("button", name="Delete").click()
    confirm(page, "Delete tag")
    expect(page.locator(f'table.tags tr[data-tag="{name}"]')).to_have_count(0)
    assert admin.get("/tag/info", params={"name": name}).status_code == 404
    watched.assert_master_key_kept_in_session_only()


def test_names_people_typed_are_text_and_api_errors_are_shown(watched: Watched, admin):
    page = watched.page
    alias = f"<img src=x onerror=alert(1)> {uuid.uuid4().hex[:6]}"
    team = ok(admin.post("/team/new", json={"team_id": unique("xss"), "team_alias": alias, "models": ["<b>model</b>"]}))
    watched.sign_in()
    page.goto(f"{watched.url}#/teams/{team['team_id']}")
    expect(page.get_by_role("heading", name=alias)).to_be_visible()
    assert page.locator("main img, main b, main script").count() == 0

    adding = page.get_by_role("form", name="Add a member")
    adding.get_by_label("User", exact=True).fill("two words")
    adding.get_by_role("button", name="Add member").click()
    expect(page.get_by_role("alert")).to_contain_text("user_id")
    page.goto(f"{watched.url}#/teams/{unique('missing')}")
    expect(page.get_by_role("alert")).to_contain_text("Could not load this team")
    assert watched.dialogs == []
    watched.assert_master_key_kept_in_session_only()


def test_the_spend_page_shows_spend_per_team_and_per_user(watched: Watched, gateway, admin):
    """Requests made with a team member's key (real SDK) show up per team and per user, with names people typed
    as text, links to the team's and the user's pages, and the rows' total."""
    page = watched.page
    team_id, alias = unique("spend-team"), f"<b>Spenders</b> {uuid.uuid4().hex[:6]}"
    ok(admin.post("/team/new", json={"team_id": team_id, "team_alias": alias}))
    email = unique("spender") + "@example.com"
    user = ok(admin.post("/user/new", json={"user_email": email, "teams": [team_id], "auto_create_key": False}))
    key = ok(admin.post("/key/generate", json={"team_id": team_id, "user_id": user["user_id"]}))["key"]
    client = anthropic.Anthropic(base_url=gateway.url + "/anthropic", api_key=key, max_retries=0)
    # Large usage, so this team and user lead their reports (and charts) whatever else the session recorded today.
    usage = json.dumps({"input_tokens": 9_000_000, "output_tokens": 1_000})
    for _ in range(2):
        client.messages.create(
            model="claude-sonnet-4-5", max_tokens=8, messages=HELLO, extra_headers={"x-fake-usage": usage}
        )
    gateway.drain()  # spend per day is written after the responses
    team_row = next(row for row in exact(admin.get("/spend/teams")) if row["team_id"] == team_id)
    user_rows = exact(admin.get("/spend/users"))

    watched.sign_in()
    page.get_by_role("link", name="Spend").click()
    teams_region = page.get_by_role("region", name="Spend per team")
    row = teams_region.locator(f'table.spend-team tr[data-team="{team_id}"]')
    expect(row.locator("td").nth(1)).to_have_text("2")
    expect(row.locator("td").nth(2)).to_have_text(f"${team_row['total_spend']:,.2f}")
    chart = teams_region.get_by_role("img", name="Spend (USD) per day and team")
    expect(chart.locator(f'rect[data-series="{alias}"]')).to_have_count(1)
    total = teams_region.locator("tfoot tr")
    expect(total.locator("th")).to_have_text("Total")
    all_teams = sum(row["log_count"] for row in exact(admin.get("/spend/teams")))  # a request has one team
    expect(total.locator("td").first).to_have_text(f"{all_teams:,}")

    users_region = page.get_by_role("region", name="Spend per user")
    user_row = users_region.locator(f'table.spend-user tr[data-user="{user["user_id"]}"]')
    expect(user_row.locator("td").nth(1)).to_have_text("2")
    expect(user_row.get_by_role("link", name=email)).to_be_visible()  # no alias: the email names the user
    assert any(row["user_id"] == user["user_id"] and row["log_count"] == 2 for row in user_rows)
    assert page.locator("main img, main b, main script").count() == 0  # the alias is text

    page.get_by_label("Metric").select_option("requests")
    expect(teams_region.get_by_role("img", name="Requests per day and team")).to_be_visible()
    expect(users_region.get_by_role("img", name="Requests per day and user")).to_be_visible()

    row.get_by_role("link", name=alias).click()
    expect(page.get_by_role("heading", name=alias)).to_be_visible()
    assert watched.dialogs == []
    watched.assert_master_key_kept_in_session_only()
