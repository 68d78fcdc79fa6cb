"""Which upstreams serve a key (Anthropic, Amazon Bedrock, both in failover order): the key field through the API
and the CLI, the deployment's settings (DEFAULT_UPSTREAMS, BEDROCK_*), and signing with `make dev`'s credentials."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from anthropic_gateway import keys
from anthropic_gateway.runtime import Runtime
from anthropic_gateway.settings import SettingsError, get_settings
from anthropic_gateway.storage import key_records
from support.fake_bedrock import FakeBedrock, prepare

ROOT = Path(__file__).resolve().parent.parent
MESSAGE = b'{"model": "claude-haiku-4-5", "max_tokens": 16, "messages": [{"role": "user", "content": "Hi"}]}'


@pytest.fixture
def environment(monkeypatch):
    """Set gateway environment variables for one test; settings are read again before and after it."""
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


def _error(response: httpx.Response) -> str:
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error", body
    return str(body["error"]["message"])


# -- the key field through the API -------------------------------------------------------------------------------


def test_upstreams_is_set_by_generate_changed_by_update_and_shown_by_info(admin):
    created = admin.post("/key/generate", json={"upstreams": ["anthropic", "bedrock"]})
    assert created.status_code == 200, created.text
    token = created.json()["token"]
    assert created.json()["upstreams"] == ["anthropic", "bedrock"]
    assert admin.get("/key/info", params={"key": token}).json()["info"]["upstreams"] == ["anthropic", "bedrock"]

    updated = admin.post("/key/update", json={"key": token, "upstreams": ["bedrock", "anthropic"]})
    assert updated.status_code == 200, updated.text
    assert admin.get("/key/info", params={"key": token}).json()["info"]["upstreams"] == ["bedrock", "anthropic"]
    record = key_records.load(token)
    default = get_settings().default_upstreams
    assert record is not None and keys.effective_upstreams(record, default) == ("bedrock", "anthropic")

    # null: back to the deployment's default, which follows DEFAULT_UPSTREAMS from then on
    assert admin.post("/key/update", json={"key": token, "upstreams": None}).json()["upstreams"] is None
    record = key_records.load(token)
    assert record is not None and record.upstreams is None
    assert keys.effective_upstreams(record, get_settings().default_upstreams) == ("anthropic",)


def test_a_key_without_upstreams_follows_default_upstreams(admin, environment):
    token = admin.post("/key/generate", json={}).json()["token"]
    assert admin.get("/key/info", params={"key": token}).json()["info"]["upstreams"] is None
    record = key_records.load(token)
    assert record is not None

    environment.setenv("DEFAULT_UPSTREAMS", "anthropic, bedrock")
    get_settings.cache_clear()

    assert keys.effective_upstreams(record, get_settings().default_upstreams) == ("anthropic", "bedrock")
    record.upstreams = ["bedrock"]
    assert keys.effective_upstreams(record, get_settings().default_upstreams) == ("bedrock",)


@pytest.mark.parametrize(
    ("upstreams", "reason"),
    [
        (["openai"], "unknown upstream 'openai'"),
        (["anthropic", "vertex"], "unknown upstream 'vertex'"),
        (["Bedrock"], "unknown upstream 'Bedrock'"),
        ([], "at least one"),
        (["bedrock", "bedrock"], "at most once"),
        ("bedrock", "valid array"),
        ([1], "valid string"),
    ],
)
def test_bad_upstreams_are_a_400_that_names_the_field(admin, upstreams, reason):
    token = admin.post("/key/generate", json={"upstreams": ["bedrock"]}).json()["token"]

    generated = admin.post("/key/generate", json={"upstreams": upstreams})
    updated = admin.post("/key/update", json={"key": token, "upstreams": upstreams})

    for response in (generated, updated):
        assert response.status_code == 400
        message = _error(response)
        assert "upstreams" in message and reason in message, message
    assert admin.get("/key/info", params={"key": token}).json()["info"]["upstreams"] == ["bedrock"]


# -- the CLI -----------------------------------------------------------------------------------------------------


def test_cli_sets_and_unsets_upstreams(run_cli):
    status, created = run_cli("generate", "--upstreams", "anthropic,bedrock")
    assert status == 0 and created["upstreams"] == ["anthropic", "bedrock"]
    status, updated = run_cli("update", created["token"], "--upstreams", "bedrock")
    assert status == 0 and updated["upstreams"] == ["bedrock"]
    status, refused = run_cli("update", created["token"], "--upstreams", "anthropic,azure")
    assert status == 1 and "unknown upstream 'azure'" in refused["error"]["message"]
    status, unset = run_cli("update", created["token"], "--unset", "upstreams")
    assert status == 0 and unset["upstreams"] is None


# -- settings ----------------------------------------------------------------------------------------------------


def test_default_settings_route_to_anthropic_only_and_bedrock_in_the_stack_region(environment):
    for name in ("DEFAULT_UPSTREAMS", "BEDROCK_BASE_URL", "BEDROCK_MODEL_IDS", "BEDROCK_FAILOVER_ON_429"):
        environment.delenv(name, raising=False)
    environment.setenv("AWS_REGION", "eu-central-1")

    settings = get_settings()

    assert settings.default_upstreams == ("anthropic",)
    assert settings.bedrock_base_url == "https://bedrock-mantle.eu-central-1.api.aws/anthropic"
    assert settings.bedrock_failover_on_429 is False
    assert settings.bedrock_api_key_secret is None
    upstream = Runtime(settings).bedrock
    assert (upstream.service, upstream.region) == ("bedrock-mantle", "eu-central-1")
    assert upstream.model_id("claude-sonnet-4-5") == "anthropic.claude-sonnet-4-5"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("openai", "unknown upstream 'openai'"),
        ("anthropic,,bedrock", "unknown upstream ''"),
        ("bedrock,bedrock", "at most once"),
    ],
)
def test_a_bad_default_upstreams_stops_the_start_and_says_why(environment, value, reason):
    environment.setenv("DEFAULT_UPSTREAMS", value)
    with pytest.raises(SettingsError) as raised:
        get_settings()
    assert str(raised.value).startswith("DEFAULT_UPSTREAMS=") and reason in str(raised.value)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ('{"claude-x": ', "not valid JSON"),
        ('["anthropic.claude-x"]', "must be a JSON object"),
        ('{"claude-x": 42}', "BEDROCK_MODEL_IDS['claude-x'] must be a Bedrock model id or null"),
        ('{"claude-x": "has spaces in it"}', "must be a Bedrock model id"),
    ],
)
def test_a_bad_bedrock_model_ids_stops_the_start_and_says_why(environment, value, reason):
    environment.setenv("BEDROCK_MODEL_IDS", value)
    with pytest.raises(SettingsError, match="BEDROCK_MODEL_IDS") as raised:
        get_settings()
    assert reason in str(raised.value)


def test_bedrock_settings_reach_the_runtimes_bedrock_upstream(environment):
    environment.setenv("BEDROCK_BASE_URL", "http://127.0.0.1:9/anthropic/")
    overrides = '{"claude-custom-1": "anthropic.claude-custom-1", "claude-haiku-4-5": null}'
    environment.setenv("BEDROCK_MODEL_IDS", overrides)
    environment.setenv("BEDROCK_API_KEY_SECRET_NAME", "gateway/bedrock-api-key")
    environment.setenv("BEDROCK_FAILOVER_ON_429", "true")
    environment.setenv("AWS_REGION", "ap-northeast-1")

    runtime = Runtime(get_settings())
    upstream = runtime.bedrock

    assert runtime.upstreams.bedrock is upstream  # the one the pass-through forwards with, one per runtime
    assert upstream.base_url == "http://127.0.0.1:9/anthropic"
    assert (upstream.service, upstream.region) == ("bedrock-mantle", "ap-northeast-1")  # a fake: the default service
    assert upstream.model_id("claude-custom-1") == "anthropic.claude-custom-1"
    assert upstream.model_id("claude-haiku-4-5") is None  # taken off Bedrock by the operator
    assert upstream.model_id("claude-sonnet-4-5") == "anthropic.claude-sonnet-4-5"  # the shipped table stays
    assert upstream.api_key_secret == "gateway/bedrock-api-key"
    assert get_settings().bedrock_failover_on_429 is True

    get_settings.cache_clear()
    environment.delenv("BEDROCK_MODEL_IDS")
    assert Runtime(get_settings()).bedrock.model_id("claude-haiku-4-5") is not None  # a new runtime reads them again


@pytest.mark.parametrize(("value", "expected"), [("1", True), ("on", True), ("False", False), ("", False)])
def test_failover_on_429_is_a_flag(environment, value, expected):
    environment.setenv("BEDROCK_FAILOVER_ON_429", value)
    assert get_settings().bedrock_failover_on_429 is expected


def test_failover_on_429_refuses_what_is_not_a_flag(environment):
    environment.setenv("BEDROCK_FAILOVER_ON_429", "sometimes")
    with pytest.raises(SettingsError, match="BEDROCK_FAILOVER_ON_429='sometimes': expected true or false"):
        get_settings()


# -- make dev ----------------------------------------------------------------------------------------------------


def test_with_moto_embedded_its_credentials_sign_bedrock_requests(aws, environment):
    """`make dev` starts moto and sets its fake credentials; botocore's chain finds them and a fake Bedrock that
    knows them verifies the signature."""
    assert "AWS_SESSION_TOKEN" not in os.environ
    moto = (os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"])
    with FakeBedrock(access_key=moto[0], secret_key=moto[1], token=None) as fake:
        environment.setenv("BEDROCK_BASE_URL", fake.base_url)
        upstream = Runtime(get_settings()).bedrock  # its credentials resolved through the chain
        headers = [(b"content-type", b"application/json"), (b"anthropic-version", b"2023-06-01")]

        url, signed, body = asyncio.run(prepare(upstream, "POST", "/v1/messages", b"", headers, MESSAGE))
        response = httpx.post(url, headers=signed, content=body, timeout=10)

    assert response.status_code == 200, response.text
    assert fake.requests[-1].auth == "sigv4"
    assert fake.requests[-1].json()["model"] == "anthropic.claude-haiku-4-5"


def test_serve_refuses_to_start_with_bad_bedrock_settings():
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "BEDROCK_", "DEFAULT_"))}
    environment |= {"PYTHONPATH": str(ROOT / "layers" / "gateway"), "BEDROCK_MODEL_IDS": "{not json"}
    command = [sys.executable, "-m", "anthropic_gateway", "serve"]
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "BEDROCK_MODEL_IDS is not valid JSON" in result.stderr and "Traceback" not in result.stderr
