"""Spend per tag: what each request adds to its tags' daily counters, and LiteLLM's tag spend report over them.

The counters are one item per (UTC day, tag) in the gateway table (storage/spend.py), only ever changed with
DynamoDB's atomic ADD, through the ledger, so concurrent requests on any number of Lambda instances all count,
each once. A report over a date range is one Query per day. The route is `GET /spend/tags` (spend_routes.py).
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from . import ledger
from .errors import GatewayError
from .storage import spend
from .storage.table import Number
from .usage import Usage

MAX_DAYS = 366
DEFAULT_DAYS = 30  # without dates: the last 30 days, today included
_TOKENS = spend.TOKEN_COUNTERS
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def today() -> date:
    return datetime.now(UTC).date()


def record(tags: list[str], cost: Decimal, usage: Usage | None, day: date | None = None) -> None:
    """Add one request to each of its tags' counters for `day`, through the ledger (call it on the event loop)."""
    usage = usage or Usage()
    increments: dict[str, Number] = {"spend": cost, "requests": 1}
    increments.update({name: getattr(usage, name) for name in _TOKENS})
    for tag in tags:
        ledger.add(*spend.tag_day(day or today(), tag), increments)


def report(start: date, end: date) -> list[dict[str, Any]]:
    """Per tag over [start, end]: LiteLLM's fields (individual_request_tag, log_count, total_spend), token sums
    and a per-day breakdown; highest spend first. Money as exact Decimal."""
    totals: dict[str, dict[str, Any]] = {}
    for offset in range((end - start).days + 1):
        day = start + timedelta(days=offset)
        for item in spend.tag_days(day):
            spent, requests = Decimal(item.get("spend", 0)), int(item.get("requests", 0))
            tokens = {name: int(item.get(name, 0)) for name in _TOKENS}
            tag = totals.setdefault(
                item["sk"], {"spend": Decimal(0), "requests": 0, **dict.fromkeys(_TOKENS, 0), "daily": []}
            )
            tag["spend"] += spent
            tag["requests"] += requests
            for name, count in tokens.items():
                tag[name] += count
            tag["daily"].append(
                {
                    "date": day.isoformat(),
                    "spend": spent,
                    "log_count": requests,
                    **tokens,
                    "total_tokens": sum(tokens.values()),
                }
            )
    rows = [
        {
            "individual_request_tag": name,
            "log_count": tag["requests"],
            "total_spend": tag["spend"],
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
