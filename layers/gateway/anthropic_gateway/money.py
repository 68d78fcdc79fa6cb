"""Money on the wire: JSON numbers read as exact `Decimal`, and `Decimal` written back as plain JSON numbers.

Money is Decimal from the JSON a client sends to DynamoDB and back. Python's json module and pydantic read a JSON
number as a binary float (`0.1` becomes 0.1000000000000000055..., `123456789.123456789` becomes 123456789.12345679)
and write a Decimal as a string or in exponent notation (`1E-7`), so every edge that reads or writes an amount
(the key API, the spend reports, the CLI) goes through here: `loads` and `amount` on the way in, `dumps` on the
way out (the admin API's answers through money_fields.py). No pydantic here: the pass-through's policy reads it.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

# An amount is a whole multiple of 1e-12 USD below 1e15 USD, written with at most 18 significant digits.
# - 12 decimal places: the digits of every cost end above them (pricing.json's prices per MTok have at most 3
#   decimals, so per token 1e-9, halved for batches), so spend, reservations and budgets share one grid.
# - Below 1e15 with that grid, any sum or difference of amounts (`max_budget - spend - reserved`) needs at most 27
#   digits: Python's default decimal context computes it exactly (it has 28 and rounds silently past them), and
#   DynamoDB (38) too. Nothing rounds a budget anywhere, so a refusal here is the only place a digit can be lost.
# - 18 significant digits: what a person means by an amount (123456789.123456789 is 18; a float printed in full
#   is at most 17). A value with more (20 digits) is refused with a 400 rather than stored with digits nobody
#   meant, or silently cut.
MAX_SIGNIFICANT_DIGITS = 18
MAX_DECIMAL_PLACES = 12
MAX_AMOUNT = Decimal(10) ** 15


class MoneyError(ValueError):
    """A value that is not an exact amount of money; the message says why, for a 400 that names the field."""


def _refuse_constant(name: str) -> Any:
    raise MoneyError(f"{name} is not a number")


def loads(raw: bytes | str) -> Any:
    """JSON as Python values, every number with a fraction or exponent as the exact Decimal written.

    Integers stay int. NaN and Infinity (which Python's json accepts and JSON does not) raise MoneyError; any other
    malformed JSON raises ValueError (json.JSONDecodeError), too-deep nesting RecursionError.
    """
    return json.loads(raw, parse_float=Decimal, parse_constant=_refuse_constant)


def amount(value: object) -> Decimal:
    """`value` (an int, or a Decimal from `loads`) as an amount of money, exactly; MoneyError if it is not one.

    The Decimal returned is canonical: no trailing fractional zeros and no positive exponent (`2.50` -> 2.5,
    `1E+2` -> 100), so what is stored and answered is the same whatever form the client wrote it in.
    """
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        raise MoneyError("must be a number")
    number = Decimal(value)
    if not number.is_finite():
        raise MoneyError("must be a finite number")
    if number < 0:
        raise MoneyError("must not be negative")
    if number >= MAX_AMOUNT:
        raise MoneyError(f"must be less than {plain(MAX_AMOUNT)}")
    if number == 0:
        return Decimal(0)
    _, digits, exponent = number.as_tuple()
    assert isinstance(exponent, int)  # finite, checked above
    while exponent < 0 and digits[-1] == 0:  # trailing fractional zeros carry no value
        digits, exponent = digits[:-1], exponent + 1
    if exponent > 0:  # 1E+2: write the integer's zeros
        digits, exponent = digits + (0,) * exponent, 0
    if -exponent > MAX_DECIMAL_PLACES:
        raise MoneyError(f"at most {MAX_DECIMAL_PLACES} decimal places")
    significant = len(digits) - next(index for index, digit in enumerate(digits) if digit)
    if significant > MAX_SIGNIFICANT_DIGITS:
        raise MoneyError(f"at most {MAX_SIGNIFICANT_DIGITS} significant digits (got {significant})")
    return Decimal((0, digits, exponent))


def plain(value: Decimal) -> str:
    """A finite Decimal as a JSON number in positional notation: 0.0000001, never 1E-7."""
    return format(value, "f")


def dumps(value: Any, *, indent: int | None = None, ensure_ascii: bool = False) -> str:
    """`value` as JSON like `json.dumps(value, indent=..., ensure_ascii=..., allow_nan=False)`, and Decimals as
    plain numbers with every digit they have (no float in between). Compact without `indent`, as Starlette writes.

    TypeError for a value JSON cannot hold (bytes, sets, ...), ValueError for NaN and infinities.
    """
    writer = _Writer(indent, ensure_ascii)
    writer.write(value, 0)
    return "".join(writer.parts)


class _Writer:
    def __init__(self, indent: int | None, ensure_ascii: bool) -> None:
        self.indent, self.ensure_ascii = indent, ensure_ascii
        self.parts: list[str] = []

    def write(self, value: Any, level: int) -> None:
        if isinstance(value, Decimal):
            if not value.is_finite():
                raise ValueError(f"{value} is not a JSON number")
            self.parts.append(plain(value))
        elif isinstance(value, dict):
            for key in value:
                if not isinstance(key, str):
                    raise TypeError(f"JSON object keys are strings, not {type(key).__name__}")
            self._container("{", "}", list(value.items()), level, pairs=True)
        elif isinstance(value, list | tuple):
            self._container("[", "]", list(value), level, pairs=False)
        elif value is None or isinstance(value, str | int | float):  # bool is an int
            self.parts.append(json.dumps(value, ensure_ascii=self.ensure_ascii, allow_nan=False))
        else:
            raise TypeError(f"{type(value).__name__} is not JSON serializable")

    def _container(self, opening: str, closing: str, items: list[Any], level: int, *, pairs: bool) -> None:
        if not items:
            self.parts.append(opening + closing)
            return
        inner = "" if self.indent is None else "\n" + " " * (self.indent * (level + 1))
        self.parts.append(opening + inner)
        for index, item in enumerate(items):
            if index:
                self.parts.append("," + inner)
            if pairs:
                key, item = item
                colon = ":" if self.indent is None else ": "
                self.parts.append(json.dumps(key, ensure_ascii=self.ensure_ascii) + colon)
            self.write(item, level + 1)
        self.parts.append(("" if self.indent is None else "\n" + " " * (self.indent * level)) + closing)
