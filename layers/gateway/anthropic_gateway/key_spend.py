"""`GET /spend/keys`: the keys that spent the most, from the spend counters on the key records.

Key records keep running totals, not a history: this is spend since each key was created (`total_spend`) and in
its current budget period (`spend`), not over a date range (per-tag spend by day is `/spend/tags`). One read of
the key index, the same `/key/list` makes, however many keys there are.
"""

from __future__ import annotations

from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Depends, Query

from . import keys
from .auth import master_only
from .keys import KeyRecord

MAX_LIMIT = 100

router = APIRouter(prefix="/spend", dependencies=[Depends(master_only)])


def top_keys(records: list[KeyRecord], limit: int) -> list[dict[str, Any]]:
    """The `limit` records with the highest total spend (then most requests, then newest first)."""
    ranked = sorted(records, key=lambda r: (-r.total_spend, -r.requests))  # stable: ties stay newest first
    return [
        {
            "token": record.token,
            "key_name": record.key_name,
            "key_alias": record.key_alias,
            "total_spend": float(record.total_spend),
            "spend": float(record.spend),
            "requests": record.requests,
            **{name: getattr(record, name) for name in keys.TOKEN_COUNTERS},
            "total_tokens": sum(getattr(record, name) for name in keys.TOKEN_COUNTERS),
        }
        for record in ranked[:limit]
    ]


@router.get("/keys")
async def spend_keys(limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 10) -> list[dict[str, Any]]:
    records = await anyio.to_thread.run_sync(keys.list_records)
    return top_keys(records, limit)
