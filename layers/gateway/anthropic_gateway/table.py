"""The gateway's DynamoDB table: the handle, how values are stored, and the write patterns every module shares.

Key records (keys.py), admission counters (governance.py), spend per tag (tag_spend.py) and the coalesced counters
(ledger.py) all live in this one table; they reach it through the functions here and never call boto3 for a
shared pattern themselves:
  - `add_counters`: one atomic ADD of many counters (optionally only on an item that exists, with a TTL);
  - `update_if`: a conditional UpdateItem whose failure is an answer (the item as it was), not an exception;
  - `transact`: TransactWriteItems, with the indexes of the actions whose condition failed;
  - `add_counters_once`: `add_counters` that applies at most once per operation id, however often it is retried.

Every call is bounded (aws.config(): short timeouts, few attempts); a retried write never applies twice: counters
go through `add_counters_once`, everything else is conditional on the state it changes.

Numbers are exact Decimal both ways, and go on the wire in plain notation (0.0000001, never 1E-7): DynamoDB reads
both, but moto's UpdateItem arithmetic reads only the plain form, and tests run against moto.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from decimal import Decimal
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from . import aws
from .settings import get_settings

if TYPE_CHECKING:
    from boto3.dynamodb.types import TypeSerializer
    from mypy_boto3_dynamodb.service_resource import Table

Item = dict[str, Any]  # an item in boto3 resource form: numbers as Decimal, sets as set
Number = int | Decimal

CONDITION_FAILED = "ConditionalCheckFailedException"
TRANSACTION_CANCELLED = "TransactionCanceledException"
# How long an operation marker (OP#<id>) stays: far longer than any retry of its write can come (DynamoDB's own
# ClientRequestToken window is 10 minutes; a frozen Lambda instance can retry hours later).
OPERATION_MARKER_SECONDS = 7 * 86400
_SERIALIZE_EVENT, _SERIALIZE_ID = "before-parameter-build.dynamodb", "dynamodb-attr-value-input"


class Conflict(Exception):
    """Another write reached one of the items at the same moment, or it changed since it was read: read again."""


class Cancelled(Exception):
    """A transaction whose conditions did not all hold; `failed` lists the indexes of the actions that failed."""

    def __init__(self, failed: list[int]):
        super().__init__(failed)
        self.failed = failed


# -- the handle ---------------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def handle() -> Table:
    """The gateway table (boto3 resource), created once per process."""
    return open_table(get_settings().table_name)


def open_table(name: str) -> Table:
    """A resource handle on table `name` that writes numbers in plain notation."""
    import boto3  # deferred: keeps boto3 out of the cold-start path of /health
    from boto3.dynamodb.transform import TransformationInjector

    with aws.boto3_lock:
        table = boto3.resource("dynamodb", config=aws.config()).Table(name)
    # The resource turns request values into AttributeValues in one event handler registered under this id; ours is
    # the same handler with a serializer that differs only in how it writes numbers (tests/test_table.py checks it).
    events = table.meta.client.meta.events
    events.unregister(_SERIALIZE_EVENT, unique_id=_SERIALIZE_ID)
    injector = TransformationInjector(serializer=_serializer())
    events.register(_SERIALIZE_EVENT, injector.inject_attribute_value_input, unique_id=_SERIALIZE_ID)
    return table


# -- values -------------------------------------------------------------------------------------------------------


def stored(value: Any) -> Any:
    """`value` as DynamoDB can hold it: floats (from JSON) become the exact Decimal of their shortest repr."""
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, list):
        return [stored(v) for v in value]
    if isinstance(value, dict):
        return {k: stored(v) for k, v in value.items()}
    return value


def plain(value: Any) -> Any:
    """A stored value as JSON holds it: Decimal becomes int when written as an integer, float otherwise."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() and "." not in str(value) else float(value)
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def check_storable(value: Any) -> None:
    """Raise (TypeError, ValueError or decimal errors) unless DynamoDB can store `value` as an attribute."""
    serialize({"value": stored(value)})


def serialize(item: Mapping[str, Any]) -> dict[str, Any]:
    """An item in resource form as low-level AttributeValues, numbers in plain notation."""
    serializer = _serializer()
    return {name: serializer.serialize(value) for name, value in item.items()}


def deserialize(item: Mapping[str, Any] | None) -> Item | None:
    """A low-level item (as in a ConditionalCheckFailed's `Item`) in resource form."""
    if item is None:
        return None
    from boto3.dynamodb.types import TypeDeserializer

    deserializer = TypeDeserializer()
    return {name: deserializer.deserialize(value) for name, value in item.items()}


@lru_cache(maxsize=1)
def _serializer() -> TypeSerializer:
    from boto3.dynamodb.types import TypeSerializer

    class PlainNumbers(TypeSerializer):
        def serialize(self, value: Any) -> Any:
            serialized: dict[str, Any] = dict(super().serialize(value))
            if "N" in serialized:
                serialized["N"] = format(Decimal(serialized["N"]), "f")
            elif "NS" in serialized:
                serialized["NS"] = [format(Decimal(n), "f") for n in serialized["NS"]]
            return serialized

    return PlainNumbers()


# -- reads --------------------------------------------------------------------------------------------------------


def get(pk: str, sk: str) -> Item | None:
    """The item, read consistently, or None."""
    return handle().get_item(Key={"pk": pk, "sk": sk}, ConsistentRead=True).get("Item")


