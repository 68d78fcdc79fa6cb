"""The gateway's DynamoDB table: the handle, how values are stored, and the one write primitive, `write`.

The item families beside this module (key records, rates, budgets, spend, batches, holds, and the organisation's:
teams, members, users, tags, key links) build their own keys, expressions and conditions, and write only through
`write` (and `delete_all`):
  - one action is one UpdateItem, PutItem or DeleteItem; several are one TransactWriteItems (all or none);
  - a failed condition is an answer, not an exception: the actions whose condition failed, each with its item as
    it was (ReturnValuesOnConditionCheckFailure=ALL_OLD), so the caller can tell why without another read.

Every call is bounded (aws.config(): short timeouts, few attempts).

Numbers are exact Decimal both ways, and go on the wire in plain notation (0.0000001, never 1E-7): DynamoDB reads
both, but moto's UpdateItem arithmetic reads only the plain form, and tests run against moto. Times that conditions
compare are fixed-width ISO strings (`iso_seconds`); periods are LiteLLM's duration strings (`parse_duration`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from .. import aws
from ..settings import get_settings

if TYPE_CHECKING:
    from boto3.dynamodb.types import TypeSerializer
    from mypy_boto3_dynamodb.service_resource import Table

Item = dict[str, Any]  # an item in boto3 resource form: numbers as Decimal, sets as set
Number = int | Decimal

_SERIALIZE_EVENT, _SERIALIZE_ID = "before-parameter-build.dynamodb", "dynamodb-attr-value-input"
# LiteLLM's duration strings: 30s, 10m, 1h, 1d, 2w, 1mo (a month counts as 30 days).
_DURATION = re.compile(r"(\d{1,6})(s|m|h|d|w|mo)")
_BATCH_GET_ATTEMPTS = 3
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "mo": 30 * 86400}


class Conflict(Exception):
    """Another write reached one of the items at the same moment, or it changed since it was read: read again."""


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
    """A low-level item (as in a failed condition's `Item`) in resource form."""
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


def iso_seconds(moment: datetime) -> str:
    """Fixed-width UTC time: strings DynamoDB conditions can compare (budget_reset_at > :now)."""
    return moment.astimezone(UTC).replace(microsecond=0).isoformat()


def parse_duration(text: str) -> timedelta:
    """`30s`, `1h`, `30d`, `1mo`... as a timedelta; ValueError for anything else (and for zero)."""
    match = _DURATION.fullmatch(text.strip())
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"expected a duration like 30s, 10m, 1h, 1d, 2w or 1mo, got {text[:40]!r}")
    return timedelta(seconds=int(match.group(1)) * _UNIT_SECONDS[match.group(2)])


# -- reads --------------------------------------------------------------------------------------------------------


def get(pk: str, sk: str) -> Item | None:
    """The item, read consistently, or None."""
    return handle().get_item(Key={"pk": pk, "sk": sk}, ConsistentRead=True).get("Item")


def get_many(keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Item]:
    """The items of `keys` (at most 100) that exist, by (pk, sk), read consistently in one BatchGetItem (and one
    more for each part DynamoDB leaves unprocessed, at most `_BATCH_GET_ATTEMPTS` in all)."""
    client, name = handle().meta.client, handle().name
    found: dict[tuple[str, str], Item] = {}
    request: Any = {name: {"Keys": [{"pk": pk, "sk": sk} for pk, sk in dict.fromkeys(keys)], "ConsistentRead": True}}
    for _ in range(_BATCH_GET_ATTEMPTS):
        # The resource's client takes and answers resource-form values (the handle's serializer is registered on it).
        answer: Any = client.batch_get_item(RequestItems=request)
        for item in answer.get("Responses", {}).get(name, []):
            found[(str(item["pk"]), str(item["sk"]))] = item
        request = answer.get("UnprocessedKeys") or None
        if not request:
            return found
    raise Conflict()


