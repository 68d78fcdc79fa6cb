"""The table's primitives (storage/table.py) against moto: `write` for one and several actions, exact numbers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from botocore.exceptions import ClientError

from anthropic_gateway.storage import spend, table
from anthropic_gateway.storage.table import Delete, Put, Update


@pytest.fixture
def handle(own_table):
    """A fresh table of its own (conftest's own_table)."""
    return own_table


def add(pk: str, sk: str, **increments) -> Update:
    return spend.add(pk, sk, increments)


def test_numbers_are_serialized_in_plain_notation():
    assert table.serialize({"n": Decimal("1E-7"), "big": Decimal("1E+3"), "i": 5}) == {
        "n": {"N": "0.0000001"},
        "big": {"N": "1000"},
        "i": {"N": "5"},
    }
    nested = table.serialize({"m": {"l": [Decimal("2.5E-8")]}})
    assert nested == {"m": {"M": {"l": {"L": [{"N": "0.000000025"}]}}}}


VALUES = [
    None, True, False, 0, -3, 10**37, Decimal("2.5"), Decimal("-0.1"), Decimal("12345678901234567890.123456789"),
    "", "text", b"\x00bytes", {"a", "b"}, {1, Decimal("0.5")}, {b"x", b"y"}, [], [1, "two", None, [Decimal("3")]],
    {}, {"m": {"n": Decimal("7"), "l": [True, {"s": "deep"}]}}, ("tuple", 1),
]  # fmt: skip


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_values_convert_as_boto3_converts_them(value):
    # The handle converts values itself rather than through boto3's resource layer: the same AttributeValues as
    # boto3's serializer (numbers in plain notation, which it writes the same for these), the same values back.
    from boto3.dynamodb.types import Binary, TypeDeserializer, TypeSerializer

    expected = TypeSerializer().serialize(value)
    assert table.serialize_value(value) == expected
    back = TypeDeserializer().deserialize(expected)
    unwrapped = back.value if isinstance(back, Binary) else {b.value for b in back} if value == {b"x", b"y"} else back
    assert table.deserialize_value(expected) == unwrapped


@pytest.mark.parametrize(
    "value",
    [1.5, float("nan"), Decimal("NaN"), Decimal("Infinity"), Decimal("1E+200"), Decimal("1." + "1" * 40), object()],
    ids=repr,
)
def test_values_dynamodb_cannot_hold_exactly_are_refused(value):
    # What check_storable relies on: a float is not exact, a number DynamoDB would round or cannot hold is refused.
    with pytest.raises((TypeError, ArithmeticError)):
        table.serialize_value(value)


def test_many_items_are_read_and_deleted_together(handle):
    keys = [("P", f"S{i:03}") for i in range(60)]
    for pk, sk in keys:
        handle.put_item(Item={"pk": pk, "sk": sk, "n": Decimal("0.5")})
    found = table.get_many([*keys[:40], ("P", "missing")])
    assert sorted(found) == keys[:40] and found[("P", "S007")] == {"pk": "P", "sk": "S007", "n": Decimal("0.5")}

    table.delete_all(keys[:55])  # three batches (25 each at most)
    assert sorted(
        item["sk"] for item in table.query_all(KeyConditionExpression="pk = :p", ExpressionAttributeValues={":p": "P"})
    ) == [sk for _, sk in keys[55:]]


def test_a_query_pages_through_every_item(handle):
    for i in range(30):
        handle.put_item(Item={"pk": "Q", "sk": f"S{i:02}", "pad": "x" * 1000})
    condition = {
        "KeyConditionExpression": "pk = :p AND begins_with(sk, :s)",
        "ExpressionAttributeValues": {":p": "Q", ":s": "S1"},
    }
    assert [item["sk"] for item in table.query_all(**condition, Limit=3)] == [f"S1{i}" for i in range(10)]
    assert len(table.query_page(**condition, Limit=3)) == 3


def test_tiny_amounts_are_stored_and_added_exactly(handle):
    # Written in exponent form (1E-7), moto could not add to them; DynamoDB itself reads both forms.
    handle.put_item(Item={"pk": "P", "sk": "S", "spend": Decimal("1E-7")})
    assert table.write([add("P", "S", spend=Decimal("1E-7"), requests=1)]) == {}
    assert table.get("P", "S") == {"pk": "P", "sk": "S", "spend": Decimal("0.0000002"), "requests": 1}

    assert table.write([Update("P", "S", "SET budget = :b", "attribute_exists(pk)", {}, {":b": Decimal("0.5")})]) == {}
    for _ in range(2):
        assert table.write([add("P", "S", budget=Decimal("3E-8"))]) == {}
    assert (table.get("P", "S") or {})["budget"] == Decimal("0.50000006")


def test_one_action_is_applied_when_its_condition_holds(handle):
    handle.put_item(Item={"pk": "P", "sk": "S", "count": 1})
    assert table.write([Update("P", "S", "ADD #c :one", "#c < :max", {"#c": "count"}, {":one": 1, ":max": 5})]) == {}
    assert table.get("P", "S") == {"pk": "P", "sk": "S", "count": 2}


def test_a_failed_condition_answers_with_the_item_as_it_was(handle):
    handle.put_item(Item={"pk": "P", "sk": "S", "count": 5, "note": "kept"})
    update = Update("P", "S", "ADD #c :one", "#c < :max", {"#c": "count"}, {":one": 1, ":max": 5})
    assert table.write([update]) == {0: {"pk": "P", "sk": "S", "count": 5, "note": "kept"}}
    assert table.get("P", "S") == {"pk": "P", "sk": "S", "count": 5, "note": "kept"}  # unchanged

    # No item at all: an empty item.
    assert table.write([Update("gone", "S", "ADD #c :one", "attribute_exists(pk)", {"#c": "count"}, {":one": 1})]) == {
        0: {}
    }
    assert table.get("gone", "S") is None
    assert table.write([Put({"pk": "P", "sk": "S"}, "attribute_not_exists(pk)")]) == {0: table.get("P", "S")}
    assert table.write([Delete("P", "S", "#c = :six", {"#c": "count"}, {":six": 6})]) == {0: table.get("P", "S")}


def test_errors_other_than_a_failed_condition_are_raised(handle):
    handle.put_item(Item={"pk": "P", "sk": "S", "name": "text"})
    with pytest.raises(ClientError) as raised:  # ADD of a number to a string attribute
        table.write([Update("P", "S", "ADD #n :one", "attribute_exists(pk)", {"#n": "name"}, {":one": 1})])
    assert raised.value.response["Error"]["Code"] == "ValidationException"


def test_several_actions_are_one_transaction_that_reports_every_failed_condition(handle):
    handle.put_item(Item={"pk": "taken", "sk": "S", "n": 1})
    new = Put({"pk": "new", "sk": "S"}, "attribute_not_exists(pk)")
    taken = Put({"pk": "taken", "sk": "S", "x": 1}, "attribute_not_exists(pk)")
    missing = Update("missing", "S", "ADD n :one", "attribute_exists(pk)", {}, {":one": 1})
    counted = add("counted", "S", n=1)

    assert table.write([new, taken, missing, counted]) == {1: {"pk": "taken", "sk": "S", "n": 1}, 2: {}}
    assert table.get("new", "S") is None and table.get("counted", "S") is None  # all or nothing

    assert table.write([new, counted, Delete("taken", "S")]) == {}
    assert table.get("new", "S") == {"pk": "new", "sk": "S"} and table.get("taken", "S") is None
    assert table.get("counted", "S") == {"pk": "counted", "sk": "S", "n": 1}


def test_stored_and_plain_convert_json_numbers_exactly():
    assert table.stored({"a": [0.1, 2]}) == {"a": [Decimal("0.1"), 2]}
    assert table.plain({"a": [Decimal("0.1"), Decimal("2")]}) == {"a": [0.1, 2]}
    table.check_storable({"fine": 1.5})
    with pytest.raises(Exception):  # noqa: B017 - decimal raises one of several errors
        table.check_storable(1e200)


def test_times_compare_as_stored_strings():
    earlier = datetime(2030, 1, 1, 23, 59, 59, 999_999, tzinfo=UTC)
    assert table.iso_seconds(earlier) == "2030-01-01T23:59:59+00:00"
    assert table.iso_seconds(earlier) < table.iso_seconds(earlier + timedelta(seconds=1))


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("10m", 600),
        ("1h", 3600),
        ("1d", 86400),
        ("30d", 30 * 86400),
        ("2w", 14 * 86400),
        ("1mo", 30 * 86400),
    ],
)
def test_durations(text, seconds):
    assert table.parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "0d", "1y", "d", "-1d", "1.5h", "1 d", "1000000d"])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        table.parse_duration(text)


def test_every_runtime_s_aws_clients_share_botocore_s_model_data(aws, monkeypatch, tmp_path):
    """Where botocore serves (here: credentials from a profile, not where Lambda puts them), each runtime has a
    botocore session of its own (credentials, SnapStart's forget), but the service models and endpoint data
    botocore reads from its files are read once per process (about 10 MB and 35 ms per session otherwise)."""
    from anthropic_gateway.aws import AwsCalls
    from anthropic_gateway.settings import get_settings

    (tmp_path / "credentials").write_text("[default]\naws_access_key_id = testing\naws_secret_access_key = testing\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    first, second = AwsCalls(get_settings()), AwsCalls(get_settings())
    one, other = first.client("dynamodb"), second.client("dynamodb")
    assert one is not other
    assert one.meta.service_model._service_description is other.meta.service_model._service_description
