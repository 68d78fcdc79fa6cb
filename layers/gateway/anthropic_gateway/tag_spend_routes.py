"""`GET /spend/tags`: LiteLLM's tag spend report, from the daily aggregates tag_spend.py keeps.

Apart from tag_spend.py because the pass-through records tag spend on every request, and must not import FastAPI
and pydantic to do so (the admin routes load on first use: app.py).
"""

from __future__ import annotations

from typing import Any

import anyio.to_thread
from fastapi import APIRouter, Depends
from pydantic import BaseModel

from .auth import master_only
from .tag_spend import parse_range, report


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


router = APIRouter(dependencies=[Depends(master_only)])


@router.get("/spend/tags", response_model=list[TagSpend])
async def spend_tags(start_date: str | None = None, end_date: str | None = None) -> list[dict[str, Any]]:
    start, end = parse_range(start_date, end_date)
    return await anyio.to_thread.run_sync(report, start, end)
