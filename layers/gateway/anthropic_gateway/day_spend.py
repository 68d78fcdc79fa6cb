"""Spend per UTC day: what each request adds to the day items of its tags, its team and its user, and the rows the
reports are built from (`/spend/tags` and its totals: tag_spend.py; `/spend/teams`, `/spend/users`: org_spend.py).

Recorded at settle (accounting.py) for every request an upstream had (`Exchange.forwarded`: `requests` means the
same here as on keys; refusals by the gateway count nowhere) and for any request with usage. Each item's counters
only ever grow by DynamoDB's atomic ADD, through the ledger: it sums them in memory and writes each item once per
flush, exactly once (ledger.py). No DynamoDB call on the request path; concurrent requests on any number of
instances all count, each once. A report over a date range is one Query a day (storage/spend.py), over at most
MAX_DAYS days.

A request with several tags counts under each of them, so tag rows do not add up: its first tag's item also
carries the request once, in `distinct_*` counters, whose sum over a day's tag items counts each tagged request
once (`distinct_totals`). A request has one team and one user at most, so team rows and user rows add up.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from .errors import GatewayError
from .exchange import Exchange
from .ledger import Ledger
from .storage import spend
from .storage.spend import TAG_DAY_PREFIX, TEAM_DAY_PREFIX, USER_DAY_PREFIX
from .storage.table import Item, Number
from .usage import Usage

MAX_DAYS = 366
DEFAULT_DAYS = 30  # without dates: the last 30 days, today included
TOKENS = spend.TOKEN_COUNTERS
DISTINCT = "distinct_"  # the counters a request adds once, on its first tag's item
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def today() -> date:
    return datetime.now(UTC).date()


# -- recording ------------------------------------------------------------------------------------------------------


def counters(cost: Decimal, usage: Usage | None, *, forwarded: bool) -> dict[str, Number]:
    """What one request adds to each of its day items (zeros left out)."""
    increments: dict[str, Number] = {"spend": cost, "requests": int(forwarded)}
    if usage is not None:
        increments.update({name: getattr(usage, name) for name in TOKENS})
    return {name: amount for name, amount in increments.items() if amount}


def record(ledger: Ledger, exchange: Exchange, cost: Decimal) -> None:
    """Add the request to the day items of its tags, team and user, through the runtime's `ledger` (call it on the
    event loop, once per request: settle does)."""
    key = exchange.principal.record if exchange.principal else None
    if not (exchange.tags or (key and (key.team_id or key.user_id))):
        return  # nothing to add it to
    if not (exchange.forwarded or exchange.usage):
        return  # refused by the gateway: counted nowhere
    add(
        ledger,
        counters(cost, exchange.usage, forwarded=exchange.forwarded),
        tags=exchange.tags,
        team_id=key.team_id if key else None,
        user_id=key.user_id if key else None,
    )


def add(
    ledger: Ledger,
    increments: dict[str, Number],
    *,
    tags: Sequence[str] = (),
    team_id: str | None = None,
    user_id: str | None = None,
    day: date | None = None,
) -> None:
    """Queue one request's `increments` on the items of its tags (the first also gets them as `distinct_*`), team
    and user for `day` (today, UTC), in the ledger."""
    if not increments:
        return
    day = day or today()
    for index, tag in enumerate(tags):
        once = {DISTINCT + name: amount for name, amount in increments.items()} if index == 0 else {}
        ledger.add(*spend.day_item(TAG_DAY_PREFIX, day, tag), {**increments, **once})
    if team_id:
        ledger.add(*spend.day_item(TEAM_DAY_PREFIX, day, team_id), increments)
    if user_id:
        ledger.add(*spend.day_item(USER_DAY_PREFIX, day, user_id), increments)


# -- reporting ------------------------------------------------------------------------------------------------------


def rows(prefix: str, start: date, end: date) -> list[dict[str, Any]]:
    """Per tag, team or user (`prefix`) over [start, end]: `name`, `log_count`, `total_spend`, the token sums and
    `total_tokens`, and `daily` (the days it had requests, oldest first); highest spend first, then by name. Money
    as exact Decimal."""
    daily: dict[str, list[dict[str, Any]]] = {}
    for day in _days(start, end):
        for item in spend.day_items(prefix, day):
            daily.setdefault(str(item["sk"]), []).append(day_row(day, item))
    found = [{"name": name, **summed(days), "daily": days} for name, days in daily.items()]
    return sorted(found, key=lambda row: (-row["total_spend"], row["name"]))


def distinct_totals(start: date, end: date) -> dict[str, Any]:
    """The tagged requests over [start, end], each counted once however many tags it carries: the sums and
    `daily`, as a row of `rows` has them."""
    days = []
    for day in _days(start, end):
        items = spend.day_items(TAG_DAY_PREFIX, day)
        once = day_row(day, _sum_items(items, DISTINCT))
        if once["log_count"] or once["spend"] or once["total_tokens"]:
            days.append(once)
    return {**summed(days), "daily": days}


def day_row(day: date, item: Item, prefix: str = "") -> dict[str, Any]:
    """One day's counters (those named `prefix` + counter) as a report writes them."""
    tokens = {name: int(item.get(prefix + name, 0)) for name in TOKENS}
    return {
        "date": day.isoformat(),
        "spend": Decimal(item.get(prefix + "spend", 0)),
        "log_count": int(item.get(prefix + "requests", 0)),
        **tokens,
        "total_tokens": sum(tokens.values()),
    }


def summed(days: list[dict[str, Any]]) -> dict[str, Any]:
    """The sums of day rows, with a row's names (`log_count`, `total_spend`, tokens, `total_tokens`)."""
    totals: dict[str, Any] = {
        "log_count": sum(day["log_count"] for day in days),
        "total_spend": sum((day["spend"] for day in days), Decimal(0)),
    }
    totals.update({name: sum(day[name] for day in days) for name in (*TOKENS, "total_tokens")})
    return totals


def _sum_items(items: list[Item], prefix: str) -> Item:
    total: Item = {}
    for item in items:
        for name in ("spend", "requests", *TOKENS):
            if prefix + name in item:
                total[name] = total.get(name, 0) + item[prefix + name]
    return total


def _days(start: date, end: date) -> list[date]:
    return [start + timedelta(days=offset) for offset in range((end - start).days + 1)]


def parse_range(start_date: str | None, end_date: str | None) -> tuple[date, date]:
    """A report's [start, end] from the query string, or a 400 saying what is wrong with it."""
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
