"""The plain ASGI app in front: what it serves itself (lean), its lifespan, and the admin app it loads on first use."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from anthropic_gateway.app import GatewayApp
from anthropic_gateway.storage import table
from support.gateways import OUTPUT
from tests.conftest import MASTER_KEY, UPSTREAM_KEY

ROOT = Path(__file__).resolve().parent.parent
MESSAGE = {"model": "claude-haiku-4-5", "max_tokens": 8, "messages": [{"role": "user", "content": "Hello"}]}

# Run in a fresh interpreter: the gateway served by uvicorn, one tagged pass-through request (accounted and its tag
# spend recorded), then one console request. Which modules each step imported is written to argv[2] as JSON.
_LEAN_DOOR = """
import json, sys
import httpx
from support.servers import ThreadedUvicorn

ADMIN = ("admin", "console", "key_routes", "spend_routes", "team_routes", "user_routes", "tag_routes", "org_api",
         "org_views")

def heavy():
    names = ("fastapi", "pydantic", "boto3", "aws_lambda_powertools.utilities.parameters", "jwt",
             *(f"anthropic_gateway.{name}" for name in ADMIN))
    return sorted(name for name in names if name in sys.modules)

report = {}
import anthropic_gateway.app
report["import"] = heavy()
app = anthropic_gateway.app.GatewayApp()
with ThreadedUvicorn(app, app_drain=app.drain, http="anthropic_gateway.server_protocol:OneWritePerTurn") as server:
    report["ready"] = heavy()
    response = httpx.post(server.url + "/anthropic/v1/messages", json=json.loads(sys.argv[3]),
                          headers={"x-api-key": sys.argv[1], "x-litellm-tags": "lean:door"}, timeout=30)
    server.drain()
    report["pass_through"] = [response.status_code, heavy()]
    response = httpx.get(server.url + "/ui", timeout=30)
    report["console"] = [response.status_code, heavy()]
with open(sys.argv[2], "w") as out:
    json.dump(report, out)
"""


def test_a_pass_through_request_never_imports_the_admin_app(aws, virtual_key, fake_upstream, tmp_path):
    """FastAPI, pydantic, the admin routes and the console stay out of a process that only relays, and so do boto3
    and Powertools' parameters (the AWS clients are botocore's), and PyJWT (the console's sessions) (issue 21)."""
    report = tmp_path / "report.json"
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'layers' / 'gateway'}{os.pathsep}{ROOT}")
    subprocess.run(
        [sys.executable, "-c", _LEAN_DOOR, virtual_key, str(report), json.dumps(MESSAGE)],
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=120,
    )
    steps = json.loads(report.read_text())

    assert steps["import"] == steps["ready"] == []
    assert steps["pass_through"] == [200, []]
    status, loaded = steps["console"]  # the first admin request loads it all
    expected = {"fastapi", "pydantic", "anthropic_gateway.console", "anthropic_gateway.team_routes"}
    assert status == 200 and expected <= set(loaded)
    assert fake_upstream.requests[-1].path == "/v1/messages"


@pytest.mark.parametrize("path", ["/anthropic", "/anthropic/"])
def test_the_base_url_answers_a_preconnect_without_a_key_or_the_upstream(gateway, fake_upstream, path):
    """Claude Code sends a best-effort HEAD to its base URL before its first request; an error there broke it."""
    head = httpx.head(gateway.url + path)
    get = httpx.get(gateway.url + path)

    assert (head.status_code, head.content) == (200, b"")
    assert get.status_code == 200 and get.json() == {"status": "ok"}
    assert head.headers["content-length"] == get.headers["content-length"] == str(len(get.content))
    assert fake_upstream.requests == []


def test_the_base_url_serves_nothing_else(gateway, virtual_key, fake_upstream):
    headers = {"x-api-key": virtual_key}
    assert httpx.post(gateway.url + "/anthropic", json=MESSAGE, headers=headers).status_code == 404
    assert httpx.post(gateway.url + "/anthropic/", json=MESSAGE, headers=headers).status_code == 400  # empty segment
    assert fake_upstream.requests == []


def test_health_is_the_readiness_check(gateway):
    assert httpx.get(gateway.url + "/health").json() == {"status": "ok"}
    refused = httpx.post(gateway.url + "/health")
    assert refused.status_code == 405 and refused.headers["allow"] == "GET"
    assert refused.json() == {"type": "error", "error": {"type": "api_error", "message": "Method Not Allowed"}}


def test_admin_requests_arriving_together_load_the_admin_app_once(aws, monkeypatch):
    """The first admin requests of a process, concurrent: one import of the admin app, every one answered."""
    import asyncio

    from anthropic_gateway import app as app_module

    loads = []
    load = app_module._load_admin
    monkeypatch.setattr(app_module, "_load_admin", lambda runtime: loads.append(1) or load(runtime))

    async def scenario() -> list[int]:
        app = app_module.GatewayApp(stream=OUTPUT)
        await app.start()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            auth = {"Authorization": f"Bearer {MASTER_KEY}"}
            responses = await asyncio.gather(*(client.get("/key/list", headers=auth) for _ in range(8)))
        await app.stop()
        return [response.status_code for response in responses]

    assert asyncio.run(scenario()) == [200] * 8
    assert loads == [1]


def test_a_setting_that_cannot_work_fails_the_start(aws):
    """A bad BEDROCK_BASE_URL stops the lifespan (and so the adapter's readiness), not every request."""
    import asyncio
    from dataclasses import replace

    from anthropic_gateway.app import GatewayApp
    from anthropic_gateway.bedrock_models import BedrockConfigError
    from anthropic_gateway.settings import get_settings

    app = GatewayApp(replace(get_settings(), bedrock_base_url="ftp://nowhere"), stream=OUTPUT)
    with pytest.raises(BedrockConfigError):
        asyncio.run(app.start())
    assert app.runtime is None


def test_the_start_reads_both_keys_and_makes_the_aws_clients_before_any_request(aws):
    """What a cold start costs is paid before the adapter's readiness check passes (issue 21): both keys read, the
    Secrets Manager client and the table handle made and installed for the storage modules."""

    async def start_then_read() -> tuple[bool, list[str], tuple[str, str]]:
        app = GatewayApp(stream=OUTPUT)
        await app.start()
        runtime = app.runtime
        assert runtime is not None
        made: list[str] = []
        runtime.secrets.client().observers.append(lambda operation, _: made.append(operation))
        try:
            read = (await runtime.secrets.master_key(), await runtime.secrets.upstream_key())
        finally:
            installed = runtime.table is not None and table.handle() is runtime.table
            await app.stop()
        return installed, made, read

    installed, made, read = asyncio.run(start_then_read())
    assert installed and made == [] and read == (MASTER_KEY, UPSTREAM_KEY)