def query_all(**query: Any) -> list[Item]:
    """Every item a Query finds, all pages."""
    items: list[Item] = []
    while True:
        page = handle().query(**query)
        items += page.get("Items", [])
        if "LastEvaluatedKey" not in page:
            return items
        query["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def delete_all(keys: Iterable[tuple[str, str]]) -> None:
    """Delete items by (pk, sk), in batches, unconditionally."""
    with handle().batch_writer() as batch:
        for pk, sk in keys:
            batch.delete_item(Key={"pk": pk, "sk": sk})


# -- writes -------------------------------------------------------------------------------------------------------


def update_if(
    pk: str, sk: str, update: str, condition: str, names: Mapping[str, str], values: Mapping[str, Any] | None = None
) -> Item | None:
    """UpdateItem `update` if `condition` holds. None when it was applied; when the condition failed, the item as
    it was then ({} when there was none). Any other error is raised."""
    from botocore.exceptions import ClientError

    request: dict[str, Any] = {
        "Key": {"pk": pk, "sk": sk},
        "UpdateExpression": update,
        "ConditionExpression": condition,
        "ExpressionAttributeNames": dict(names),
        "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
    }
    if values:  # DynamoDB refuses an empty map
        request["ExpressionAttributeValues"] = dict(values)
    try:
        handle().update_item(**request)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != CONDITION_FAILED:
            raise
        response: Mapping[str, Any] = exc.response
        return deserialize(response.get("Item")) or {}
    return None


def add_counters(
    pk: str, sk: str, increments: Mapping[str, Number], *, only_if_exists: bool = False, ttl: int | None = None
) -> bool:
    """One atomic ADD of every increment to the item (and its `ttl` set, if given). False when `only_if_exists`
    and the item is gone: a key deleted while its request ran is not recreated by its spend."""
    names = {f"#n{i}": name for i, name in enumerate(increments)}
    values: dict[str, Any] = {f":v{i}": amount for i, amount in enumerate(increments.values())}
    update = "ADD " + ", ".join(f"#n{i} :v{i}" for i in range(len(increments)))
    if ttl is not None:
        names["#ttl"], values[":ttl"] = "ttl", ttl
        update += " SET #ttl = :ttl"
    if only_if_exists:
        return update_if(pk, sk, update, "attribute_exists(pk)", names, values) is None
    handle().update_item(
        Key={"pk": pk, "sk": sk},
        UpdateExpression=update,
        ExpressionAttributeNames=names,
        ExpressionAttributeValues=values,
    )
    return True


def add_counters_once(
    operation: str,
    pk: str,
    sk: str,
    increments: Mapping[str, Number],
    *,
    marker_ttl: int,
    only_if_exists: bool = False,
    ttl: int | None = None,
) -> bool:
    """`add_counters`, applied at most once for `operation` (a unique id the caller keeps across its retries).

    One transaction puts the marker item OP#<operation> (only if absent) and ADDs the increments: both apply or
    neither. A retry of a write that did apply (its answer was lost to a timeout) finds the marker and changes
    nothing. The ClientRequestToken makes real DynamoDB answer such a retry within 10 minutes with success
    instead; the marker covers every later retry and stores that do not honour the token (moto). Retries must
    pass the same `marker_ttl`, so the request is identical. False when `only_if_exists` and the item is gone.
    """
    names = {f"#n{i}": name for i, name in enumerate(increments)}
    values: dict[str, Any] = {f":v{i}": amount for i, amount in enumerate(increments.values())}
    update = "ADD " + ", ".join(f"#n{i} :v{i}" for i in range(len(increments)))
    if ttl is not None:
        names["#ttl"], values[":ttl"] = "ttl", ttl
        update += " SET #ttl = :ttl"
    change: dict[str, Any] = {
        "Key": {"pk": pk, "sk": sk},
        "UpdateExpression": update,
        "ExpressionAttributeNames": names,
        "ExpressionAttributeValues": values,
    }
    if only_if_exists:
        change["ConditionExpression"] = "attribute_exists(pk)"
    marker = {"pk": f"OP#{operation}", "sk": "OP", "ttl": marker_ttl}
    actions = [{"Put": {"Item": marker, "ConditionExpression": "attribute_not_exists(pk)"}}, {"Update": change}]
    try:
        transact(actions, token=hashlib.sha256(operation.encode()).hexdigest()[:36])
    except Cancelled as exc:
        # The marker's condition failed: applied before (a retry whose first answer was lost). Otherwise only
        # the item's condition failed: it is gone.
        return 0 in exc.failed
    return True


def transact(actions: list[dict[str, Any]], *, token: str | None = None) -> None:
    """TransactWriteItems of actions in resource form ({"Put": {"Item": ...}}, without TableName). A cancelled
    transaction raises Cancelled with the indexes of the actions whose condition failed, or Conflict when it met
    another write to one of its items."""
    from botocore.exceptions import ClientError

    table = handle()
    items = [{kind: dict(spec, TableName=table.name) for kind, spec in action.items()} for action in actions]
    try:
        # The resource's client takes resource-form values: the handle's serializer is registered on it.
        request: dict[str, Any] = {"TransactItems": items}
        if token is not None:  # DynamoDB answers a repeat within 10 minutes without applying it again
            request["ClientRequestToken"] = token
        table.meta.client.transact_write_items(**request)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != TRANSACTION_CANCELLED:
            raise
        reasons = exc.response.get("CancellationReasons") or []
        failed = [i for i, reason in enumerate(reasons) if reason.get("Code") == "ConditionalCheckFailed"]
        if failed:
            raise Cancelled(failed) from exc
        if any(reason.get("Code") == "TransactionConflict" for reason in reasons):
            raise Conflict() from exc
        raise
