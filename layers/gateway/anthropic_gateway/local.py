"""`python -m anthropic_gateway serve`: the gateway on this machine, with moto standing in for AWS.

Moto's server plays DynamoDB and Secrets Manager; the table and the two secrets are created exactly as
template.yaml declares them, so the same code runs here and on Lambda. `USE_REAL_AWS=1` skips moto and uses
the default boto3 credentials, with table and secret names from the environment.
"""

from __future__ import annotations

import copy
import os
import secrets as random
import signal
import socket
from types import FrameType
from typing import Any

import uvicorn

# The key schema of template.yaml's GatewayTable (tests/test_deploy_* check they match).
TABLE_SCHEMA: dict[str, Any] = {
    "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
    "AttributeDefinitions": [
        {"AttributeName": name, "AttributeType": "S"} for name in ("pk", "sk", "gsi1pk", "gsi1sk")
    ],
    "GlobalSecondaryIndexes": [
        {
            "IndexName": "gsi1",
            "KeySchema": [
                {"AttributeName": "gsi1pk", "KeyType": "HASH"},
                {"AttributeName": "gsi1sk", "KeyType": "RANGE"},
            ],
            "Projection": {"ProjectionType": "ALL"},
        }
    ],
    "BillingMode": "PAY_PER_REQUEST",
}
TTL_ATTRIBUTE = "ttl"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# moto answers in a thread per request on the same few cores as the gateway, one DynamoDB call at a time (below):
# production's 1 s / 2.5 s bounds would turn a burst into 503s. Used unless the environment sets them.
_EMBEDDED_AWS_BOUNDS = {"AWS_READ_TIMEOUT": "5", "AWS_DEADLINE": "15"}


def start_moto() -> object:
    """Start moto's server on a free loopback port and point boto3 at it (through AWS_ENDPOINT_URL), made safe to
    call concurrently (`serve` and the tests both run the gateway on it this way)."""
    import logging

    from moto.server import ThreadedMotoServer

    from .settings import get_settings

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's per-call access log drowns our output
    behave_like_dynamodb()
    for name, value in _EMBEDDED_AWS_BOUNDS.items():
        os.environ.setdefault(name, value)
    get_settings.cache_clear()  # read again with those bounds
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
    )
    # Only these credentials, so botocore's chain finds them for everything, Bedrock's SigV4 signing included
    # (a fake Bedrock verifies them); a shell's session token or profile would mix in a real identity.
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        os.environ.pop(name, None)
    return server


def serve_moto(argv: list[str]) -> None:
    """moto's own server (`moto_server`'s options: `-H host`, `-p port`, default 127.0.0.1:5000), behaving like
    DynamoDB as the one `serve` embeds does: for `sam local`, whose functions reach it from their containers."""
    import moto.server

    behave_like_dynamodb()
    moto.server.main(argv or ["--port", "5000"])  # moto reads sys.argv when given nothing


def behave_like_dynamodb() -> None:
    """Make moto, in this process, behave as DynamoDB does for the gateway: plain arithmetic, one DynamoDB call at a
    time, no model instance kept forever, and transactions that cost what their own items cost. `start_moto` calls
    it; so do the moto servers run in a process of their own (`make bench`, `anthropic-gateway moto`)."""
    _moto_plain_arithmetic()
    _moto_one_dynamodb_call_at_a_time()
    _moto_keeps_no_table_copies()
    _moto_transactions_back_up_only_their_items()


def _moto_one_dynamodb_call_at_a_time() -> None:
    """Real DynamoDB applies each request atomically; moto's threaded server does not: its TransactWriteItems
    deep-copies the table while other threads write to it, and an UpdateItem answer is built from the live item
    while another thread changes it ("dictionary changed size during iteration"). A burst of governed requests
    then failed, or left a budget reservation behind (issue 18). One lock around each whole DynamoDB request, its
    answer included, makes it behave like the service the gateway is written for."""
    import threading

    from moto.dynamodb.responses import DynamoHandler

    if getattr(DynamoHandler, "_gateway_serialised", False):
        return
    lock = threading.RLock()
    original = DynamoHandler._dispatch  # each request, from its body to its answer's bytes (`dispatch` calls it)

    def locked(self: DynamoHandler, *args: Any, **kwargs: Any) -> Any:
        with lock:
            return original(self, *args, **kwargs)

    setattr(DynamoHandler, "_dispatch", locked)  # noqa: B010 (mypy would refuse the assignment)
    DynamoHandler._gateway_serialised = True  # type: ignore[attr-defined]


