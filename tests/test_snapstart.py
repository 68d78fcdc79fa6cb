"""SnapStart: the hooks the Lambda Web Adapter calls around a snapshot, refused to everyone else.

Every environment restored from a snapshot starts from the same memory. The before-checkpoint hook leaves nothing
there that must not be shared (connections, AWS clients, credentials, secrets, key records); the after-restore hook
forgets whatever the snapshot holds, re-seeds the random sources and reads the secrets again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import boto3
import httpx
import pytest

from anthropic_gateway.app import AFTER_RESTORE_PATH, BEFORE_CHECKPOINT_PATH
from anthropic_gateway.storage import table

ROOT = Path(__file__).resolve().parent.parent
MESSAGE = {"model": "claude-haiku-4-5", "max_tokens": 8, "messages": [{"role": "user", "content": "Hello"}]}
# What the adapter adds to every request it forwards from a client (Function URL, API Gateway), whatever was sent.
FORWARDED = {"x-amzn-request-context": '{"http":{"sourceIp":"203.0.113.7"}}', "x-amzn-lambda-context": "{}"}


@pytest.fixture
def master_secret(aws):
    """A master key secret of the test's own (rotating the session's would lock out every other test)."""
    name = f"test/snapstart-master-{uuid.uuid4().hex[:8]}"
    client = boto3.client("secretsmanager")
    old, new = f"sk-master-old-{uuid.uuid4().hex}", f"sk-master-new-{uuid.uuid4().hex}"
    client.create_secret(Name=name, SecretString=old)
    return name, old, new, lambda: client.put_secret_value(SecretId=name, SecretString=new)


def _status(gateway, key: str) -> int:
    response = httpx.post(gateway.url + "/anthropic/v1/messages", json=MESSAGE, headers={"x-api-key": key}, timeout=30)
    return response.status_code


@pytest.mark.parametrize("hook", [BEFORE_CHECKPOINT_PATH, AFTER_RESTORE_PATH])
def test_nobody_but_the_adapter_reaches_the_hooks(gateway_with, master_secret, fake_upstream, hook):
    name, old, new, rotate = master_secret
    gateway = gateway_with(master_key_secret=name)
    assert _status(gateway, old) == 200
    rotate()  # a hook that ran would make the gateway read the new key

    attempts = [
        httpx.post(gateway.url + hook, headers=FORWARDED),  # a client's request, forwarded by the adapter
        httpx.post(gateway.url + hook, headers={"x-amzn-lambda-context": "{}"}),
        httpx.post(gateway.url + hook, headers={"X-Amzn-Request-Context": "{}"}),
        httpx.post(gateway.url + hook, headers={"x-forwarded-for": "203.0.113.7"}),  # not from loopback
        httpx.get(gateway.url + hook),
        httpx.put(gateway.url + hook),
    ]

    for refused in attempts:
        assert refused.status_code == 404, refused.text  # to anyone else, the path does not exist
        assert refused.json() == {"type": "error", "error": {"type": "not_found_error", "message": "Not found."}}
    assert (_status(gateway, old), _status(gateway, new)) == (200, 401)  # nothing was forgotten


@pytest.mark.parametrize("hook", [BEFORE_CHECKPOINT_PATH, AFTER_RESTORE_PATH])
def test_the_adapters_hook_call_forgets_secrets_and_connections(gateway_with, master_secret, fake_upstream, hook):
    name, old, new, rotate = master_secret
    gateway = gateway_with(master_key_secret=name)
    assert _status(gateway, old) == 200
    runtime = gateway.app.runtime
    pools = runtime.pools
    used = pools.get("anthropic")
    clients = (runtime.secrets.client(), table.handle())
    runtime.tag_registry.load()
    runtime.team_registry.load()
    rotate()

    called = httpx.post(gateway.url + hook)  # as the adapter calls it: an empty POST over loopback

    assert called.status_code == 200 and called.json() == {"status": "ok"}
    # The registries' copies are read again before a request relies on them (their age cannot tell, after a restore).
    assert runtime.tag_registry.current(3600) is None and runtime.team_registry.current(3600) is None
    assert pools.get("anthropic") is not used  # the old pool and its connections are closed
    assert (_status(gateway, new), _status(gateway, old)) == (200, 401)  # the secret was read again
    # New AWS clients (Secrets Manager's, and DynamoDB's under the table handle), from a new session.
    assert runtime.secrets.client() is not clients[0] and table.handle() is not clients[1]


def test_two_environments_restored_from_one_snapshot_draw_their_own_ids_and_read_secrets_again(
    aws, master_secret, fake_upstream
):
    name, old, new, rotate = master_secret
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'layers' / 'gateway'}{os.pathsep}{ROOT}", MASTER_KEY_SECRET_NAME=name)
    process = subprocess.Popen(
        [sys.executable, "-m", "support.snapshot_process", old, new],
        env=env,
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        initialised = json.loads(process.stdout.readline())
        assert process.stdout.readline() == "checkpointed\n"
        rotate()  # the secret changes while the snapshot waits
        output, _ = process.communicate("restore\n", timeout=120)
    finally:
        process.kill()
    restored = [json.loads(line) for line in output.splitlines()]

    assert (initialised["status"], initialised["checkpoint"]) == (200, 200)
    assert len(restored) == 2 and [r["restore"] for r in restored] == [200, 200]
    assert restored[0]["before"] == restored[1]["before"]  # one memory image: one `random` state...
    assert restored[0]["after"] != restored[1]["after"]  # ...until the hook re-seeds it
    ids = [initialised["ids"][0], *restored[0]["ids"], *restored[1]["ids"]]
    assert len(set(ids)) == len(ids) == 5
    assert [r["statuses"] for r in restored] == [[200, 401], [200, 401]]  # each read the rotated key
    assert process.returncode == 0
