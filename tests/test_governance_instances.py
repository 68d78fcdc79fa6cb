"""Limits hold across gateway instances: a second gateway in its own process (own memory, own key cache, like
another Lambda instance) shares only the DynamoDB table (moto) with the in-process one."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import anthropic
import pytest

from support.servers import answers, free_port
from support.waiting import eventually
from tests.test_governance import HELLO, MODEL, cost, sdk, settled, usage_header

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def second_gateway(gateway):
    """`uvicorn anthropic_gateway.app:app` in a child process, configured like the first (same table, upstream)."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "layers" / "gateway"), str(ROOT)])}
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "anthropic_gateway.app:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    # stderr to a file: a pipe nobody reads could fill up and stall the child.
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=errors)
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_for_health(url, process, errors)
            yield SimpleNamespace(url=url)
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


def _wait_for_health(url: str, process: subprocess.Popen, errors) -> None:
    def healthy() -> bool:
        if process.poll() is not None:
            errors.seek(0)
            raise RuntimeError(f"second gateway exited: {errors.read().decode()[-2000:]}")
        return answers(url + "/health")

    eventually(healthy, timeout=60, interval=0.05, what="second gateway healthy")


def test_rpm_limit_holds_across_instances(gateway, second_gateway, make_key):
    """Alternate between the two instances: together they get rpm_limit requests in a minute, not twice that."""
    for _ in range(3):  # the real clock runs here; a minute boundary mid-test means trying again in the next one
        minute = int(time.time()) // 60
        key = make_key(rpm_limit=3)
        one, two = sdk(gateway, key), sdk(second_gateway, key)
        outcomes = []
        for client in (one, two, one, two, one):
            try:
                client.models.list()
                outcomes.append("ok")
            except anthropic.RateLimitError as exc:
                assert int(exc.response.headers["retry-after"]) >= 1
                outcomes.append("limited")
        if int(time.time()) // 60 == minute:
            break
    assert outcomes == ["ok", "ok", "ok", "limited", "limited"]


def test_budget_holds_across_instances(admin, gateway, second_gateway, make_key):
    headers = usage_header(input_tokens=1000, output_tokens=100)
    key = make_key(max_budget=float(cost(input_tokens=1000, output_tokens=100)))
    sdk(gateway, key).messages.create(model=MODEL, max_tokens=100, messages=HELLO, extra_headers=headers)
    settled(gateway, admin, key, requests=1)

    with pytest.raises(anthropic.APIStatusError) as refused:
        sdk(second_gateway, key).messages.create(model=MODEL, max_tokens=100, messages=HELLO, extra_headers=headers)
    assert refused.value.status_code == 402


def test_parallel_slots_are_shared(admin, gateway, second_gateway, make_key):
    key = make_key(max_parallel_requests=1)
    slow = {"x-fake-chunks": "50", "x-fake-delay-ms": "100"}
    with sdk(gateway, key).messages.stream(model=MODEL, max_tokens=64, messages=HELLO, extra_headers=slow) as first:
        next(iter(first.text_stream))
        with pytest.raises(anthropic.RateLimitError, match="parallel"):
            sdk(second_gateway, key).messages.create(model=MODEL, max_tokens=8, messages=HELLO)
    settled(gateway, admin, key, requests=1)
    assert sdk(second_gateway, key).messages.create(model=MODEL, max_tokens=8, messages=HELLO).id


def test_block_reaches_other_instances_within_the_cache_ttl(admin, gateway, second_gateway, make_key):
    key = make_key()
    elsewhere = sdk(second_gateway, key)
    assert elsewhere.messages.create(model=MODEL, max_tokens=8, messages=HELLO).id  # now cached over there

    admin.post("/key/block", json={"key": key})  # served by the first instance
    with pytest.raises(anthropic.AuthenticationError):
        sdk(gateway, key).messages.create(model=MODEL, max_tokens=8, messages=HELLO)  # here: at once

    def refused_elsewhere() -> bool:
        try:
            elsewhere.messages.create(model=MODEL, max_tokens=8, messages=HELLO)
        except anthropic.AuthenticationError as exc:
            return "blocked" in str(exc)
        return False

    eventually(refused_elsewhere, what="blocked on the second instance")  # KEY_CACHE_TTL is 0.5 s in the tests


def test_budgeted_keys_see_regenerate_at_once_everywhere(admin, gateway, second_gateway, make_key):
    """Budget admission writes to the key record on a condition that the presented key is still its key."""
    key = make_key(max_budget=100.0)
    elsewhere = sdk(second_gateway, key)
    assert elsewhere.messages.create(model=MODEL, max_tokens=8, messages=HELLO).id  # cached over there

    assert admin.post("/key/regenerate", json={"key": key}).status_code == 200
    with pytest.raises(anthropic.AuthenticationError):
        elsewhere.messages.create(model=MODEL, max_tokens=8, messages=HELLO)
