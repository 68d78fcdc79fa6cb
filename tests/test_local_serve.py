"""`make dev`'s contract: `python -m anthropic_gateway serve` comes up with embedded moto and serves the SDK."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import threading
from decimal import Decimal
from pathlib import Path

import anthropic
import httpx
import pytest
from botocore.exceptions import ClientError

from anthropic_gateway import pricing
from anthropic_gateway.usage import Usage
from support.fake_anthropic import expected_input_tokens, expected_output_tokens
from support.servers import answers, free_port
from support.waiting import eventually
from tests.conftest import MASTER_KEY, UPSTREAM_KEY

# How the gateways price models: UNKNOWN_MODEL_RATE and BEDROCK_MODEL_IDS as they are by default.
UNKNOWN_MODELS = pricing.UnknownModels("max", "")

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
        # Its output, read as it comes (a full pipe would stall the server): `process.output` once it has exited.
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
        reader.start()
        process.output = lambda: (reader.join(10), "".join(lines))[1]
        url = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            assert process.poll() is None, process.output()
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
    process.wait(10)  # stops the server; start it again for the real check below
    output = process.output()

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


def test_a_burst_through_a_governed_key_on_the_embedded_moto_is_exact(serve, fake_upstream):
    """moto is not thread-safe: `serve` runs it one DynamoDB call at a time (local.start_moto), with bounds for a
    local server, so a burst through a key with a budget, a rate limit and a parallel limit that all permit it
    is served whole and counted exactly."""
    url, process = serve(ANTHROPIC_API_KEY=UPSTREAM_KEY, MASTER_KEY=MASTER_KEY)
    master = {"Authorization": f"Bearer {MASTER_KEY}"}
    limits = {"max_budget": 100, "rpm_limit": 1000, "max_parallel_requests": 200}
    key = httpx.post(url + "/key/generate", headers=master, json=limits, timeout=30).json()["key"]
    message = {"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": [{"role": "user", "content": "Hi there"}]}
    burst = 150

    async def send_all() -> list[int]:
        limits = httpx.Limits(max_connections=burst)
        async with httpx.AsyncClient(base_url=url, headers={"x-api-key": key}, timeout=120, limits=limits) as client:
            answers = await asyncio.gather(*(client.post("/anthropic/v1/messages", json=message) for _ in range(burst)))
        return [answer.status_code for answer in answers]

    assert asyncio.run(send_all()) == [200] * burst

    usage = Usage(input_tokens=expected_input_tokens(message), output_tokens=expected_output_tokens(message))
    expected = {
        "requests": burst,
        "input_tokens": burst * usage.input_tokens,
        "output_tokens": burst * usage.output_tokens,
        "spend": burst * pricing.cost_usd("claude-sonnet-4-5", usage, UNKNOWN_MODELS),
        "reserved_spend": 0,
    }

    def counted() -> dict[str, object]:
        info = httpx.get(url + "/key/info", params={"key": key}, headers=master, timeout=30).json()["info"]
        seen = {name: info[name] for name in expected}
        seen["spend"] = Decimal(str(seen["spend"]))
        return seen

    eventually(lambda: counted() == expected, timeout=30, what=f"the burst's counters: {expected}")
    process.terminate()
    process.wait(10)
    assert "Traceback" not in process.output()


def test_the_local_dynamodb_keeps_no_copy_of_the_table_per_transaction(aws):
    """moto copies a table for each TransactWriteItems (to roll back) and would track every copy forever: `make dev`
    and the suite grew by gigabytes. local.behave_like_dynamodb stops that: failed and applied transactions alike
    leave one table behind."""
    import gc

    from moto.dynamodb.models.table import Table as MotoTable

    from anthropic_gateway.aws import AwsCalls
    from anthropic_gateway.settings import get_settings
    from anthropic_gateway.storage import table

    client = AwsCalls(get_settings()).client("dynamodb")
    name = get_settings().table_name
    put = {"TableName": name, "Item": {"pk": {"S": "copies-test"}, "sk": {"S": "ITEM"}}}

    def tables() -> int:
        gc.collect()
        return sum(1 for o in gc.get_objects() if type(o) is MotoTable)

    before = tables()
    for _ in range(20):
        client.transact_write_items(TransactItems=[{"Put": put}])
        with pytest.raises(ClientError, match=r"\(TransactionCanceledException\)"):
            client.transact_write_items(
                TransactItems=[{"Put": {**put, "ConditionExpression": "attribute_not_exists(pk)"}}]
            )
    assert tables() <= before + 1
    table.handle().delete_item(Key={"pk": "copies-test", "sk": "ITEM"})


def test_a_refused_transaction_on_the_local_dynamodb_undoes_its_writes_without_copying_the_table(aws):
    """moto rolled a refused TransactWriteItems back from a copy of the whole table, made once per action: 1.1 s for
    five actions on 10,000 items, and late in the suite every call queued behind it timed out. The local DynamoDB
    now backs up only the items a transaction names: a refused one still changes nothing, an applied one all."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.dynamodb.models import dynamodb_backends

    from anthropic_gateway.aws import AwsCalls
    from anthropic_gateway.settings import get_settings

    client = AwsCalls(get_settings()).client("dynamodb")
    name = get_settings().table_name
    tables = dynamodb_backends[DEFAULT_ACCOUNT_ID][os.environ.get("AWS_DEFAULT_REGION", "us-east-1")].tables
    moto_table = tables[name]
    counted, added = (
        {"pk": {"S": "rollback-counted"}, "sk": {"S": "ITEM"}},
        {"pk": {"S": "rollback-added"}, "sk": {"S": "ITEM"}},
    )
    client.put_item(TableName=name, Item={**counted, "n": {"N": "1"}})
    increment = {
        "Update": {
            "TableName": name,
            "Key": counted,
            "UpdateExpression": "ADD n :one",
            "ExpressionAttributeValues": {":one": {"N": "1"}},
        }
    }
    add = {"Put": {"TableName": name, "Item": {**added, "n": {"N": "7"}}}}
    absent = {"pk": {"S": "rollback-absent"}, "sk": {"S": "ITEM"}}
    refused = {"ConditionCheck": {"TableName": name, "Key": absent, "ConditionExpression": "attribute_exists(pk)"}}

    def state() -> tuple[str | None, str | None]:
        items = [client.get_item(TableName=name, Key=key, ConsistentRead=True).get("Item") for key in (counted, added)]
        return tuple(item["n"]["N"] if item else None for item in items)  # type: ignore[return-value]

    with pytest.raises(ClientError, match=r"\(TransactionCanceledException\)"):
        client.transact_write_items(TransactItems=[increment, add, refused])
    assert state() == ("1", None)  # undone
    assert tables[name] is moto_table  # from the backups of its items, not from a copy of the table

    with pytest.raises(ClientError):  # one item twice: refused whole
        client.transact_write_items(TransactItems=[increment, add, {**increment}])
    assert state() == ("1", None)

    client.transact_write_items(TransactItems=[increment, add])
    assert state() == ("2", "7")
    for key in (counted, added):
        client.delete_item(TableName=name, Key=key)