class _Untracked(list[Any]):
    """An instance list that keeps nothing."""

    def append(self, instance: Any) -> None:
        pass


def _moto_keeps_no_table_copies() -> None:
    """Keep moto from holding on to every DynamoDB model instance it ever made. moto tracks them all, forever, for
    its dashboard: every item version an update makes, and (before `_moto_transactions_back_up_only_their_items`)
    a copy of the whole table per transaction. `make dev` and the test suite grew by gigabytes. moto's dashboard,
    which nothing here uses, then lists no DynamoDB models."""
    import moto.dynamodb.models  # noqa: F401 (registers the DynamoDB models in model_data)
    from moto.core.model_instances import model_data

    for model in model_data["dynamodb"].values():
        setattr(model, "instances_tracked", _Untracked())  # noqa: B010 (moto's metaclass adds it; mypy cannot see it)


class _TablesNotCopied:
    """The `copy` module as moto's DynamoDB backend sees it: a deep copy of a whole table is the table itself."""

    def __init__(self) -> None:
        from moto.dynamodb.models.table import Table

        self._table = Table

    def deepcopy(self, value: Any, memo: dict[int, Any] | None = None) -> Any:
        return value if isinstance(value, self._table) else copy.deepcopy(value, memo)


def _moto_transactions_back_up_only_their_items() -> None:
    """Make a TransactWriteItems cost what its own items cost, as on DynamoDB. To roll a refused one back, moto
    deep-copies the whole table once per action: about 0.1 ms per item in the table, so 1.1 s for five actions on a
    table of 10,000 items. Under the one-call-at-a-time lock every other call waited behind it: late in the test
    suite (thousands of keys, counters and audit entries) AWS read timeouts and 503s, and the same in a `make dev`
    used for long. Here the items a transaction names are backed up instead, and put back if it is refused (moto
    then "restores" the table objects it did not copy, which changes nothing)."""
    import moto.dynamodb.models as backend_module
    from moto.dynamodb.models import DynamoDBBackend

    original = DynamoDBBackend.transact_write_items
    if getattr(original, "backs_up_items", False):
        return
    setattr(backend_module, "copy", _TablesNotCopied())  # noqa: B010 (moto's backend reads copy.deepcopy from it)

    def backed_up(self: DynamoDBBackend, transact_items: list[dict[str, Any]]) -> None:
        backups = [
            backup
            for action in transact_items
            for kind, operation in action.items()
            if (backup := _backup(self.tables, kind, operation)) is not None
        ]
        try:
            original(self, transact_items)
        except Exception:
            # Last first: an item named twice (which moto refuses) ends as it was before the first.
            for items, key, item in reversed(backups):
                if item is None:
                    items.pop(key, None)
                else:
                    items[key] = item
            raise

    backed_up.backs_up_items = True  # type: ignore[attr-defined]
    setattr(DynamoDBBackend, "transact_write_items", backed_up)  # noqa: B010 (mypy would refuse the assignment)


def _backup(tables: dict[str, Any], kind: str, operation: Any) -> tuple[dict[Any, Any], Any, Any] | None:
    """(the dict holding the item an action names, its key there, a copy of the item or None), or None for an action
    moto refuses before it writes anything (no such table, no whole key)."""
    from moto.dynamodb.models.dynamo_type import DynamoType

    found = tables.get(operation.get("TableName", "")) if isinstance(operation, dict) else None
    if found is None:
        return None
    key = operation.get("Item") if kind == "Put" else operation.get("Key")
    names = [name for name in (found.hash_key_attr, found.range_key_attr) if name]
    if not isinstance(key, dict) or not all(name in key for name in names):
        return None
    try:
        values = [DynamoType(key[name]) for name in names]
    except Exception:  # not an attribute value: refused as well
        return None
    items, value = found.items, values[0]
    if len(values) == 2:  # a table with a sort key keeps {hash: {range: item}}
        items, value = items.setdefault(value, {}), values[1]
    return items, value, copy.deepcopy(items.get(value))


