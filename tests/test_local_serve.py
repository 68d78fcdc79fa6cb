"""`make dev`'s contract: `python -m anthropic_gateway serve` comes up with embedded moto and serves the SDK."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import anthropic
import httpx
import pytest

from support.servers import answers, free_port
from support.waiting import eventually
from tests.conftest import MASTER_KEY, UPSTREAM_KEY

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def serve(fake_upstream):
    processes = []

    def start(**env) -> tuple[str, subprocess.Popen]:
        port = free_port()
        environment = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MASTER_KEY"))}
        environment.update(
            PORT=str(port),
            HOST="127.0.0.1",
            ANTHROPIC_API_BASE=fake_upstream.url,
            PYTHONPATH=str(ROOT / "layers" / "gateway"),
            PYTHONUNBUFFERED="1",
            **env,
        )
        process = subprocess.Popen(
            [sys.executable, "-m", "anthropic_gateway", "serve"],
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        processes.append(process)
        url = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            assert process.poll() is None, process.stdout.read()
            return answers(url + "/health")

        eventually(healthy, timeout=30, interval=0.1, what="gateway healthy")
        return url, process

    yield start
    for process in processes:
        process.terminate()
        process.wait(10)


def test_serve_generates_a_master_key_and_the_sdk_example_works(serve, fake_upstream):
    url, process = serve(ANTHROPIC_API_KEY=UPSTREAM_KEY)
    health = httpx.get(url + "/health")
    process.terminate()
    output, _ = process.communicate(timeout=10)  # stops the server; start it again for the real check below

    master = re.search(r"master key \(generated, shown once\): (\S+)", output).group(1)
    assert health.json() == {"status": "ok"}
    assert master not in health.text

    url, _ = serve(ANTHROPIC_API_KEY=UPSTREAM_KEY, MASTER_KEY="sk-master-local-test-key-123")
    key = httpx.post(
        url + "/key/generate", headers={"Authorization": "Bearer sk-master-local-test-key-123"}, content=b"{}"
    ).json()["key"]
    client = anthropic.Anthropic(base_url=url + "/anthropic", api_key=key, max_retries=0)
    message = client.messages.create(
        model="claude-sonnet-4-5", max_tokens=1024, messages=[{"role": "user", "content": "Hello, world"}]
    )

    assert message.content[0].text.startswith("Echo: Hello, world")
    assert fake_upstream.requests[-1].header("x-api-key") == UPSTREAM_KEY


def test_use_real_aws_reads_table_and_secrets_from_the_configured_account(serve, aws, fake_upstream):
    # "Real AWS" here is the session's moto server, reached the way boto3 reaches any account: through its
    # default credential and endpoint settings. Nothing is created; the master key comes from Secrets Manager.
    account = {name: os.environ[name] for name in os.environ if name.startswith("AWS_")}
    url, _ = serve(USE_REAL_AWS="1", MASTER_KEY="sk-master-ignored-when-real-aws-1234", **account)

    refused = httpx.post(
        url + "/key/generate", headers={"Authorization": "Bearer sk-master-ignored-when-real-aws-1234"}
    )
    created = httpx.post(url + "/key/generate", headers={"Authorization": f"Bearer {MASTER_KEY}"}, content=b"{}")

    assert refused.status_code == 401
    assert created.status_code == 200
    client = anthropic.Anthropic(base_url=url + "/anthropic", api_key=created.json()["key"], max_retries=0)
    assert client.models.list(limit=1).data
    assert fake_upstream.requests[-1].header("x-api-key") == UPSTREAM_KEY
