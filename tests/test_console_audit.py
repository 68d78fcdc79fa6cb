"""The console's Audit page in a real headless Chromium: a change made through the admin API shows with who made
it and the fields before and after; filters narrow the list; older entries come a page at a time."""

from __future__ import annotations

from playwright.sync_api import expect

from support.orgs import new_team, ok, unique
from tests import test_console
from tests.test_console import Watched

browser = test_console.browser
watched = test_console.watched


def test_the_audit_page_shows_who_changed_what_and_filters(watched: Watched, admin):
    page = watched.page
    team = new_team(admin, team_id=unique("audited"), max_budget=10)["team_id"]
    ok(admin.post("/team/update", json={"team_id": team, "max_budget": 25}))

    watched.sign_in()
    page.get_by_role("link", name="Audit").click()
    expect(page.get_by_role("heading", name="Audit log")).to_be_visible()
    filters = page.get_by_role("form", name="Filter the audit log")
    filters.get_by_label("Target").fill(f"team:{team}")
    filters.get_by_role("button", name="Show").click()

    rows = page.locator("table.audit tbody tr")
    expect(rows).to_have_count(2)
    update, create = rows.nth(0), rows.nth(1)
    expect(update.locator("td").nth(1)).to_contain_text("master")
    expect(update.locator("td").nth(2)).to_have_text("team.update")
    expect(update.locator("td").nth(4)).to_contain_text("max_budget10")
    expect(update.locator("td").nth(5)).to_contain_text("max_budget25")
    expect(create.locator("td").nth(2)).to_have_text("team.create")
    expect(page.get_by_role("button", name="Older entries")).to_be_hidden()

    filters.get_by_label("Action").fill("team.create")
    filters.get_by_role("button", name="Show").click()
    expect(rows).to_have_count(1)
    filters.get_by_label("From", exact=True).fill("2001-01-01")
    filters.get_by_label("To", exact=True).fill("2001-01-02")
    filters.get_by_role("button", name="Show").click()
    expect(page.locator("section[aria-label='Audit log']")).to_contain_text("No entries match.")
    watched.assert_master_key_kept_in_session_only()


def test_older_entries_come_a_page_at_a_time(watched: Watched, admin):
    page = watched.page
    team = new_team(admin, team_id=unique("paged"))["team_id"]
    for limit in range(1, 51):  # with the create: 51 entries, one more than a page
        ok(admin.post("/team/update", json={"team_id": team, "rpm_limit": limit}))
    watched.sign_in()
    page.goto(watched.url + "#/audit")
    filters = page.get_by_role("form", name="Filter the audit log")
    filters.get_by_label("Target").fill(f"team:{team}")
    filters.get_by_role("button", name="Show").click()
    rows = page.locator("table.audit tbody tr")
    expect(rows).to_have_count(50)
    page.get_by_role("button", name="Older entries").click()
    expect(rows).to_have_count(51)
    expect(rows.nth(50).locator("td").nth(2)).to_have_text("team.create")
    expect(page.get_by_role("button", name="Older entries")).to_be_hidden()


def test_new_filters_drop_the_older_entries_of_the_listing_they_replace(watched: Watched, admin):
    """A cursor belongs to the filters that made it: while the listing for new filters loads, the old listing's
    "Older entries" must not page the new filters with the old cursor (the API refuses it, the page showed an error)."""
    page = watched.page
    team = new_team(admin, team_id=unique("refiltered"))["team_id"]
    for limit in range(1, 51):  # the unfiltered log then holds more than a page, whatever else ran before
        ok(admin.post("/team/update", json={"team_id": team, "rpm_limit": limit}))
    held = []
    page.route("**/audit?*target=*", lambda route: held.append(route), times=1)  # the filtered read waits
    watched.sign_in()
    page.goto(watched.url + "#/audit")
    more = page.get_by_role("button", name="Older entries")
    expect(more).to_be_visible()  # the unfiltered first page, with a cursor for the unfiltered log
    filters = page.get_by_role("form", name="Filter the audit log")
    filters.get_by_label("Target").fill(f"team:{team}")
    filters.get_by_role("button", name="Show").click()
    expect(more).to_be_hidden()
    expect(page.locator("section[aria-label='Audit log']")).to_contain_text("Loading the audit log")
    while not held:  # the route's handler runs when Playwright dispatches its event: let it
        page.wait_for_timeout(10)
    held[0].continue_()
    rows = page.locator("table.audit tbody tr")
    expect(rows).to_have_count(50)
    expect(rows.first.locator("td").nth(3)).to_have_text(f"team:{team}")
    more.click()
    expect(rows).to_have_count(51)
