"""Spend counters, written exactly once; and spend per tag and UTC day.

Counters (spend, total_spend, budget_headroom, requests, the token counts) only ever grow by ADD, which commutes:
concurrent requests on any number of instances all count. A retried ADD would count twice, so a write that adds
counters goes with an operation marker: the item OP#<operation id>/OP, put only if absent, in the same transaction.
A retry of a write that did apply (its answer was lost to a timeout) finds its marker and changes nothing. The
operation id is fixed before the first attempt and every retry sends the same request (ClientRequestToken: real
DynamoDB answers a repeat within 10 minutes with success; the marker covers later retries, and moto).

Spend per day: one item per (UTC day, tag), (UTC day, team) and (UTC day, user), with the same counters:
pk=TAGSPEND#<YYYY-MM-DD> sk=<tag>, pk=TEAMSPEND#<YYYY-MM-DD> sk=<team_id>, pk=USERSPEND#<YYYY-MM-DD> sk=<user_id>.
No TTL: they are the spend history, and there is at most one per tag, team or user a day. A report over a date
range is one Query a day.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import date
from typing import Any

from . import table
from .table import Number

TOKEN_COUNTERS = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
# How long an operation marker stays: far longer than any retry of its write can come (DynamoDB's own
# ClientRequestToken window is 10 minutes; a frozen Lambda instance can retry hours later).
OPERATION_MARKER_SECONDS = 7 * 86400
TAG_DAY_PREFIX = "TAGSPEND#"
TEAM_DAY_PREFIX = "TEAMSPEND#"
USER_DAY_PREFIX = "USERSPEND#"


def marker(operation: str, ttl: int) -> table.Put:
    """The operation marker: its condition fails when the operation was applied before."""
    return table.Put({"pk": f"OP#{operation}", "sk": "OP", "ttl": ttl}, condition="attribute_not_exists(pk)")


def request_token(operation: str) -> str:
    """A ClientRequestToken for one request of `operation` (at most 36 characters)."""
    return hashlib.sha256(operation.encode()).hexdigest()[:36]


def add(
    pk: str, sk: str, increments: Mapping[str, Number], *, condition: str | None = None, ttl: int | None = None
) -> table.Update:
    """One atomic ADD of every increment to the item (and its `ttl` set, if given), if `condition`."""
    names = {f"#n{i}": name for i, name in enumerate(increments)}
    values: dict[str, Any] = {f":v{i}": amount for i, amount in enumerate(increments.values())}
    expression = "ADD " + ", ".join(f"#n{i} :v{i}" for i in range(len(increments)))
    if ttl is not None:
        names["#ttl"], values[":ttl"] = "ttl", ttl
        expression += " SET #ttl = :ttl"
    return table.Update(pk, sk, expression, condition, names, values)


def day_item(prefix: str, day: date, name: str) -> tuple[str, str]:
    """The (pk, sk) of the counters of `name` (a tag, team id or user id: `prefix` says which) for `day`."""
    return prefix + day.isoformat(), name


def day_items(prefix: str, day: date) -> list[table.Item]:
    """Every tag's (team's, user's: `prefix`) counters for `day`."""
    return table.query_all(
        KeyConditionExpression="pk = :pk", ExpressionAttributeValues={":pk": prefix + day.isoformat()}
    )
