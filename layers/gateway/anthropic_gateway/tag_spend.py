"""Spend per tag: LiteLLM's tag spend report (`GET /spend/tags`) and the totals of the tagged requests, each
counted once (`GET /spend/tags/totals`), over the day items day_spend.py records.

A request with two tags is in both tags' rows, so adding the rows up counts it twice; the totals count it once.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from . import day_spend
from .storage.spend import TAG_DAY_PREFIX


def report(start: date, end: date) -> list[dict[str, Any]]:
    """Per tag over [start, end]: LiteLLM's fields (individual_request_tag, log_count, total_spend), token sums
    and a per-day breakdown; highest spend first. Money as exact Decimal."""
    return [{"individual_request_tag": row.pop("name"), **row} for row in day_spend.rows(TAG_DAY_PREFIX, start, end)]


def totals(start: date, end: date) -> dict[str, Any]:
    """The requests that carried any tag over [start, end], each once: sums and a per-day breakdown."""
    return {"start_date": start.isoformat(), "end_date": end.isoformat(), **day_spend.distinct_totals(start, end)}
