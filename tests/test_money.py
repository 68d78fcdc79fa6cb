"""Money read from JSON exactly and written back as plain JSON numbers (the edges: key API, spend reports, CLI)."""

from __future__ import annotations

import json
import re
from decimal import Decimal

import pytest

from anthropic_gateway import money


@pytest.mark.parametrize(
    ("raw", "exact", "written"),
    [
        ("0.1", Decimal("0.1"), "0.1"),
        ("0.3", Decimal("0.3"), "0.3"),
        ("123456789.123456789", Decimal("123456789.123456789"), "123456789.123456789"),
        ("1e-7", Decimal("0.0000001"), "0.0000001"),
        ("1E+2", Decimal(100), "100"),
        ("2.50", Decimal("2.5"), "2.5"),
        ("0.10000000000000000000", Decimal("0.1"), "0.1"),  # 20 digits written, one meant: nothing is lost
        ("-0.0", Decimal(0), "0"),
        ("7", Decimal(7), "7"),
    ],
)
def test_amounts_are_read_exactly_and_written_plain(raw, exact, written):
    value = money.amount(money.loads(raw))
    assert value.as_tuple() == exact.as_tuple()  # the same digits and exponent, not merely equal
    assert money.dumps(value) == written
    assert money.loads(money.dumps(value)) == exact


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("12345678901.234567891", "at most 18 significant digits (got 20)"),
        ("1e-13", "at most 12 decimal places"),
        ("1e15", "must be less than 1000000000000000"),
        ("1e999999999", "must be less than 1000000000000000"),
        ("-0.01", "must not be negative"),
        ('"10"', "must be a number"),
        ("true", "must be a number"),
    ],
)
def test_amounts_that_would_be_rounded_or_are_not_amounts_are_refused(raw, reason):
    with pytest.raises(money.MoneyError, match=re.escape(reason)):
        money.amount(money.loads(raw))


@pytest.mark.parametrize("raw", ["NaN", "[Infinity]", '{"a": -Infinity}'])
def test_non_numbers_python_accepts_are_refused(raw):
    with pytest.raises(money.MoneyError):
        money.loads(raw)


def test_dumps_writes_what_starlette_writes_except_decimals():
    value = {"a": [1, 1.5, None, True, "é\n\u2028"], "b": {}, "c": [], "d": {"e": Decimal("1E-7")}}
    floats = {**value, "d": {"e": 0.5}}
    assert money.dumps(floats) == json.dumps(floats, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    assert money.dumps(floats, indent=2) == json.dumps(floats, ensure_ascii=False, allow_nan=False, indent=2)
    assert money.dumps(value).endswith('"d":{"e":0.0000001}}')


@pytest.mark.parametrize("value", [{"a": b"bytes"}, {1: "a"}, {"a": {1, 2}}, [float("nan")], [Decimal("NaN")]])
def test_dumps_refuses_what_json_cannot_hold(value):
    with pytest.raises((TypeError, ValueError)):
        money.dumps(value)
