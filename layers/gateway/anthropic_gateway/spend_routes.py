"""The spend reports, in LiteLLM's shapes: `GET /spend/keys` (the keys the caller may read, access.py) and
`GET /spend/tags` (proxy_admin and proxy_admin_viewer).

key_spend.py and tag_spend.py build them; this module serves them, money written from Decimal as exact plain JSON
numbers (money.MoneyJSONResponse: no binary float in between, no exponent notation).
"""

from __future__ import annotations

from typing import Annotated

import anyio.to_thread
from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel
from starlette.responses import Response

from . import key_spend, tag_spend
from .access import admin_access
from .access import of as access_of
from .money import Amount, MoneyJSONResponse
from .storage import key_records

MAX_KEYS = 100  # /spend/keys?limit=

router = APIRouter(prefix="/spend", dependencies=[Depends(admin_access)])


class KeySpend(BaseModel):
    """One key in `GET /spend/keys`: never the key itself, its hash (`token`) and display name."""

    token: str
    key_name: str
    key_alias: str | None
    total_spend: Amount  # since the key was created
    spend: Amount  # in its current budget period
    requests: int
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    total_tokens: int


class DailyTagSpend(BaseModel):
    date: str  # YYYY-MM-DD (UTC)
    spend: Amount
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
    total_spend: Amount
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    total_tokens: int
    daily: list[DailyTagSpend]


# The routes answer with MoneyJSONResponse themselves (FastAPI would write each Decimal as a string); their
# response_model documents the shape.


@router.get("/keys", response_model=list[KeySpend])
async def spend_keys(http_request: Request, limit: Annotated[int, Query(ge=1, le=MAX_KEYS)] = 10) -> Response:
    access = access_of(http_request)
    records = [r for r in await anyio.to_thread.run_sync(key_records.list_records) if access.may_read_key(r)]
    return MoneyJSONResponse(key_spend.top_keys(records, limit))


@router.get("/tags", response_model=list[TagSpend])
async def spend_tags(http_request: Request, start_date: str | None = None, end_date: str | None = None) -> Response:
    access_of(http_request).require_reader("read spend per tag")
    start, end = tag_spend.parse_range(start_date, end_date)
    return MoneyJSONResponse(await anyio.to_thread.run_sync(tag_spend.report, start, end))
