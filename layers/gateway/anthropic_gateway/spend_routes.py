"""The spend reports (master key only): `GET /spend/keys` and `GET /spend/tags` in LiteLLM's shapes; the totals of
the tagged requests, each once (`GET /spend/tags/totals`); spend per team and per user by day (`GET /spend/teams`,
`GET /spend/users`).

key_spend.py, tag_spend.py and org_spend.py build them; this module serves them, money written from Decimal as
exact plain JSON numbers (money.MoneyJSONResponse: no binary float in between, no exponent notation). The dated
reports take `start_date` and `end_date` (UTC days, both included; at most day_spend.MAX_DAYS, one Query a day).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from typing import Annotated

import anyio.to_thread
from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel
from starlette.responses import Response

from . import day_spend, key_spend, org_spend, tag_spend
from .auth import master_only
from .money_fields import Amount, MoneyJSONResponse
from .storage import key_records

MAX_KEYS = 100  # /spend/keys?limit=

router = APIRouter(prefix="/spend", dependencies=[Depends(master_only)])


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


class DailySpend(BaseModel):
    date: str  # YYYY-MM-DD (UTC)
    spend: Amount
    log_count: int
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    total_tokens: int


class DaySums(BaseModel):
    """Requests (those an upstream had: the gateway's refusals are not counted), spend and tokens, summed."""

    log_count: int
    total_spend: Amount
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    total_tokens: int
    daily: list[DailySpend]  # the days with requests


class TagSpend(DaySums):
    """One tag in `GET /spend/tags`: LiteLLM's fields (individual_request_tag, log_count, total_spend), token sums
    and the days it had requests. A request with several tags is in each of their rows."""

    individual_request_tag: str


class TaggedTotals(DaySums):
    """`GET /spend/tags/totals`: the requests that carried any tag, each counted once however many it carried."""

    start_date: str
    end_date: str


class TeamSpend(DaySums):
    """One team in `GET /spend/teams` (the requests of its keys)."""

    team_id: str
    team_alias: str | None


class UserSpend(DaySums):
    """One user in `GET /spend/users` (the requests of its keys)."""

    user_id: str
    user_alias: str | None
    user_email: str | None


# The routes answer with MoneyJSONResponse themselves (FastAPI would write each Decimal as a string); their
# response_model documents the shape.


@router.get("/keys", response_model=list[KeySpend])
async def spend_keys(limit: Annotated[int, Query(ge=1, le=MAX_KEYS)] = 10) -> Response:
    records = await anyio.to_thread.run_sync(key_records.list_records)
    return MoneyJSONResponse(key_spend.top_keys(records, limit))


@router.get("/tags", response_model=list[TagSpend])
async def spend_tags(start_date: str | None = None, end_date: str | None = None) -> Response:
    return await _dated(tag_spend.report, start_date, end_date)


@router.get("/tags/totals", response_model=TaggedTotals)
async def spend_tags_totals(start_date: str | None = None, end_date: str | None = None) -> Response:
    return await _dated(tag_spend.totals, start_date, end_date)


@router.get("/teams", response_model=list[TeamSpend])
async def spend_teams(start_date: str | None = None, end_date: str | None = None) -> Response:
    return await _dated(org_spend.team_report, start_date, end_date)


@router.get("/users", response_model=list[UserSpend])
async def spend_users(start_date: str | None = None, end_date: str | None = None) -> Response:
    return await _dated(org_spend.user_report, start_date, end_date)


async def _dated(report: Callable[[date, date], object], start_date: str | None, end_date: str | None) -> Response:
    start, end = day_spend.parse_range(start_date, end_date)
    return MoneyJSONResponse(await anyio.to_thread.run_sync(report, start, end))
