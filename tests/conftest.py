"""Shared fixtures: moto as AWS, our fake Anthropic upstream, and the gateway itself, all on loopback.

Each gateway a test starts is an app of its own with a runtime of its own (support/gateways.py); code a test calls
directly is handed a runtime of the test's own (`test_runtime`). Nothing patches the gateway's modules.
"""

from __future__ import annotations

import json
import os
from contextlib import ExitStack

import anthropic
import httpx
import pytest

from support.fake_anthropic import FakeAnthropic
from support.gateways import OUTPUT, drain_all, start_gateway

# As template.yaml and `make dev` set it (Powertools reads it when the app is imported).
os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "anthropic-gateway")

MASTER_KEY = "sk-master-test-0123456789abcdef"
UPSTREAM_KEY = "sk-ant-upstream-test-key"


@pytest.fixture
def test_runtime():
    """A runtime of the test's own, for the gateway code a test calls directly, outside any gateway: the test hands
    it (or the part a function takes) to what it calls, as the app hands its own."""
    from anthropic_gateway.runtime import Runtime
    from anthropic_gateway.settings import get_settings

    return Runtime(get_settings(), stream=OUTPUT)


@pytest.fixture(scope="session")
def fake_upstream():
    with FakeAnthropic(api_key=UPSTREAM_KEY) as fake:
        yield fake


@pytest.fixture(scope="session")
def aws(fake_upstream):
    """moto's server as DynamoDB + Secrets Manager, with the table and secrets the template declares."""
    from anthropic_gateway import local
    from anthropic_gateway.settings import get_settings

    os.environ["ANTHROPIC_API_BASE"] = fake_upstream.url
    os.environ["KEY_CACHE_TTL"] = "0.5"
    # moto runs in this process on 2 shared cores: production's 1 s / 2.5 s bounds would turn a busy moment into
    # a 503. tests/test_aws_faults.py sets production-like bounds for the gateways it starts.
    os.environ["AWS_READ_TIMEOUT"] = "5"
    os.environ["AWS_DEADLINE"] = "15"
    get_settings.cache_clear()
    server = local.start_moto()  # one DynamoDB call at a time, as `make dev` runs it
    local.create_resources(UPSTREAM_KEY, MASTER_KEY)
    yield
    server.stop()


@pytest.fixture(scope="session")
def gateway(aws):
    """The gateway app served by uvicorn, as `make dev` and the Lambda Web Adapter run it."""
    with start_gateway() as server:
        yield server


@pytest.fixture
def gateway_with(aws):
    """`gateway_with(**changes)`: a gateway of the test's own whose settings differ from the session's by
    `changes` (same table, secrets and fake upstream unless changed), stopped when the test ends."""
    with ExitStack() as stack:
        yield lambda **changes: stack.enter_context(start_gateway(**changes))


@pytest.fixture(autouse=True)
def _fresh_upstream(request):
    if "fake_upstream" in request.fixturenames:
        request.getfixturevalue("fake_upstream").reset()


@pytest.fixture
def captured(monkeypatch, gateway):
    """Every EMF blob and log line the tests' gateways write, as CloudWatch would receive them."""
    from support.captured_lines import Lines

    lines = Lines(drain=drain_all)
    monkeypatch.setattr(OUTPUT, "target", lines)
    return lines


@pytest.fixture
def admin(gateway):
    """Raw HTTP to the gateway with the master key."""
    with httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {MASTER_KEY}"}, timeout=30) as http:
        yield http


@pytest.fixture
def make_key(admin):
    def make(**settings) -> str:
        response = admin.post("/key/generate", json=settings)
        assert response.status_code == 200, response.text
        return response.json()["key"]

    return make


@pytest.fixture
def virtual_key(make_key) -> str:
    return make_key()


@pytest.fixture
def http(gateway, virtual_key):
    """Raw HTTP to the gateway's pass-through with a virtual key."""
    with httpx.Client(base_url=gateway.url + "/anthropic", headers={"x-api-key": virtual_key}, timeout=30) as client:
        yield client


@pytest.fixture
def client(gateway, virtual_key):
    """The real Anthropic SDK, pointed at the gateway with a virtual key."""
    return anthropic.Anthropic(base_url=gateway.url + "/anthropic", api_key=virtual_key, max_retries=0)


@pytest.fixture
def run_cli(gateway, monkeypatch, capsys):
    """Run the CLI (`python -m anthropic_gateway keys ...`) in-process against the test gateway; returns
    (exit status, parsed stdout or stderr). The master key never shows in its output."""
    from anthropic_gateway import cli

    monkeypatch.setenv("MASTER_KEY", MASTER_KEY)
    monkeypatch.delenv("GATEWAY_KEY", raising=False)  # it would come before MASTER_KEY
    monkeypatch.setenv("GATEWAY_URL", gateway.url)

    def invoke(*argv: str) -> tuple[int, object]:
        status = cli.main(list(argv))
        out, err = capsys.readouterr()
        assert MASTER_KEY not in out + err
        text = out if status == 0 else err
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    return invoke


@pytest.fixture
def own_table(aws):
    """A fresh table of its own on the session's moto server, installed as the one `table.handle()` returns for the
    test, and deleted after it."""
    import boto3

    from anthropic_gateway import keys, local
    from anthropic_gateway.aws import AwsCalls
    from anthropic_gateway.settings import get_settings
    from anthropic_gateway.storage import table

    name = f"own-table-{keys.new_key()[-8:]}"
    boto3.client("dynamodb").create_table(TableName=name, **local.TABLE_SCHEMA)
    opened = table.open_table(name, AwsCalls(get_settings()))
    replaced = table.install(opened)
    try:
        yield opened
    finally:
        table.install(replaced)
        opened.delete()


@pytest.fixture
def aws_calls(gateway):
    """AWS calls the gateway makes from now on: (operation, request body), each attempt as its Secrets Manager and
    DynamoDB clients send it (their `observers`)."""
    from anthropic_gateway.storage import table

    calls: list[tuple[str, bytes]] = []

    def count(operation: str, body: bytes) -> None:
        calls.append((operation, body))

    clients = [gateway.app.runtime.secrets.client(), table.handle().client]
    for client in clients:
        client.observers.append(count)
    yield calls
    for client in clients:
        client.observers.remove(count)
