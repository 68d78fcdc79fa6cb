"""The keys that spent the most (`GET /spend/keys`, spend_routes.py), from the spend counters on the key records.

Key records keep running totals, not a history: this is spend since each key was created (`total_spend`) and in
its current budget period (`spend`), not over a date range (per-tag spend by day is `/spend/tags`). One read of
the key index, the same `/key/list` makes, however many keys there are. Money stays exact Decimal.
"""

from __future__ import annotations

from typing import Any

from .storage.key_records import KeyRecord
from .storage.spend import TOKEN_COUNTERS


def top_keys(records: list[KeyRecord], limit: int) -> list[dict[str, Any]]:
    """The `limit` records with the highest total spend (then most requests, then newest first)."""
    ranked = sorted(records, key=lambda r: (-r.total_spend, -r.requests))  # stable: ties stay newest first
    return [
        {
            "token": record.token,
            "key_name": record.key_name,
            "key_alias": record.key_alias,
            "total_spend": record.total_spend,
            "spend": record.spend,
            "requests": record.requests,
            **{name: getattr(record, name) for name in TOKEN_COUNTERS},
            "total_tokens": sum(getattr(record, name) for name in TOKEN_COUNTERS),
        }
        for record in ranked[:limit]
    ]
