"""The gateway's DynamoDB table: the handle, how values are stored, and the one write primitive, `write`.

The item families beside this module (key records, rates, budgets, spend, batches, holds, and the organisation's:
teams, members, users, tags, key links) build their own keys, expressions and conditions, and write only through
`write` (and `delete_all`):
  - one action is one UpdateItem, PutItem or DeleteItem; several are one TransactWriteItems (all or none);
  - a failed condition is an answer, not an exception: the actions whose condition failed, each with its item as
    it was (ReturnValuesOnConditionCheckFailure=ALL_OLD), so the caller can tell why without another read.

The handle (`Table`) is a low-level DynamoDB client of the runtime's (aws.py: the gateway's own, aws_client.py, or
botocore's, which take and answer the same; every call bounded: short timeouts, few attempts), made when the
runtime starts and installed here; items go in and out in python form, converted here (`serialize`,
`deserialize`) rather than by boto3's resource layer, whose import and setup were a tenth of the streaming door's
start (issue 21). Key and filter conditions are expression
strings with `:values`, as DynamoDB takes them.

Numbers are exact Decimal both ways, and go on the wire in plain notation (0.0000001, never 1E-7): DynamoDB reads
both, but moto's UpdateItem arithmetic reads only the plain form, and tests run against moto. Times that conditions
compare are fixed-width ISO strings (`iso_seconds`); periods are LiteLLM's duration strings (`parse_duration`).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Clamped, Context, Decimal, Inexact, Overflow, Rounded, Underflow
from typing import Any

from .. import aws
from ..settings import get_settings

Item = dict[str, Any]  # an item in python form: numbers as Decimal, sets as set
Number = int | Decimal

# LiteLLM's duration strings: 30s, 10m, 1h, 1d, 2w, 1mo (a month counts as 30 days).
_DURATION = re.compile(r"(\d{1,6})(s|m|h|d|w|mo)")
_BATCH_GET_ATTEMPTS = 3
_BATCH_WRITE_SIZE = 25  # BatchWriteItem's limit
_BATCH_WRITE_ATTEMPTS = 5
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "mo": 30 * 86400}
# What DynamoDB can hold exactly (38 digits, exponents -130..125); anything it would round is refused, as boto3 does.
_DYNAMODB_NUMBERS = Context(Emin=-128, Emax=126, prec=38, traps=[Clamped, Overflow, Inexact, Rounded, Underflow])
# The parameters and answer fields of the calls made through `Table` that hold items, keys or values.
_VALUES_IN = ("Key", "Item", "ExclusiveStartKey")
_VALUES_OUT = ("Item", "Attributes", "LastEvaluatedKey")


class Conflict(Exception):
    """Another write reached one of the items at the same moment, or it changed since it was read: read again."""


# -- the handle ---------------------------------------------------------------------------------------------------


class Table:
    """The gateway table: a low-level DynamoDB client (aws.py) and the table's name. Its calls take and answer
    items, keys and expression values in python form (numbers as Decimal) and convert them to and from DynamoDB's
    AttributeValues (`serialize`, `deserialize`); the table's name is added to each request."""

    def __init__(self, client: Any, name: str) -> None:
        self.client, self.name = client, name

    def get_item(self, **request: Any) -> dict[str, Any]:
        return self._call(self.client.get_item, request)

    def put_item(self, **request: Any) -> dict[str, Any]:
        return self._call(self.client.put_item, request)

    def update_item(self, **request: Any) -> dict[str, Any]:
        return self._call(self.client.update_item, request)

    def delete_item(self, **request: Any) -> dict[str, Any]:
        return self._call(self.client.delete_item, request)

    def query(self, **request: Any) -> dict[str, Any]:
        """A Query's page: `Items` and, when there are more, `LastEvaluatedKey`."""
        answer = self._call(self.client.query, request)
        answer["Items"] = [deserialize_item(item) for item in answer.get("Items", [])]
        return answer

    def close(self) -> None:
        """Close the client's pooled connections (the handle still works: a call opens a new one)."""
        self.client.close()

    def delete(self) -> None:
        """Delete the table itself (tests' tables of their own)."""
        self.client.delete_table(TableName=self.name)

    def _call(self, operation: Any, request: Mapping[str, Any]) -> dict[str, Any]:
        answer: dict[str, Any] = dict(operation(TableName=self.name, **wire_request(request)))
        for name in _VALUES_OUT:
            if name in answer:
                answer[name] = deserialize_item(answer[name])
        return answer


_installed: Table | None = None
_installing = threading.Lock()


def handle() -> Table:
    """The gateway table: the handle the runtime installed at its start (`install`), else (code run outside a
    started runtime: tools, tests) one made now from the process's settings, and installed."""
    global _installed
    current = _installed
    if current is None:
        with _installing:
            if _installed is None:
                settings = get_settings()
                _installed = open_table(settings.table_name, aws.AwsCalls(settings))
            current = _installed
    return current


def install(table: Table | None) -> Table | None:
    """Make `table` the one `handle()` returns (None: the next call makes one); returns the one it replaces."""
    global _installed
    with _installing:
        replaced, _installed = _installed, table
    return replaced


