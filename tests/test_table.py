"""The storage layer (table.py) against moto: conditional updates, counters, transactions, exact numbers."""

from __future__ import annotations

from decimal import Decimal

import pytest
from botocore.exceptions import ClientError

from anthropic_gateway import table


@pytest.fixture
def handle(own_table):
    """A fresh table of its own (conftest's own_table)."""
    return own_table


def test_numbers_are_serialized_in_plain_notation():
    assert table.serialize({"n": Decimal("1E-7"), "big": Decimal("1E+3"), "i": 5}) == {
        "n": {"N": "0.0000001"},
        "big": {"N": "1000"},
        "i": {"N": "5"},
    }
    nested = table.serialize({"m": {"l": [Decimal("2.5E-8")]}})
    assert nested == {"m": {"M": {"l": {"L": [{"N": "0.000000025"}]}}}}


def test_tiny_amounts_are_stored_and_added_exactly(handle):
    # Written in exponent form (1E-7), moto could not add to them; DynamoDB itself reads both forms.
    handle.put_item(Item={"pk": "P", "sk": "S", "spend": Decimal("1E-7")})
    assert table.add_counters("P", "S", {"spend": Decimal("1E-7"), "requests": 1})
    assert table.get("P", "S") == {"pk": "P", "sk": "S", "spend": Decimal("0.0000002"), "requests": 1}

    assert table.update_if("P", "S", "SET budget = :b", "attribute_exists(pk)", {}, {":b": Decimal("0.5")}) is None
    for _ in range(2):
        assert table.add_counters("P", "S", {"budget": Decimal("3E-8")})
    assert (table.get("P", "S") or {})["budget"] == Decimal("0.50000006")


def test_update_if_returns_none_when_applied(handle):
    handle.put_item(Item={"pk": "P", "sk": "S", "count": 1})
    result = table.update_if("P", "S", "ADD #c :one", "#c < :max", {"#c": "count"}, {":one": 1, ":max": 5})
    assert result is None
    assert table.get("P", "S") == {"pk": "P", "sk": "S", "count": 2}


def test_update_if_returns_the_item_as_it_was_when_the_condition_fails(handle):
    handle.put_item(Item={"pk": "P", "sk": "S", "count": 5, "note": "kept"})
    result = table.update_if("P", "S", "ADD #c :one", "#c < :max", {"#c": "count"}, {":one": 1, ":max": 5})
    assert result == {"pk": "P", "sk": "S", "count": 5, "note": "kept"}
    assert table.get("P", "S") == result  # unchanged

    # No item at all: an empty item, still not None (None means the update was applied).
    assert table.update_if("gone", "S", "ADD #c :one", "attribute_exists(pk)", {"#c": "count"}, {":one": 1}) == {}
    assert table.get("gone", "S") is None


def test_update_if_raises_errors_other_than_a_failed_condition(handle):
    handle.put_item(Item={"pk": "P", "sk": "S", "name": "text"})
    with pytest.raises(ClientError) as raised:  # ADD of a number to a string attribute
        table.update_if("P", "S", "ADD #n :one", "attribute_exists(pk)", {"#n": "name"}, {":one": 1})
    assert raised.value.response["Error"]["Code"] == "ValidationException"


def test_add_counters_only_if_exists_never_creates_the_item(handle):
    assert table.add_counters("P", "S", {"spend": Decimal("0.25")}, only_if_exists=True) is False
    assert table.get("P", "S") is None

    handle.put_item(Item={"pk": "P", "sk": "S"})
    assert table.add_counters("P", "S", {"spend": Decimal("0.25"), "requests": 1}, only_if_exists=True) is True
    assert table.add_counters("P", "S", {"spend": Decimal("0.5")}, only_if_exists=True) is True
    assert table.get("P", "S") == {"pk": "P", "sk": "S", "spend": Decimal("0.75"), "requests": 1}


def test_add_counters_creates_the_item_and_sets_its_ttl(handle):
    assert table.add_counters("P", "RATE#60", {"tokens": 40}, ttl=180)
    assert table.add_counters("P", "RATE#60", {"tokens": 2}, ttl=180)
    assert table.get("P", "RATE#60") == {"pk": "P", "sk": "RATE#60", "tokens": 42, "ttl": 180}


def test_transact_reports_which_conditions_failed(handle):
    handle.put_item(Item={"pk": "taken", "sk": "S"})
    new = {"Put": {"Item": {"pk": "new", "sk": "S"}, "ConditionExpression": "attribute_not_exists(pk)"}}
    taken = {"Put": {"Item": {"pk": "taken", "sk": "S", "x": 1}, "ConditionExpression": "attribute_not_exists(pk)"}}
    with pytest.raises(table.Cancelled) as cancelled:
        table.transact([new, taken])
    assert cancelled.value.failed == [1]
    assert table.get("new", "S") is None  # all or nothing

    table.transact([new])
    assert table.get("new", "S") == {"pk": "new", "sk": "S"}


def test_stored_and_plain_convert_json_numbers_exactly():
    assert table.stored({"a": [0.1, 2]}) == {"a": [Decimal("0.1"), 2]}
    assert table.plain({"a": [Decimal("0.1"), Decimal("2")]}) == {"a": [0.1, 2]}
    table.check_storable({"fine": 1.5})
    with pytest.raises(Exception):  # noqa: B017 - decimal raises one of several errors
        table.check_storable(1e200)
