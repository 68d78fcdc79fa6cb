"""The spend reports (master key only), in LiteLLM's shapes: `GET /spend/keys` and `GET /spend/tags`.

What they count is built by key_spend.py and tag_spend.py; this module only serves it.
"""

from __future__ import annotations

from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from . import key_spend, tag_spend
from .auth import master_only
from .storage import key_records

MAX_KEYS = 100  # /spend/keys?limit=

router = APIRouter(prefix="/spend", dependencies=[Depends(master_only)])


class DailyTagSpend(BaseModel):
    date: str  # YYYY-MM-DD (UTC)
    spend: float
    log_count: int
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    total_tokens: int


class TagSpend(BaseModel):
    """One tag in `GET /spend/tags`: LiteLLM's fields (individual_request_tag, log_count, total_spend), token sums
    and the days it had requests."""

    individual_request_tag: str
    log_count: int
    total_spend: float
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    total_tokens: int
    daily: list[DailyTagSpend]


@router.get("/keys")
async def spend_keys(limit: Annotated[int, Query(ge=1, le=MAX_KEYS)] = 10) -> list[dict[str, Any]]:
    records = await anyio.to_thread.run_sync(key_records.list_records)
    return key_spend.top_keys(records, limit)


@router.get("/tags", response_model=list[TagSpend])
async def spend_tags(start_date: str | None = None, end_date: str | None = None) -> list[dict[str, Any]]:
    start, end = tag_spend.parse_range(start_date, end_date)
    return await anyio.to_thread.run_sync(tag_spend.report, start, end)