def open_table(name: str, calls: aws.AwsCalls) -> Table:
    """Blocking: a handle on table `name` over a new DynamoDB client of `calls`, bounded by its config."""
    return Table(calls.client("dynamodb"), name)


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
    """An item (or a key, or expression values) in python form as DynamoDB's AttributeValues."""
    return {name: serialize_value(value) for name, value in item.items()}


def serialize_value(value: Any) -> dict[str, Any]:
    """One python value as an AttributeValue, as boto3's TypeSerializer makes it, except that numbers are written
    in plain notation. Floats are refused (TypeError): they are not exact; so are numbers DynamoDB would round."""
    if value is None:
        return {"NULL": True}
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, (int, Decimal)):
        return {"N": _number(value)}
    if isinstance(value, str):
        return {"S": value}
    if isinstance(value, (bytes, bytearray)):
        return {"B": value}
    if isinstance(value, Set):
        if all(isinstance(v, (int, Decimal)) and not isinstance(v, bool) for v in value):
            return {"NS": [_number(v) for v in value]}
        if all(isinstance(v, str) for v in value):
            return {"SS": list(value)}
        if all(isinstance(v, (bytes, bytearray)) for v in value):
            return {"BS": list(value)}
    elif isinstance(value, Mapping):
        return {"M": {k: serialize_value(v) for k, v in value.items()}}
    elif isinstance(value, (list, tuple)):
        return {"L": [serialize_value(v) for v in value]}
    if isinstance(value, float):
        raise TypeError("Float types are not supported. Use Decimal types instead.")
    raise TypeError(f"Unsupported type {type(value)} for value {value!r}")


def _number(value: int | Decimal) -> str:
    number = _DYNAMODB_NUMBERS.create_decimal(value)
    if not number.is_finite():
        raise TypeError("Infinity and NaN not supported")
    return format(number, "f")


def deserialize(item: Mapping[str, Any] | None) -> Item | None:
    """A low-level item (as in a failed condition's `Item`) in python form; None stays None."""
    return None if item is None else deserialize_item(item)


def deserialize_item(item: Mapping[str, Any]) -> Item:
    return {name: deserialize_value(value) for name, value in item.items()}


def deserialize_value(value: Mapping[str, Any]) -> Any:
    """One AttributeValue in python form, as boto3's TypeDeserializer makes it (binary as bytes)."""
    ((kind, data),) = value.items()
    match kind:
        case "S" | "B" | "BOOL":
            return data
        case "N":
            return _DYNAMODB_NUMBERS.create_decimal(data)
        case "NULL":
            return None
        case "M":
            return {k: deserialize_value(v) for k, v in data.items()}
        case "L":
            return [deserialize_value(v) for v in data]
        case "SS" | "BS":
            return set(data)
        case "NS":
            return {_DYNAMODB_NUMBERS.create_decimal(n) for n in data}
    raise TypeError(f"DynamoDB type {kind} is not supported")


def wire_request(request: Mapping[str, Any]) -> dict[str, Any]:
    """A request's parameters with their items, keys and expression values as AttributeValues."""
    wire = dict(request)
    for name in _VALUES_IN:
        if name in wire:
            wire[name] = serialize(wire[name])
    if "ExpressionAttributeValues" in wire:
        wire["ExpressionAttributeValues"] = serialize(wire["ExpressionAttributeValues"])
    return wire


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
    table = handle()
    found: dict[tuple[str, str], Item] = {}
    wire_keys = [serialize({"pk": pk, "sk": sk}) for pk, sk in dict.fromkeys(keys)]
    request: Any = {table.name: {"Keys": wire_keys, "ConsistentRead": True}}
    for _ in range(_BATCH_GET_ATTEMPTS):
        answer: Any = table.client.batch_get_item(RequestItems=request)
        for wire_item in answer.get("Responses", {}).get(table.name, []):
            item = deserialize_item(wire_item)
            found[(str(item["pk"]), str(item["sk"]))] = item
        request = answer.get("UnprocessedKeys") or None  # AttributeValues already: sent back as they are
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
    """Delete items by (pk, sk), in batches of 25, unconditionally (housekeeping: nothing depends on when). What
    DynamoDB leaves unprocessed is sent again, up to `_BATCH_WRITE_ATTEMPTS` times a batch (then Conflict)."""
    table = handle()
    requests = [{"DeleteRequest": {"Key": serialize({"pk": pk, "sk": sk})}} for pk, sk in dict.fromkeys(keys)]
    for start in range(0, len(requests), _BATCH_WRITE_SIZE):
        pending: Any = {table.name: requests[start : start + _BATCH_WRITE_SIZE]}
        for _ in range(_BATCH_WRITE_ATTEMPTS):
            pending = table.client.batch_write_item(RequestItems=pending).get("UnprocessedItems") or None
            if not pending:
                break
        else:
            raise Conflict()


def _parameters(action: Action) -> dict[str, Any]:
    """The action's parameters in python form (as `Table` takes them for UpdateItem, PutItem or DeleteItem)."""
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
        request = {**wire_request(_parameters(action)), "TableName": table.name}
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
    table.client.transact_write_items(**parameters)
