"""What the team, user and tag APIs share: request bodies read with exact money, the settings every budgeted
scope takes, how a scope's budget shows in an answer, and the bounds of one call.

Field validation reuses the key API's (key_routes.py): the same ranges, durations and names, so a value that
is a 400 on /key/generate is one here too. Bodies are read with money.loads, so budgets are the exact Decimal the
client wrote, from the JSON on the wire to DynamoDB and back (money_fields.MoneyJSONResponse writes them).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

import anyio.to_thread
from fastapi import Request
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from starlette.responses import Response

from . import key_routes, keys, money, money_fields
from .errors import GatewayError, invalid_request
from .key_routes import Duration, Limit, ModelName
from .keys import KeyCache
from .owners import OwnersCache
from .refusals import admin_error
from .storage import budgets, table
from .storage.outcomes import CONFLICT, Refused
from .storage.scope_items import Cascade, ScopeRecord

MAX_PER_CALL = 20  # teams or users one delete names (each a cascade), members one member_add adds
# Keys and memberships one delete call removes, each its own transaction: a few seconds at most, well inside API
# Gateway's 30 s. A team or user with more is finished by repeating the call (storage.scope_items.Cascade).
MAX_CASCADE = 200
MAX_SHOWN_KEYS = 100  # keys listed in /team/info and /user/info (key_count says how many there are)
MAX_DESCRIPTION = 1024
_EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s]{1,253}")


def _amount(value: object) -> Decimal:
    number = money.amount(value)  # MoneyError (a ValueError) names what is wrong
    if number > key_routes.MAX_BUDGET:
        raise ValueError(f"at most {key_routes.MAX_BUDGET:.0f} (USD)")
    if 0 < number < Decimal(str(key_routes.MIN_NONZERO_BUDGET)):
        raise ValueError(f"must be 0 or at least {key_routes.MIN_NONZERO_BUDGET:.9f} (USD)")
    return number


def _metadata(value: dict[str, Any]) -> dict[str, Any]:
    """The key API's metadata rules, for a body read with exact numbers (Decimal) by money.loads."""
    if len(money.dumps(value)) > key_routes.MAX_METADATA_BYTES:
        raise ValueError(f"at most {key_routes.MAX_METADATA_BYTES} bytes of JSON")
    key_routes._check_storable_map(value, depth=1)
    try:
        table.check_storable(value)
    except Exception:
        raise ValueError("cannot be stored: numbers need at most 38 digits, within 1e-130..1e125") from None
    return value


def _email(value: str) -> str:
    if not _EMAIL.fullmatch(value):
        raise ValueError("expected an email address (name@domain, no spaces)")
    return value


def _printable(value: str) -> str:
    if not value.isprintable():
        raise ValueError("must be printable characters")
    return value


Money = Annotated[Decimal, BeforeValidator(_amount)]
Metadata = Annotated[dict[str, Any], AfterValidator(_metadata)]
Models = Annotated[list[ModelName], Field(max_length=key_routes.MAX_MODELS)]
Name = Annotated[str, Field(min_length=1, max_length=256), AfterValidator(_printable)]
Email = Annotated[str, Field(max_length=254), AfterValidator(_email), AfterValidator(_printable)]
Description = Annotated[str, Field(max_length=MAX_DESCRIPTION), AfterValidator(_printable)]


class ScopeSettings(BaseModel):
    """The budget and limits every scope takes (team, user, tag), as a key does. Unknown fields, wrong types and
    values out of range are a 400 naming the field."""

    model_config = ConfigDict(extra="forbid", strict=True)

    models: Models | None = None
    max_budget: Money | None = None
    budget_duration: Duration | None = None
    rpm_limit: Limit | None = None
    tpm_limit: Limit | None = None
    max_parallel_requests: Limit | None = None


async def parse_body[M: BaseModel](request: Request, model: type[M]) -> M:
    """The JSON body as `model`, numbers with a fraction read as exact Decimal; any problem is a 400."""
    raw = await request.body()
    try:
        return model.model_validate(money.loads(raw or b"{}"))
    except ValidationError as exc:
        raise invalid_request(exc.errors()) from None
    except (ValueError, RecursionError) as exc:  # not JSON (json.JSONDecodeError and MoneyError are ValueErrors)
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise GatewayError(400, f"Invalid request: the body is not valid JSON ({reason[:200]}).") from None


