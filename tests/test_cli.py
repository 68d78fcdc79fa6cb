"""`python -m anthropic_gateway keys ...` against the running gateway, as an operator provisions keys."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import anthropic
import pytest

from anthropic_gateway import cli, keys
from support.orgs import new_team, new_user, ok, unique
from tests.conftest import MASTER_KEY

ROOT = Path(__file__).resolve().parent.parent
HELLO = [{"role": "user", "content": "Hello"}]


def works(gateway, key: str) -> bool:
    client = anthropic.Anthropic(base_url=gateway.url + "/anthropic", api_key=key, max_retries=0)
    try:
        return client.messages.create(model="claude-haiku-4-5", max_tokens=8, messages=HELLO).type == "message"
    except anthropic.AuthenticationError:
        return False
    finally:
        gateway.drain()  # the request's accounting settles after the response: read the key once it has


def test_key_lifecycle(run_cli, gateway):
    alias = "cli-" + keys.new_key()[-8:]
    status, created = run_cli(
        "generate",
        "--key-alias",
        alias,
        "--models",
        "claude-haiku-4-5,claude-sonnet-4-5",
        "--max-budget",
        "25",
        "--budget-duration",
        "30d",
        "--rpm-limit",
        "100",
        "--metadata",
        '{"team": "search"}',
        "--tags",
        "team:search,env:prod",
    )
    assert status == 0
    key, token = created["key"], created["token"]
    assert (created["key_alias"], created["max_budget"], created["rpm_limit"]) == (alias, 25.0, 100)
    assert created["models"] == ["claude-haiku-4-5", "claude-sonnet-4-5"]
    assert created["tags"] == ["team:search", "env:prod"] and created["metadata"] == {"team": "search"}
    assert works(gateway, key)

    status, info = run_cli("info", token)
    assert status == 0 and info["key"] == token and info["info"]["requests"] >= 0
    assert run_cli("info", key) == (0, info)  # a plain key is hashed by the CLI before it goes in the URL
    assert cli.request_for(cli.build_parser().parse_args(["info", key]))[2] == {"key": token}

    status, updated = run_cli(
        "update",
        "--key-alias",
        alias,
        "--tpm-limit",
        "5000",
        "--unset",
        "rpm_limit",
        "--json",
        '{"max_parallel_requests": 3}',
    )
    assert status == 0
    assert (updated["tpm_limit"], updated["rpm_limit"], updated["max_parallel_requests"]) == (5000, None, 3)

    assert run_cli("block", token)[1]["blocked"] is True
    assert not works(gateway, key)
    assert run_cli("unblock", "--key-alias", alias)[1]["blocked"] is False
    assert works(gateway, key)

    status, listed = run_cli("list", "--key-alias", alias, "--full")
    assert status == 0 and [k["token"] for k in listed["keys"]] == [token]

    status, regenerated = run_cli("regenerate", token)
    assert status == 0 and regenerated["key"] != key
    assert not works(gateway, key) and works(gateway, regenerated["key"])

    status, deleted = run_cli("delete", "--key-alias", alias)
    assert status == 0 and deleted == {"deleted_keys": [keys.hash_key(regenerated["key"])]}
    assert not works(gateway, regenerated["key"])


@pytest.mark.parametrize(
    ("sent", "written"),
    [("0.1", "0.1"), ("0.3", "0.3"), ("123456789.123456789", "123456789.123456789"), ("1e-7", "0.0000001")],
)
def test_budgets_go_and_come_back_exactly(gateway, monkeypatch, capsys, sent, written):
    monkeypatch.setenv("MASTER_KEY", MASTER_KEY)
    monkeypatch.setenv("GATEWAY_URL", gateway.url)
    assert cli.main(["generate", "--max-budget", sent]) == 0
    printed = capsys.readouterr().out
    assert f'"max_budget": {written},' in printed  # as the gateway wrote it: no float, no exponent
    token = json.loads(printed)["token"]

    assert cli.main(["update", token, "--json", f'{{"max_budget": {sent}, "metadata": {{"n": 1}}}}']) == 0
    assert json.loads(capsys.readouterr().out, parse_float=Decimal)["max_budget"] == Decimal(written)
    assert cli.main(["info", token]) == 0
    assert json.loads(capsys.readouterr().out, parse_float=Decimal)["info"]["max_budget"] == Decimal(written)


def test_a_budget_the_gateway_cannot_keep_exactly_is_its_400_on_stderr(run_cli):
    status, error = run_cli("generate", "--max-budget", "12345678901.234567891")  # 20 significant digits
    assert status == 1 and error["error"]["type"] == "invalid_request_error"
    assert "max_budget" in error["error"]["message"] and "significant digits" in error["error"]["message"]
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["generate", "--max-budget", "NaN"])


def test_errors_go_to_stderr_with_exit_status_1(run_cli):
    status, error = run_cli("info", "sk-" + "q" * 40)
    assert status == 1 and error["error"]["type"] == "not_found_error"
    status, error = run_cli("generate", "--json", '{"team_id": "x"}')
    assert status == 1 and "team_id" in error["error"]["message"]


def test_bad_arguments_are_refused_before_any_request(run_cli, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["generate", "--metadata", "[1, 2]"])
    assert exited.value.code == 2
    assert "JSON object" in capsys.readouterr().err


def test_master_key_and_url_come_from_the_environment_or_flags(gateway, monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("MASTER_KEY", raising=False)
    monkeypatch.delenv("GATEWAY_KEY", raising=False)
    monkeypatch.setenv("ANTHROPIC_GATEWAY_CONFIG_DIR", str(tmp_path / "nobody-signed-in"))
    assert cli.main(["list"]) == 2
    said = capsys.readouterr().err
    assert "GATEWAY_KEY" in said and "MASTER_KEY" in said and "anthropic-gateway login" in said

    monkeypatch.setenv("MASTER_KEY", MASTER_KEY)
    monkeypatch.setenv("GATEWAY_URL", "http://127.0.0.1:9")  # nothing listens there
    assert cli.main(["list"]) == 1
    assert "Cannot reach" in capsys.readouterr().err
    assert cli.main(["list", "--url", gateway.url]) == 0
    assert "total_count" in json.loads(capsys.readouterr().out)


def test_gateway_key_is_a_persons_own_key_acting_with_their_role_before_the_master_key(
    gateway, admin, monkeypatch, capsys
):
    from anthropic_gateway import org_cli

    viewer = new_user(admin, user_role="proxy_admin_viewer", auto_create_key=True, key_alias=unique("viewer"))
    lead = new_user(admin, user_role="internal_user", auto_create_key=True, key_alias=unique("lead"))
    team = new_team(admin, members_with_roles=[{"user_id": lead["user_id"], "role": "admin"}])["team_id"]
    monkeypatch.setenv("GATEWAY_URL", gateway.url)
    monkeypatch.setenv("MASTER_KEY", MASTER_KEY)  # set too: GATEWAY_KEY comes first

    monkeypatch.setenv("GATEWAY_KEY", viewer["key"])
    assert cli.main(["list"]) == 0  # the viewer reads every key...
    assert json.loads(capsys.readouterr().out)["total_count"] >= 1
    assert cli.main(["generate", "--key-alias", unique("not-by-a-viewer")]) == 1  # ... and changes none
    refused = json.loads(capsys.readouterr().err)["error"]
    assert refused["type"] == "permission_error" and "proxy_admin_viewer" in refused["message"]
    assert org_cli.main("audit", ["--target", f"team:{team}"]) == 0
    assert [entry["action"] for entry in json.loads(capsys.readouterr().out)["entries"]] == ["team.create"]

    # A team lead runs their team from the terminal with their own key; the audit log names them.
    monkeypatch.setenv("GATEWAY_KEY", lead["key"])
    newcomer = unique("newcomer")
    assert org_cli.main("teams", ["member-add", team, "--user-id", newcomer]) == 0
    capsys.readouterr()
    assert org_cli.main("teams", ["new", "--team-alias", "not-theirs"]) == 1
    assert json.loads(capsys.readouterr().err)["error"]["type"] == "permission_error"
    (added,) = ok(admin.get("/audit", params={"target": f"team:{team}", "action": "team.member_add"}))["entries"]
    assert (added["actor"], added["actor_user_id"]) == (f"key:{lead['key_alias']}", lead["user_id"])
    out, err = capsys.readouterr()
    assert lead["key"] not in out + err and viewer["key"] not in out + err


def test_python_dash_m_entry_point(gateway):
    env = {
        **os.environ,
        "MASTER_KEY": MASTER_KEY,
        "GATEWAY_URL": gateway.url,
        "PYTHONPATH": str(ROOT / "layers" / "gateway"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "anthropic_gateway", "keys", "generate", "--rpm-limit", "7"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    created = json.loads(done.stdout)
    assert created["rpm_limit"] == 7 and keys.is_well_formed(created["key"])