def query_all(**query: Any) -> list[Item]:
    """Every item a Query finds, all pages."""
    items: list[Item] = []
    while True:
        page = handle().query(**query)
        items += page.get("Items", [])
        if "LastEvaluatedKey" not in page:
            return items
        query["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def query_page(**query: Any) -> list[Item]:
    """The items of a Query's first page (at most its `Limit`)."""
    return list(handle().query(**query).get("Items", []))


# -- writes -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Update:
    """UpdateItem of (pk, sk): `expression`, if `condition` (None: always)."""

    pk: str
    sk: str
    expression: str
    condition: str | None = None
    names: Mapping[str, str] = field(default_factory=dict)
    values: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Put:
    """PutItem of `item` (with its pk and sk), if `condition` (None: always)."""

    item: Item
    condition: str | None = None


@dataclass(frozen=True)
class Delete:
    """DeleteItem of (pk, sk), if `condition` (None: always)."""

    pk: str
    sk: str
    condition: str | None = None
    names: Mapping[str, str] = field(default_factory=dict)
    values: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ConditionCheck:
    """A condition on (pk, sk) that the other actions of a transaction depend on; writes nothing."""

    pk: str
    sk: str
    condition: str
    names: Mapping[str, str] = field(default_factory=dict)
    values: Mapping[str, Any] = field(default_factory=dict)


Action = Update | Put | Delete | ConditionCheck
Failed = dict[int, Item]  # index of an action whose condition failed -> its item as it was ({}: there was none)


def write(actions: Sequence[Action], *, token: str | None = None) -> Failed:
    """Apply `actions`, all or none: one single-item call for one action (a ConditionCheck only goes in a
    transaction), one TransactWriteItems for several.

    Returns {} when they were applied; otherwise the actions whose condition failed (nothing was applied). Raises
    Conflict when the write met another write to one of its items (DynamoDB cancels rather than waits), and the
    ClientError for anything else. `token` (ClientRequestToken, transactions only) makes DynamoDB answer a repeat
    of the same request within 10 minutes with success instead of applying it again.
    """
    from botocore.exceptions import ClientError

    if not actions:
        return {}
    try:
        if len(actions) == 1 and not isinstance(actions[0], ConditionCheck):
            _write_one(actions[0])
        else:
            _transact(actions, token)
    except ClientError as exc:
        response: Mapping[str, Any] = exc.response
        code = response.get("Error", {}).get("Code")
        if code == "ConditionalCheckFailedException":
            return {0: deserialize(response.get("Item")) or {}}
        if code == "TransactionConflictException":
            raise Conflict() from exc
        if code != "TransactionCanceledException":
            raise
        reasons = response.get("CancellationReasons") or []
        failed = {
            index: deserialize(reason.get("Item")) or {}
            for index, reason in enumerate(reasons)
            if reason.get("Code") == "ConditionalCheckFailed"
        }
        if failed:
            return failed
        if any(reason.get("Code") == "TransactionConflict" for reason in reasons):
            raise Conflict() from exc
        raise
    return {}


def delete_all(keys: Iterable[tuple[str, str]]) -> None:
    """Delete items by (pk, sk), in batches, unconditionally (housekeeping: nothing depends on when)."""
    with handle().batch_writer() as batch:
        for pk, sk in keys:
            batch.delete_item(Key={"pk": pk, "sk": sk})


def _parameters(action: Action) -> dict[str, Any]:
    """The action's parameters in resource form (as UpdateItem, PutItem or DeleteItem take them)."""
    request: dict[str, Any]
    if isinstance(action, Put):
        request = {"Item": action.item}
    else:
        request = {"Key": {"pk": action.pk, "sk": action.sk}}
        if action.names:  # DynamoDB refuses empty maps
            request["ExpressionAttributeNames"] = dict(action.names)
        if action.values:
            request["ExpressionAttributeValues"] = dict(action.values)
    if isinstance(action, Update):
        request["UpdateExpression"] = action.expression
    if action.condition is not None:
        request["ConditionExpression"] = action.condition
        request["ReturnValuesOnConditionCheckFailure"] = "ALL_OLD"
    return request


def _write_one(action: Update | Put | Delete) -> None:
    table = handle()
    if isinstance(action, Update):
        table.update_item(**_parameters(action))
    elif isinstance(action, Put):
        table.put_item(**_parameters(action))
    else:
        table.delete_item(**_parameters(action))


def _transact(actions: Sequence[Action], token: str | None) -> None:
    table = handle()
    items: list[dict[str, Any]] = []
    for action in actions:
        request = {**_parameters(action), "TableName": table.name}
        if isinstance(action, Update):
            items.append({"Update": request})
        elif isinstance(action, Put):
            items.append({"Put": request})
        elif isinstance(action, Delete):
            items.append({"Delete": request})
        else:
            items.append({"ConditionCheck": request})
    parameters: dict[str, Any] = {"TransactItems": items}
    if token is not None:
        parameters["ClientRequestToken"] = token
    # The resource's client takes resource-form values: the handle's serializer is registered on it.
    table.meta.client.transact_write_items(**parameters)