def changes_of(request: BaseModel, now: datetime, *, identifying: set[str]) -> dict[str, Any]:
    """The fields a client set, as stored changes (None removes): every field but `identifying`; lists and maps
    given as null become empty, a budget period starts now."""
    changes: dict[str, Any] = {}
    for name in request.model_fields_set - identifying:
        value = getattr(request, name)
        if name == "budget_duration":
            changes["budget_duration"] = value
            changes["budget_reset_at"] = table.iso_seconds(now + table.parse_duration(value)) if value else None
        elif name in ("models", "tags"):
            changes[name] = value or []
        elif name == "metadata":
            changes[name] = value or {}
        elif name == "blocked":
            changes[name] = bool(value)
        else:
            changes[name] = value
    return changes


def first_reset(budget_duration: str | None, now: datetime) -> str | None:
    return table.iso_seconds(now + table.parse_duration(budget_duration)) if budget_duration else None


def answer(content: Any) -> Response:
    """A JSON answer with every amount exact: pydantic models dumped in Python mode (Decimal kept)."""
    return money_fields.MoneyJSONResponse(_dumped(content))


def _dumped(content: Any) -> Any:
    if isinstance(content, BaseModel):
        return content.model_dump()
    if isinstance(content, list):
        return [_dumped(item) for item in content]
    if isinstance(content, dict):
        return {name: _dumped(value) for name, value in content.items()}
    return content


async def blocking[T](function: Callable[..., T], *args: Any) -> T:
    """`function(*args)` (storage work) in a worker thread."""
    return await anyio.to_thread.run_sync(function, *args)


def refuse_unless_done(refused: Refused | None) -> None:
    if refused is not None:
        raise admin_error(refused)


def forget_cached(key_cache: KeyCache, owners: OwnersCache, cascade: Cascade) -> None:
    """Drop what a delete changed from the runtime's caches (the keys the cascade deleted, the teams, users and
    memberships cached for requests): it applies here at once, elsewhere within KEY_CACHE_TTL."""
    if cascade.tokens:  # invalidate() without arguments would forget every key
        key_cache.invalidate(*cascade.tokens)
    owners.forget()


def retrying[R: ScopeRecord](owners: OwnersCache, find: Callable[[], R], change: Callable[[R], Refused | None]) -> R:
    """Read, change, read again (blocking); a concurrent change (CONFLICT) means another read and another try.
    The records cached for requests (the runtime's `owners`) are dropped after the change."""
    for _ in range(3):
        record = find()
        refused = change(record)
        if refused == CONFLICT:
            continue
        refuse_unless_done(refused)
        owners.forget()  # the requests of its keys see the change here at once (budgets, limits, blocked)
        return find()
    raise admin_error(CONFLICT)


def fresh[R: ScopeRecord](record: R, pk: str, sk: str, reload: Callable[[], R | None]) -> R:
    """The record with its budget period current: a period that ended while the scope was idle starts over, so
    `spend` shows what counts now (as /key/info does). Blocking."""
    try:
        if budgets.reset_if_due(pk, sk, dataclasses.asdict(record), keys.utcnow()):
            return reload() or record
    except (TypeError, ValueError, OverflowError):  # a stored period this version cannot read: shown as it is
        pass
    return record


# -- answers ------------------------------------------------------------------------------------------------------


class BudgetView(BaseModel):
    """A scope's budget and limits as every answer shows them (money exact)."""

    models: list[str]
    max_budget: money_fields.Amount | None
    budget_duration: str | None
    budget_reset_at: str | None
    spend: money_fields.Amount  # in the current budget period (all time without budget_duration)
    total_spend: money_fields.Amount
    reserved_spend: money_fields.Amount  # estimates held by requests in flight
    rpm_limit: int | None
    tpm_limit: int | None
    max_parallel_requests: int | None
    created_at: str
    updated_at: str


def budget_fields(record: ScopeRecord) -> dict[str, Any]:
    return {
        name: getattr(record, name)
        for name in BudgetView.model_fields
        if name != "reserved_spend" and hasattr(record, name)
    } | {"reserved_spend": record.reserved}
