"""The audit log over raw HTTP: every admin change recorded once with who, what, the target and the fields before
and after (never a secret), in the change's own transaction (a change whose entry cannot be written does not
happen), one structured log line each, and GET /audit's filters and pages."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import pytest

from anthropic_gateway import audit as audit_policy
from anthropic_gateway.storage import audit, table
from support.orgs import error_of, exact, new_key, new_team, new_user, ok, unique


def entries(admin: httpx.Client, **filters: str) -> list[dict]:
    """Every entry matching `filters`, following the cursor page after page."""
    found: list[dict] = []
    cursor = None
    for _ in range(50):
        page = exact(admin.get("/audit", params={**filters, "page_size": 3, **({"cursor": cursor} if cursor else {})}))
        found += page["entries"]
        cursor = page["cursor"]
        if cursor is None:
            return found
    raise AssertionError("the cursor never ended")


def test_every_key_change_is_recorded_once_with_before_and_after_and_no_secret(admin):
    team = new_team(admin, max_budget=50)["team_id"]
    created = new_key(admin, key_alias=unique("audited"), team_id=team, max_budget=5)
    token, plain = created["token"], created["key"]
    ok(admin.post("/key/update", json={"key": token, "max_budget": 7.25, "rpm_limit": 10}))
    ok(admin.post("/key/block", json={"key": token}))
    ok(admin.post("/key/unblock", json={"key": token}))
    regenerated = ok(admin.post("/key/regenerate", json={"key": token}))
    ok(admin.post("/key/delete", json={"keys": [regenerated["token"]]}))

    found = entries(admin, target=f"key:{token}")  # the key's first hash names it for life
    assert [entry["action"] for entry in found] == [
        "key.delete",
        "key.regenerate",
        "key.unblock",
        "key.block",
        "key.update",
        "key.generate",
    ]
    assert {entry["actor"] for entry in found} == {"master"}
    delete, regenerate, unblock, block, update, generate = found
    assert generate["before"] is None and generate["after"]["max_budget"] == 5 and generate["after"]["team_id"] == team
    assert update["before"] == {"max_budget": 5, "rpm_limit": None}
    assert update["after"] == {"max_budget": Decimal("7.25"), "rpm_limit": 10}  # exact money
    assert (block["before"], block["after"]) == ({"blocked": False}, {"blocked": True})
    assert (unblock["before"], unblock["after"]) == ({"blocked": True}, {"blocked": False})
    assert regenerate["before"] == {"token": token} and regenerate["after"] == {"token": regenerated["token"]}
    assert delete["before"]["token"] == regenerated["token"] and delete["after"] is None
    text = json.dumps(found, default=str)
    for secret in (plain, regenerated["key"], created["key_name"][3:], regenerated["key_name"][3:]):
        assert secret not in text  # never a key, nor its visible end


def test_team_member_user_and_tag_changes_are_recorded(admin):
    user = new_user(admin, user_alias="Ana")["user_id"]
    ok(admin.post("/user/update", json={"user_id": user, "max_budget": 3}))
    team = new_team(admin, members_with_roles=[{"user_id": user, "role": "user"}])["team_id"]
    ok(admin.post("/team/update", json={"team_id": team, "max_budget": 40}))
    ok(admin.post("/team/block", json={"team_id": team}))
    ok(admin.post("/team/unblock", json={"team_id": team}))
    newcomer = unique("newcomer")
    ok(admin.post("/team/member_add", json={"team_id": team, "member": {"user_id": newcomer}}))
    ok(admin.post("/team/member_update", json={"team_id": team, "user_id": user, "role": "admin"}))
    ok(admin.post("/team/member_delete", json={"team_id": team, "user_id": newcomer}))
    ok(admin.post("/team/delete", json={"team_ids": [team]}))
    ok(admin.post("/user/delete", json={"user_ids": [user]}))
    tag = unique("audited")
    ok(admin.post("/tag/new", json={"name": tag}))
    ok(admin.post("/tag/update", json={"name": tag, "max_budget": 9}))
    ok(admin.post("/tag/delete", json={"name": tag}))

    team_actions = [entry["action"] for entry in entries(admin, target=f"team:{team}")]
    assert team_actions == [
        "team.delete",
        "team.member_delete",
        "team.member_update",
        "team.member_add",
        "team.unblock",
        "team.block",
        "team.update",
        "team.create",
    ]
    member_update = entries(admin, target=f"team:{team}", action="team.member_update")[0]
    assert member_update["before"] == {"role": "user", "user_id": user}
    assert member_update["after"] == {"role": "admin", "user_id": user}
    user_entries = entries(admin, target=f"user:{user}")
    assert [entry["action"] for entry in user_entries] == ["user.delete", "user.update", "user.create"]
    assert user_entries[1]["before"] == {"max_budget": None} and user_entries[1]["after"] == {"max_budget": 3}
    assert user_entries[0]["before"]["user_alias"] == "Ana" and user_entries[0]["after"] is None
    tag_entries = entries(admin, target=f"tag:{tag}")
    assert [entry["action"] for entry in tag_entries] == ["tag.delete", "tag.update", "tag.create"]


def test_the_actor_is_the_caller_by_key_alias_and_user(admin, gateway):
    user = new_user(admin, user_role="proxy_admin")["user_id"]
    alias = unique("ops-key")
    key = new_key(admin, user_id=user, key_alias=alias)["key"]
    with httpx.Client(base_url=gateway.url, headers={"x-api-key": key}) as ops:
        team = ok(ops.post("/team/new", json={"team_alias": "by ops"}))["team_id"]
    (entry,) = entries(admin, target=f"team:{team}")
    assert entry["actor"] == f"key:{alias}" and entry["actor_user_id"] == user
    by_user = entries(admin, actor=user, action="team")
    assert [found["target"] for found in by_user] == [f"team:{team}"]
    newest = exact(admin.get("/audit", params={"actor": "master", "action": "team.create", "page_size": 5}))["entries"]
    assert newest and all(found["actor"] == "master" for found in newest)


@pytest.mark.parametrize(
    ("change", "unchanged"),
    [
        ("key_update", "the key's budget"),
        ("key_generate", "no key"),
        ("key_delete", "the key"),
        ("team_update", "the team's budget"),
        ("user_new", "no user"),
        ("tag_delete", "the tag"),
    ],
)
def test_a_change_whose_audit_entry_cannot_be_written_does_not_happen(admin, monkeypatch, change, unchanged):
    key = new_key(admin, max_budget=1)
    team = new_team(admin, max_budget=1)["team_id"]
    tag = unique("kept")
    ok(admin.post("/tag/new", json={"name": tag}))
    user = unique("never")

    def failing_put(entry: audit.Entry, retention_days: int) -> table.Put:
        # The entry's write fails inside the change's transaction (its condition cannot hold).
        return table.Put(entry.item(retention_days), "attribute_exists(pk)")

    monkeypatch.setattr(audit.Entry, "put", failing_put)
    calls = {
        "key_update": lambda: admin.post("/key/update", json={"key": key["token"], "max_budget": 99}),
        "key_generate": lambda: admin.post("/key/generate", json={"key_alias": f"never-{user}"}),
        "key_delete": lambda: admin.post("/key/delete", json={"keys": [key["token"]]}),
        "team_update": lambda: admin.post("/team/update", json={"team_id": team, "max_budget": 99}),
        "user_new": lambda: admin.post("/user/new", json={"user_id": user}),
        "tag_delete": lambda: admin.post("/tag/delete", json={"name": tag}),
    }
    since = datetime.now(UTC).isoformat()
    response = calls[change]()
    assert response.status_code >= 400 and response.json()["type"] == "error"  # refused in Anthropic's shape
    monkeypatch.undo()

    if change == "key_update":
        assert ok(admin.get("/key/info", params={"key": key["token"]}))["info"]["max_budget"] == 1
    elif change == "key_generate":
        assert ok(admin.get("/key/list", params={"key_alias": f"never-{user}"}))["keys"] == []
    elif change == "key_delete":
        ok(admin.get("/key/info", params={"key": key["token"]}))
    elif change == "team_update":
        assert ok(admin.get("/team/info", params={"team_id": team}))["team_info"]["max_budget"] == 1
    elif change == "user_new":
        assert admin.get("/user/info", params={"user_id": user}).status_code == 404
    else:
        ok(admin.get("/tag/info", params={"name": tag}))
    action = change.replace("_", ".").replace("new", "create")
    newest = exact(admin.get("/audit", params={"action": action, "page_size": 50}))["entries"]  # newest first
    assert [entry for entry in newest if entry["at"] >= since] == []  # nor its record


def test_each_change_is_one_structured_log_line(admin, caplog):
    caplog.set_level("INFO")
    team = new_team(admin)["team_id"]
    records = [record for record in caplog.records if record.getMessage() == "audit"]
    # What Powertools writes to CloudWatch: the record as one JSON line, the entry under "audit".
    lines = [json.loads(audit_policy.logger.registered_formatter.format(record)) for record in records]
    assert all("\n" not in audit_policy.logger.registered_formatter.format(record) for record in records)
    logged = [line["audit"] for line in lines]
    assert [(entry["action"], entry["target"], entry["actor"]) for entry in logged] == [
        ("team.create", f"team:{team}", "master")
    ]
    (stored,) = entries(admin, target=f"team:{team}")
    assert stored["id"] == logged[0]["id"]


def test_entries_expire_after_the_retention_and_live_in_day_partitions(admin):
    team = new_team(admin)["team_id"]
    (entry,) = entries(admin, target=f"team:{team}")
    item = table.get(audit.PREFIX + entry["at"][:10], f"{entry['at']}#{entry['id']}")
    assert item is not None and item["gsi1pk"] == f"AUDIT#team:{team}"
    at = datetime.fromisoformat(entry["at"])
    assert int(item["ttl"]) == int((at + timedelta(days=365)).timestamp())  # AUDIT_RETENTION_DAYS' default


def test_the_date_range_and_pages(admin, monkeypatch):
    team = new_team(admin)["team_id"]
    days = ["2026-03-01", "2026-03-02", "2026-03-04"]
    for day in days:
        for hour in (9, 10):
            monkeypatch.setattr(audit_policy, "now", lambda d=day, h=hour: f"{d}T{h:02d}:00:00+00:00")
            ok(admin.post("/team/update", json={"team_id": team, "rpm_limit": hour}))
    monkeypatch.undo()

    march = entries(admin, target=f"team:{team}", start_date="2026-03-01", end_date="2026-03-31")
    assert [entry["at"][:13] for entry in march] == [
        "2026-03-04T10",
        "2026-03-04T09",
        "2026-03-02T10",
        "2026-03-02T09",
        "2026-03-01T10",
        "2026-03-01T09",
    ]
    by_day = entries(admin, action="team.update", start_date="2026-03-02", end_date="2026-03-04")
    mine = [entry for entry in by_day if entry["target"] == f"team:{team}"]
    assert [entry["at"][:13] for entry in mine] == [entry["at"][:13] for entry in march[:4]]
    assert len({entry["id"] for entry in by_day}) == len(by_day)  # pages never repeat an entry
    assert entries(admin, target=f"team:{team}", start_date="2026-03-03", end_date="2026-03-03") == []
    assert entries(admin, target=f"team:{team}")[0]["action"] == "team.create"  # the last 30 days by default


def test_bad_filters_are_400s(admin):
    for params in (
        {"start_date": "yesterday"},
        {"start_date": "2026-03-05", "end_date": "2026-03-01"},
        {"cursor": "bm90IGEgY3Vyc29y"},
        {"cursor": "%%%"},
        {"page_size": 0},
        {"page_size": 101},
    ):
        status, kind, _ = error_of(admin.get("/audit", params=params))
        assert (status, kind) == (400, "invalid_request_error"), params
    other_filters = exact(admin.get("/audit", params={"page_size": 1, "start_date": "2000-01-01"}))["cursor"]
    assert error_of(admin.get("/audit", params={"target": "team:x", "cursor": other_filters}))[0] == 400


def test_the_cli_reads_the_audit_log_page_by_page(admin, gateway, monkeypatch, capsys):
    from anthropic_gateway.__main__ import main
    from tests.conftest import MASTER_KEY

    team = new_team(admin)["team_id"]
    for limit in (1, 2):
        ok(admin.post("/team/update", json={"team_id": team, "rpm_limit": limit}))
    monkeypatch.setenv("MASTER_KEY", MASTER_KEY)
    monkeypatch.setenv("GATEWAY_URL", gateway.url)

    assert main(["audit", "--target", f"team:{team}", "--page-size", "2"]) == 0
    first = json.loads(capsys.readouterr().out, parse_float=Decimal)
    assert [entry["after"] for entry in first["entries"]] == [{"rpm_limit": 2}, {"rpm_limit": 1}]
    assert main(["audit", "--target", f"team:{team}", "--page-size", "2", "--cursor", first["cursor"]]) == 0
    second = json.loads(capsys.readouterr().out)
    assert [entry["action"] for entry in second["entries"]] == ["team.create"] and second["cursor"] is None

    assert main(["audit", "--start-date", "soon"]) == 1
    assert "start_date" in capsys.readouterr().err


@pytest.mark.parametrize("raw", ["0", "1.5", "36501", "-3", "nan", "inf", "many"])
def test_a_retention_that_is_not_whole_days_stops_the_start(monkeypatch, raw):
    from anthropic_gateway.settings import SettingsError, get_settings

    monkeypatch.setenv("AUDIT_RETENTION_DAYS", raw)
    get_settings.cache_clear()
    try:
        with pytest.raises(SettingsError, match="AUDIT_RETENTION_DAYS"):
            get_settings()
        monkeypatch.setenv("AUDIT_RETENTION_DAYS", "30")
        get_settings.cache_clear()
        assert get_settings().audit_retention_days == 30
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
