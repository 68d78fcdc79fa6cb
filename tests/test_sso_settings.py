"""Single sign-on's settings, the stack parameters that set them, how an ID token's claims map to a role and teams,
and ID-token verification where the layer runs it: without `cryptography`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from samcli.yamlhelper import yaml_parse

from anthropic_gateway import sso
from anthropic_gateway.errors import GatewayError
from anthropic_gateway.settings import ROLES, SettingsError, get_settings
from support.fake_oidc import FakeOidc, OidcUser

ROOT = Path(__file__).resolve().parent.parent
OIDC_VARIABLES = {
    "OIDC_ISSUER": "OidcIssuer",
    "OIDC_CLIENT_ID": "OidcClientId",
    "OIDC_CLIENT_SECRET_NAME": "OidcClientSecretName",
    "OIDC_SCOPES": "OidcScopes",
    "OIDC_ROLE_CLAIM": "OidcRoleClaim",
    "OIDC_GROUPS_CLAIM": "OidcGroupsClaim",
    "OIDC_GROUP_ROLES": "OidcGroupRoles",
    "OIDC_GROUP_TEAMS": "OidcGroupTeams",
    "OIDC_DEFAULT_ROLE": "OidcDefaultRole",
    "OIDC_SESSION_HOURS": "OidcSessionHours",
    "PERSONAL_KEY_HOURS": "PersonalKeyHours",
}


@pytest.fixture
def read(monkeypatch):
    """The settings as read with the given environment (the rest as the test process has it)."""

    def read_with(**environment: str):
        for name in OIDC_VARIABLES:
            monkeypatch.delenv(name, raising=False)
        for name, value in environment.items():
            monkeypatch.setenv(name, value)
        get_settings.cache_clear()
        try:
            return get_settings()
        finally:
            get_settings.cache_clear()

    return read_with


def test_sso_is_off_without_an_issuer_and_on_with_issuer_and_client(read):
    assert read().oidc is None
    oidc = read(OIDC_ISSUER="https://example.okta.com/", OIDC_CLIENT_ID="abc").oidc
    assert (oidc.issuer, oidc.client_id, oidc.client_secret_name) == ("https://example.okta.com", "abc", None)
    assert (oidc.scopes, oidc.groups_claim, oidc.role_claim, oidc.default_role) == (
        "openid email profile",
        "groups",
        None,
        "internal_user",
    )
    assert (oidc.session_hours, oidc.personal_key_hours) == (8.0, 12.0)
    scoped = read(OIDC_ISSUER="https://idp.example.com", OIDC_CLIENT_ID="abc", OIDC_SCOPES="email groups email").oidc
    assert scoped.scopes == "openid email groups"  # openid always, first, nothing twice
    local = read(OIDC_ISSUER="http://localhost:8080/realms/dev", OIDC_CLIENT_ID="abc").oidc
    assert local.issuer == "http://localhost:8080/realms/dev"


@pytest.mark.parametrize(
    ("environment", "named"),
    [
        ({"OIDC_ISSUER": "https://idp.example.com"}, "OIDC_CLIENT_ID"),
        ({"OIDC_CLIENT_ID": "abc"}, "OIDC_ISSUER"),
        ({"OIDC_ISSUER": "http://idp.example.com", "OIDC_CLIENT_ID": "abc"}, "https"),
        ({"OIDC_ISSUER": "idp.example.com", "OIDC_CLIENT_ID": "abc"}, "https"),
        ({"OIDC_GROUP_ROLES": "{not json", "OIDC_ISSUER": "https://i.example", "OIDC_CLIENT_ID": "a"}, "not JSON"),
        ({"OIDC_GROUP_ROLES": '["admins"]', "OIDC_ISSUER": "https://i.example", "OIDC_CLIENT_ID": "a"}, "object"),
        ({"OIDC_GROUP_ROLES": '{"a": "root"}', "OIDC_ISSUER": "https://i.example", "OIDC_CLIENT_ID": "a"}, "proxy"),
        ({"OIDC_GROUP_TEAMS": '{"a": []}', "OIDC_ISSUER": "https://i.example", "OIDC_CLIENT_ID": "a"}, "team id"),
        ({"OIDC_GROUP_TEAMS": '{"a": 7}', "OIDC_ISSUER": "https://i.example", "OIDC_CLIENT_ID": "a"}, "team id"),
        ({"OIDC_DEFAULT_ROLE": "admin", "OIDC_ISSUER": "https://i.example", "OIDC_CLIENT_ID": "a"}, "proxy_admin"),
        ({"PERSONAL_KEY_HOURS": "0", "OIDC_ISSUER": "https://i.example", "OIDC_CLIENT_ID": "a"}, "PERSONAL_KEY"),
        ({"OIDC_SESSION_HOURS": "many", "OIDC_ISSUER": "https://i.example", "OIDC_CLIENT_ID": "a"}, "number"),
    ],
)
def test_settings_that_cannot_work_stop_the_start_naming_what_is_wrong(read, environment, named):
    with pytest.raises(SettingsError, match=named):
        read(**environment)


def test_group_mappings_become_roles_and_teams(read):
    oidc = read(
        OIDC_ISSUER="https://i.example",
        OIDC_CLIENT_ID="a",
        OIDC_GROUP_ROLES=json.dumps({"admins": "proxy_admin", "finance": "proxy_admin_viewer", "eng": "internal_user"}),
        OIDC_GROUP_TEAMS=json.dumps({"eng": "search", "ads": ["ads", "search"]}),
        OIDC_ROLE_CLAIM="gateway_role",
    ).oidc

    def identity(**claims):
        return sso.identity_of({"sub": "u-1", **claims}, oidc)

    # The most powerful role any group maps to; teams in group order, each once.
    found = identity(groups=["eng", "finance", "ads", "unknown"], email="a@example.com", name="A")
    assert (found.user_id, found.role, found.teams) == ("u-1", "proxy_admin_viewer", ("search", "ads"))
    assert (found.email, found.name) == ("a@example.com", "A")
    assert identity(groups="admins").role == "proxy_admin"  # one group as a plain string
    assert identity(groups=["unknown"]).role is None  # maps nothing: the default (new users) or what an admin set
    # The role claim wins when it holds a role; an unknown value there falls back to the groups.
    assert identity(groups=["admins"], gateway_role="internal_user_viewer").role == "internal_user_viewer"
    assert identity(groups=["finance"], gateway_role="superuser").role == "proxy_admin_viewer"
    assert identity(gateway_role=["internal_user", "proxy_admin"]).role == "proxy_admin"
    # What cannot be a user id, an email or a name is not used as one.
    for subject in ("with space", "x" * 257, "tab\there"):
        with pytest.raises(GatewayError) as refused:
            sso.identity_of({"sub": subject}, oidc)
        assert refused.value.status == 401
    odd = identity(email="not\nprintable", name=7)
    assert (odd.email, odd.name) == (None, None)
    assert ROLES[0] == "proxy_admin"  # the order the ranking relies on: most powerful first


def test_the_stack_sets_every_sso_setting_from_a_parameter_whose_default_is_the_codes(read):
    template = yaml_parse((ROOT / "template.yaml").read_text())
    variables = template["Globals"]["Function"]["Environment"]["Variables"]
    for variable, parameter in OIDC_VARIABLES.items():
        assert variables[variable] == {"Ref": parameter}, variable
    defaults = {variable: str(template["Parameters"][p]["Default"]) for variable, p in OIDC_VARIABLES.items()}
    assert read(**defaults).oidc is None  # the defaults deploy a gateway without SSO, which starts
    on = read(**{**defaults, "OIDC_ISSUER": "https://i.example", "OIDC_CLIENT_ID": "a"}).oidc
    assert on == read(OIDC_ISSUER="https://i.example", OIDC_CLIENT_ID="a").oidc  # the same as the code's defaults
    # The client secret is readable when one is named, and only that one.
    statements = template["Resources"]["GatewayDataAccessPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    [oidc_secret] = [s["Fn::If"] for s in statements if s.get("Fn::If", [""])[0] == "HasOidcClientSecret"]
    assert oidc_secret[2] == {"Ref": "AWS::NoValue"} and oidc_secret[1]["Action"] == "secretsmanager:GetSecretValue"
    assert oidc_secret[1]["Resource"]["Fn::Sub"].endswith(":secret:${OidcClientSecretName}-??????")
    rule = template["Rules"]["OidcIssuerHasAClient"]
    assert rule["Assertions"][0]["Assert"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "OidcClientId"}, ""]}]}
    assert template["Outputs"]["SsoRedirectUri"]["Value"]["Fn::Sub"].endswith("/sso/callback")


def test_id_tokens_verify_without_cryptography_as_in_the_layer():
    """The layer has no `cryptography` (PyJWT's own RSA needs it): verification must not need it either."""
    user = OidcUser("alice", "alice@example.com", "Alice")
    with FakeOidc(client_id="gateway", users=[user]) as idp:
        good, forged = idp.id_token("alice", nonce="n"), idp.id_token("alice", nonce="n", aud="x")
        script = f"""
import asyncio, sys
sys.modules["cryptography"] = None  # importing it now fails, as in the layer
from anthropic_gateway import oidc
client = oidc.OidcClient({idp.issuer!r}, "gateway")
print(asyncio.run(client.verify_id_token({good!r}, nonce="n"))["sub"])
try:
    asyncio.run(client.verify_id_token({forged!r}, nonce="n"))
except oidc.InvalidToken as exc:
    print("refused:", exc)
"""
        path = os.pathsep.join([str(ROOT / "layers" / "gateway"), *filter(None, [os.environ.get("PYTHONPATH")])])
        environment = {**os.environ, "PYTHONPATH": path}
        result = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=environment
        )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["alice", "refused: the ID token was issued to another client"]
