"""`GET /audit`: the audit log, newest first, a page at a time (proxy_admin and proxy_admin_viewer).

Filters: `actor` (as recorded: master, key:<alias or token>, sso:<subject>, idp:<subject>; or the user id behind
it), `target` (key:<key_id>, team:<id>, user:<id>, tag:<name>), `action` (key.update, or its start: key), and a
date range (`start_date`, `end_date`, YYYY-MM-DD in UTC, inclusive; by default the last 30 days). A page that
stops before the range ends gives a `cursor`; send it back (with the same filters) for the next page.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import Response

from . import money_fields
from .access import admin_access
from .access import of as access_of
from .errors import GatewayError
from .storage import audit

MAX_PAGE_SIZE = 100
DEFAULT_DAYS = 30
MAX_FILTER = 512  # characters of a filter value: targets and actors are ids, never longer

router = APIRouter(dependencies=[Depends(admin_access)])


def _day(text: str | None, name: str, default: date) -> date:
    if text is None or text == "":
        return default
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise GatewayError(400, f"{name}: expected a date as YYYY-MM-DD, got {text[:40]!r}.") from None


@router.get("/audit")
async def audit_log(
    http_request: Request,
    actor: Annotated[str | None, Query(max_length=MAX_FILTER)] = None,
    target: Annotated[str | None, Query(max_length=MAX_FILTER)] = None,
    action: Annotated[str | None, Query(max_length=64)] = None,
    start_date: str | None = None,
    end_date: str | None = None,
    page_size: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 50,
    cursor: Annotated[str | None, Query(max_length=4096)] = None,
) -> Response:
    access_of(http_request).require_reader("read the audit log")
    today = datetime.now(UTC).date()
    end = _day(end_date, "end_date", today)
    start = _day(start_date, "start_date", end - timedelta(days=DEFAULT_DAYS - 1))
    if start > end:
        raise GatewayError(400, f"start_date ({start}) is after end_date ({end}).")
    filters = audit.Filters(start=start, end=end, actor=actor or None, target=target or None, action=action or None)
    try:
        found = await anyio.to_thread.run_sync(audit.page, filters, page_size, cursor or None)
    except audit.BadCursor as exc:
        raise GatewayError(400, str(exc)) from None
    entries: list[dict[str, Any]] = [dataclasses.asdict(entry) for entry in found.entries]
    return money_fields.MoneyJSONResponse({"entries": entries, "cursor": found.cursor})
