"""Spend per tag: daily aggregates in DynamoDB, and the report `GET /spend/tags` serves (tag_spend_routes.py).

One item per (UTC day, tag) in the gateway table, pk=TAGSPEND#<YYYY-MM-DD> sk=<tag>, counters only changed with
DynamoDB's atomic ADD so concurrent requests (on any number of Lambda instances) all count. A report over a date
range is one Query per day. Items have no TTL: they are the spend history, and there is at most one per tag a day.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from . import keys, table
from .errors import GatewayError
from .ledger import ledger
from .table import Number
from .usage import Usage

PK_PREFIX = "TAGSPEND#"
MAX_DAYS = 366
DEFAULT_DAYS = 30  # without dates: the last 30 days, today included
_TOKENS = keys.TOKEN_COUNTERS
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def today() -> date:
    return datetime.now(UTC).date()


def record(tags: list[str], cost: Decimal, usage: Usage | None, day: date | None = None) -> None:
    """Add one request to each of its tags' counters for `day`, through the ledger (call it on the event loop)."""
    usage = usage or Usage()
    increments: dict[str, Number] = {"spend": cost, "requests": 1}
    increments.update({name: getattr(usage, name) for name in _TOKENS})
    pk = PK_PREFIX + (day or today()).isoformat()
    for tag in tags:
        ledger.add(pk, tag, increments)


def _items_of(day: date) -> list[table.Item]:
    return table.query_all(
        KeyConditionExpression="pk = :pk", ExpressionAttributeValues={":pk": PK_PREFIX + day.isoformat()}
    )


def report(start: date, end: date) -> list[dict[str, Any]]:
    """Per tag over [start, end]: LiteLLM's fields (individual_request_tag, log_count, total_spend), token sums
    and a per-day breakdown; highest spend first."""
    totals: dict[str, dict[str, Any]] = {}
    for offset in range((end - start).days + 1):
        day = start + timedelta(days=offset)
        for item in _items_of(day):
            spend, requests = Decimal(item.get("spend", 0)), int(item.get("requests", 0))
            tokens = {name: int(item.get(name, 0)) for name in _TOKENS}
            tag = totals.setdefault(
                item["sk"], {"spend": Decimal(0), "requests": 0, **dict.fromkeys(_TOKENS, 0), "daily": []}
            )
            tag["spend"] += spend
            tag["requests"] += requests
            for name, count in tokens.items():
                tag[name] += count
            tag["daily"].append(
                {
                    "date": day.isoformat(),
                    "spend": float(spend),
                    "log_count": requests,
                    **tokens,
                    "total_tokens": sum(tokens.values()),
                }
            )
    rows = [
        {
            "individual_request_tag": name,
            "log_count": tag["requests"],
            "total_spend": float(tag["spend"]),
            **{token: tag[token] for token in _TOKENS},
            "total_tokens": sum(tag[token] for token in _TOKENS),
            "daily": tag["daily"],
        }
        for name, tag in totals.items()
    ]
    return sorted(rows, key=lambda row: (-row["total_spend"], row["individual_request_tag"]))


def parse_range(start_date: str | None, end_date: str | None) -> tuple[date, date]:
    """The report's [start, end] from the query string, or a 400 saying what is wrong with it."""
    end = _parse_date("end_date", end_date) if end_date else today()
    start = _parse_date("start_date", start_date) if start_date else end - timedelta(days=DEFAULT_DAYS - 1)
    if start > end:
        raise GatewayError(400, f"start_date ({start}) is after end_date ({end}).")
    if (end - start).days + 1 > MAX_DAYS:
        raise GatewayError(400, f"The date range spans more than {MAX_DAYS} days; ask for a shorter one.")
    return start, end


def _parse_date(name: str, value: str) -> date:
    try:
        if _DATE.fullmatch(value):
            return date.fromisoformat(value)
    except ValueError:
        pass
    raise GatewayError(400, f"Invalid {name}: expected a date as YYYY-MM-DD, got {value[:40]!r}.")