def _moto_plain_arithmetic() -> None:
    """Make moto write the results of its own number arithmetic (`SET a = a - :x`, `ADD a :x`) in plain notation.

    moto formats them with str(Decimal), which is exponent notation below 1e-6 ("2E-7"), and its next arithmetic
    on that attribute fails (it reads a number without "." as an int): a $0.0000001 budget then made every request
    a 503 after retries (issue 9). DynamoDB itself has no such problem; the gateway writes plain notation too.
    """
    from decimal import Decimal

    from moto.dynamodb.models.dynamo_type import DynamoType

    for name in ("__add__", "__sub__"):
        original = getattr(DynamoType, name)
        if getattr(original, "plain_notation", False):
            continue

        def plain(self: DynamoType, other: DynamoType, _original: Any = original) -> DynamoType:
            result: DynamoType = _original(self, other)
            if result.is_number():
                result.value = format(Decimal(result.value), "f")
            return result

        plain.plain_notation = True  # type: ignore[attr-defined]
        setattr(DynamoType, name, plain)


def create_resources(upstream_key: str, master_key: str) -> None:
    """The table and secrets template.yaml declares, created in whatever AWS boto3 points at (moto here)."""
    import boto3

    from .settings import get_settings

    settings = get_settings()
    dynamodb = boto3.client("dynamodb")
    dynamodb.create_table(TableName=settings.table_name, **TABLE_SCHEMA)
    dynamodb.update_time_to_live(
        TableName=settings.table_name, TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE}
    )
    secretsmanager = boto3.client("secretsmanager")
    for name, value in ((settings.upstream_key_secret, upstream_key), (settings.master_key_secret, master_key)):
        secretsmanager.create_secret(Name=name, SecretString=value)


def serve() -> None:

    from .settings import SettingsError, get_settings

    try:
        settings = get_settings()
    except SettingsError as exc:  # a bad DEFAULT_UPSTREAMS, BEDROCK_MODEL_IDS...: say which, start nothing
        raise SystemExit(f"! {exc}") from None
    host = os.environ.get("HOST", "0.0.0.0")
    port = int(os.environ.get("PORT", "4000"))
    real_aws = os.environ.get("USE_REAL_AWS", "") not in ("", "0", "false")
    os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "anthropic-gateway")  # as template.yaml sets it
    generated_master = None
    if not real_aws:
        start_moto()
        upstream_key = os.environ.get("ANTHROPIC_API_KEY", "")
        master_key = os.environ.get("MASTER_KEY") or ""
        if not master_key:
            master_key = generated_master = "sk-master-" + random.token_urlsafe(24)
        if not upstream_key:
            print("! ANTHROPIC_API_KEY is not set: the upstream will answer 401 until you restart with it.")
        create_resources(upstream_key or "not-configured", master_key)
    print(f"Anthropic gateway on http://{host}:{port}  (SDK base URL: http://localhost:{port}/anthropic)")
    print(f"  upstream: {settings.anthropic_api_base}")
    print(f"  bedrock: {settings.bedrock_base_url}  (keys without upstreams: {','.join(settings.default_upstreams)})")
    print(f"  AWS: {'real AWS (default credentials)' if real_aws else 'embedded moto (DynamoDB, Secrets Manager)'}")
    if generated_master:
        print(f"  master key (generated, shown once): {generated_master}")
    run_uvicorn(host, port)


def run_uvicorn(host: str, port: int) -> None:
    """uvicorn as functions/proxy/run.sh runs it on Lambda, with the same bounded stop: at SIGTERM, streams still
    open get SHUTDOWN_GRACE_SECONDS to finish, are then cut (their accounting still runs: what was relayed is
    billed), the app drains (accounting, ledger flush) and the process exits. A second SIGTERM exits at once."""
    from .settings import get_settings

    config = uvicorn.Config(
        "anthropic_gateway.app:app",
        host=host,
        port=port,
        log_level="warning",
        server_header=False,
        date_header=False,  # the upstream's Date is forwarded; a second one would be wrong
        proxy_headers=True,
        # As run.sh: httptools, bounded in what a client costs (its settings), one write per turn.
        http="anthropic_gateway.server_protocol:OneWritePerTurn",
        loop="asyncio",  # as run.sh: asyncio's own loop
        timeout_graceful_shutdown=max(1, round(get_settings().shutdown_grace_seconds)),
    )
    _ImpatientServer(config).run()


class _ImpatientServer(uvicorn.Server):
    """uvicorn's Server, where a second SIGTERM (not only a second Ctrl-C) forces the exit."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit and sig == signal.SIGTERM:
            self.force_exit = True
        super().handle_exit(sig, frame)
