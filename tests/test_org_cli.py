"""`python -m anthropic_gateway teams|users|tags ...` against the test gateway: a Claude Code rollout set up from a
terminal, amounts exact both ways, errors on stderr."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from support.orgs import unique
from tests.conftest import MASTER_KEY

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def run(gateway, monkeypatch, capsys):
    """Run `<kind> <args>` in-process; (exit status, stdout or stderr parsed with exact numbers)."""
    from anthropic_gateway import org_cli

    monkeypatch.setenv("MASTER_KEY", MASTER_KEY)
    monkeypatch.delenv("GATEWAY_KEY", raising=False)  # it would come before MASTER_KEY
    monkeypatch.setenv("GATEWAY_URL", gateway.url)

    def invoke(kind: str, *argv: str):
        status = org_cli.main(kind, list(argv))
        out, err = capsys.readouterr()
        assert MASTER_KEY not in out + err
        text = out if status == 0 else err
        try:
            return status, json.loads(text, parse_float=Decimal)
        except ValueError:
            return status, text

    return invoke


def test_a_rollout_from_the_command_line(run):
    team_id, email = unique("search"), unique("ana") + "@example.com"

    status, team = run("teams", "new", "--team-id", team_id, "--team-alias", "Search", "--max-budget", "5000.10",
                       "--budget-duration", "30d", "--tags", "team:search", "--models", "claude-*")  # fmt: skip
    assert status == 0 and team["max_budget"] == Decimal("5000.1") and team["tags"] == ["team:search"]

    status, user = run("users", "new", "--user-email", email, "--max-budget", "300", "--key-alias", unique("ana"))
    assert status == 0 and user["key"].startswith("sk-") and user["max_budget"] == 300

    status, added = run("teams", "member-add", team_id, "--user-email", email, "--role", "admin",
                        "--max-budget-in-team", "123456789.123456789")  # fmt: skip
    assert status == 0 and added["members_with_roles"] == [{"user_id": user["user_id"], "role": "admin"}]
    assert added["updated_team_memberships"][0]["max_budget_in_team"] == Decimal("123456789.123456789")

    status, updated = run("teams", "member-update", team_id, "--user-id", user["user_id"], "--role", "user")
    assert status == 0 and updated["role"] == "user"
    status, info = run("teams", "info", team_id)
    assert status == 0 and info["team_info"]["team_alias"] == "Search"
    status, listed = run("teams", "list", "--user-id", user["user_id"])
    assert [team["team_id"] for team in listed] == [team_id]
    assert run("teams", "block", team_id)[1]["blocked"] is True
    assert run("teams", "update", team_id, "--unset", "max_budget", "--no-blocked")[1]["data"]["max_budget"] is None

    status, users = run("users", "list", "--team", team_id)
    assert status == 0 and [u["user_id"] for u in users["users"]] == [user["user_id"]]
    assert (
        run("users", "update", "--user-email", email, "--user-role", "proxy_admin")[1]["data"]["user_role"]
        == "proxy_admin"
    )
    assert run("users", "info", user["user_id"])[1]["user_info"]["teams"] == [team_id]

    status, deleted = run("teams", "member-delete", team_id, "--user-email", email)
    assert status == 0 and deleted["members_with_roles"] == []
    assert run("teams", "delete", team_id)[1] == {"deleted_teams": [team_id], "deleted_keys": 0, "deleted_members": 0}
    assert run("users", "delete", user["user_id"])[1]["deleted_keys"] == 1


def test_tags_from_the_command_line(run):
    name = unique("app:cli")
    status, created = run("tags", "new", name, "--description", "from the CLI", "--max-budget", "0.000000001")
    assert status == 0 and created["tag"]["max_budget"] == Decimal("0.000000001")
    assert run("tags", "update", name, "--rpm-limit", "5")[1]["tag"]["rpm_limit"] == 5
    assert run("tags", "info", name)[1]["description"] == "from the CLI"
    assert name in [tag["name"] for tag in run("tags", "list")[1]]
    assert run("tags", "delete", name) == (0, {"message": f"Tag {name} deleted successfully"})
    status, error = run("tags", "info", name)
    assert status == 1 and error["error"]["type"] == "not_found_error"


def test_bad_arguments_are_refused_before_any_request(run):
    for argv in (
        ("teams", "new", "--max-budget", "lots"),
        ("teams", "new", "--max-budget", "-1"),
        ("users", "new", "--user-role", "root"),
        ("tags", "nope"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            run(*argv)
        assert exit_info.value.code == 2, argv


def test_python_dash_m_runs_the_org_commands(gateway):
    env = {**os.environ, "MASTER_KEY": MASTER_KEY, "GATEWAY_URL": gateway.url,
           "PYTHONPATH": str(ROOT / "layers" / "gateway")}  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "anthropic_gateway", "tags", "list"], env=env, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0 and isinstance(json.loads(done.stdout), list)


def test_spend_per_team_user_and_tag_from_the_command_line(run):
    from tests.test_spend_orgs import _record

    day = date(1990, 1, 1) + timedelta(days=uuid.uuid4().int % 10_000)  # a day no other test records on
    team_id, user_id, tags = unique("cli-team"), unique("cli-user"), [unique("cli:a"), unique("cli:b")]
    where = {"team_id": team_id, "user_id": user_id, "tags": tags}
    _record((where, Decimal("0.1"), day), (where, Decimal("0.2"), day))
    dates = ("--start-date", day.isoformat(), "--end-date", day.isoformat())

    status, [row] = run("teams", "spend", *dates)
    assert status == 0 and row["team_id"] == team_id
    assert (row["total_spend"], row["log_count"], row["daily"][0]["date"]) == (Decimal("0.3"), 2, day.isoformat())
    status, [row] = run("users", "spend", *dates)
    assert status == 0 and (row["user_id"], row["total_spend"]) == (user_id, Decimal("0.3"))
    status, rows = run("tags", "spend", *dates)
    assert status == 0 and sorted((row["individual_request_tag"], row["log_count"]) for row in rows) == [
        (tags[0], 2),
        (tags[1], 2),
    ]
    status, totals = run("tags", "spend", "--totals", *dates)
    assert status == 0 and (totals["log_count"], totals["total_spend"]) == (2, Decimal("0.3"))  # each request once
    status, error = run("teams", "spend", "--start-date", "2023-07-15", "--end-date", "2023-07-14")
    assert status == 1 and "after end_date" in error["error"]["message"]
