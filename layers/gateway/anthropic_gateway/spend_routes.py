"""The spend reports: `GET /spend/keys` and `GET /spend/tags` in LiteLLM's shapes; the totals of the tagged requests,
each once (`GET /spend/tags/totals`); spend per team and per user by day (`GET /spend/teams`, `GET /spend/users`).
Each shows what the caller may read (access.py): every row to proxy_admin and proxy_admin_viewer; to anyone else
its own keys and user, and a team admin its teams; the tag reports only to the first two.

key_spend.py, tag_spend.py and org_spend.py build them; this module serves them, money written from Decimal as
exact plain JSON numbers (money_fields.MoneyJSONResponse: no binary float in between, no exponent notation). The dated
reports take `start_date` and `end_date` (UTC days, both included; at most day_spend.MAX_DAYS, one Query a day).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import date
from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel
from starlette.responses import Response

from . import day_spend, key_spend, org_spend, tag_spend
from .access import Access, admin_access
from .access import of as access_of
from .money_fields import Amount, MoneyJSONResponse
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
async def spend_keys(http_request: Request, limit: Annotated[int, Query(ge=1, le=MAX_KEYS)] = 10) -> Response:
    access = access_of(http_request)
    records = [r for r in await anyio.to_thread.run_sync(key_records.list_records) if access.may_read_key(r)]
    return MoneyJSONResponse(key_spend.top_keys(records, limit))


@router.get("/tags", response_model=list[TagSpend])
async def spend_tags(http_request: Request, start_date: str | None = None, end_date: str | None = None) -> Response:
    access_of(http_request).require_reader("read spend per tag")
    return await _dated(tag_spend.report, start_date, end_date)


@router.get("/tags/totals", response_model=TaggedTotals)
async def spend_tags_totals(
    http_request: Request, start_date: str | None = None, end_date: str | None = None
) -> Response:
    access_of(http_request).require_reader("read spend per tag")
    return await _dated(tag_spend.totals, start_date, end_date)


@router.get("/teams", response_model=list[TeamSpend])
async def spend_teams(http_request: Request, start_date: str | None = None, end_date: str | None = None) -> Response:
    access = access_of(http_request)
    if not access.reads_all and not access.admin_teams:
        raise access.refuse("read spend per team", "proxy_admin, proxy_admin_viewer or admin of a team")
    return await _dated(org_spend.team_report, start_date, end_date, _visible(access, "team_id", access.admin_teams))


@router.get("/users", response_model=list[UserSpend])
async def spend_users(http_request: Request, start_date: str | None = None, end_date: str | None = None) -> Response:
    access = access_of(http_request)
    return await _dated(org_spend.user_report, start_date, end_date, _visible(access, "user_id", {access.user_id}))


def _visible(access: Access, name: str, own: Iterable[str | None]) -> Callable[[dict[str, Any]], bool] | None:
    """Which rows of a report the caller sees: every one to a reader of everything, else those of `own`."""
    if access.reads_all:
        return None
    allowed = set(own) - {None}
    return lambda row: row.get(name) in allowed


async def _dated(
    report: Callable[[date, date], Any],
    start_date: str | None,
    end_date: str | None,
    shown: Callable[[dict[str, Any]], bool] | None = None,
) -> Response:
    start, end = day_spend.parse_range(start_date, end_date)
    rows = await anyio.to_thread.run_sync(report, start, end)
    return MoneyJSONResponse(rows if shown is None else [row for row in rows if shown(row)])
