"""The user API, in LiteLLM proxy's routes and shapes: people, their own budget, teams and keys.

A user is a budget and limits over all of its keys, whatever team they are in. /user/new creates a key for the
user unless `auto_create_key` is false (LiteLLM's default), shown once like /key/generate's. `user_role` is the
role the user's keys act with on the admin API (access.py): users are created, changed and deleted by proxy_admin
(and the master key); proxy_admin and proxy_admin_viewer read every user, anyone else only itself. Deleting a
user deletes its keys and memberships (as LiteLLM does), in bounded steps like a team's. Every change is stored
with its audit entry in one transaction (audit.py).
"""

from __future__ import annotations

import math
import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from . import audit, keys, org_api
from .access import admin_access
from .access import of as access_of
from .auth import AdminParts, Caller, runtime_of
from .errors import GatewayError
from .key_routes import MAX_LIST_SIZE, Alias, Duration, Identifier, KeyWithInfo
from .org_api import (
    MAX_PER_CALL,
    Email,
    Metadata,
    Name,
    ScopeSettings,
    answer,
    blocking,
    changes_of,
    first_reset,
    forget_cached,
    parse_body,
    refuse_unless_done,
    retrying,
)
from .org_views import fresh_user, keys_under, team_view, user_info
from .refusals import admin_error
from .storage import key_records, table, teams, users
from .storage.audit import Entry
from .storage.key_records import KeyRecord
from .storage.layout import user_pk
from .storage.members import Membership
from .storage.outcomes import Refused
from .storage.scope_items import Cascade
from .storage.users import UserRecord

router = APIRouter(prefix="/user", dependencies=[Depends(admin_access)])

UserRole = Literal["proxy_admin", "proxy_admin_viewer", "internal_user", "internal_user_viewer"]  # users.ROLES


class UserSettings(ScopeSettings):
    user_alias: Name | None = None
    user_email: Email | None = None
    user_role: UserRole | None = None
    metadata: Metadata | None = None
    blocked: bool | None = None


class NewUser(UserSettings):
    user_id: Identifier | None = None  # generated when not given
    teams: Annotated[list[Identifier], Field(max_length=MAX_PER_CALL)] | None = None  # joined with role "user"
    auto_create_key: bool = True  # LiteLLM's default: the answer carries a key for the user, shown once
    key_alias: Alias | None = None  # of that key
    duration: Duration | None = None  # that key expires after it


class UpdateUser(UserSettings):
    user_id: Identifier | None = None  # which user; without it, user_email names the user


class DeleteUsers(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    user_ids: Annotated[list[Identifier], Field(min_length=1, max_length=MAX_PER_CALL)]


@router.post("/new")
async def new_user(http_request: Request) -> Response:
    request = await parse_body(http_request, NewUser)
    runtime, access = runtime_of(http_request), access_of(http_request)
    access.require_admin("create users")
    now = keys.utcnow()
    team_ids = list(dict.fromkeys(request.teams or []))
    user = UserRecord(
        user_id=request.user_id or str(uuid.uuid4()),
        user_alias=request.user_alias,
        user_email=request.user_email,
        user_role=request.user_role or users.DEFAULT_ROLE,
        teams=team_ids,
        models=request.models or [],
        max_budget=request.max_budget,
        budget_duration=request.budget_duration,
        budget_reset_at=first_reset(request.budget_duration, now),
        rpm_limit=request.rpm_limit,
        tpm_limit=request.tpm_limit,
        max_parallel_requests=request.max_parallel_requests,
        metadata=request.metadata or {},
        blocked=bool(request.blocked),
        created_at=now.isoformat(),
        updated_at=now.isoformat(),
    )
    memberships = [
        Membership(team_id=team_id, user_id=user.user_id, created_at=now.isoformat(), updated_at=now.isoformat())
        for team_id in team_ids
    ]
    entry = audit.entry(access.caller, "user.create", _target(user.user_id), None, audit.fields(user))
    refuse_unless_done(await blocking(users.create, user, memberships, audit.put(runtime.settings, entry)))
    audit.written(entry)
    created: dict[str, Any] = {**user_info(user).model_dump(), "key": None, "token": None, "expires": None}
    if request.auto_create_key:
        key = await _personal_key(runtime, user.user_id, request, access.caller)
        created.update(key=key.key, token=key.token, key_alias=key.key_alias, expires=key.expires)
    return answer(created)


async def _personal_key(runtime: AdminParts, user_id: str, request: NewUser, caller: Caller) -> KeyWithInfo:
    """A key of the user's own (no team), as /key/generate makes one: the user's budget and limits govern it."""
    plain, now = keys.new_key(), keys.utcnow()
    record = KeyRecord(
        token=keys.hash_key(plain),
        key_name=keys.key_name(plain),
        key_alias=request.key_alias,
        created_at=now.isoformat(),
        updated_at=now.isoformat(),
        expires=keys.iso(now + table.parse_duration(request.duration)) if request.duration else None,
        user_id=user_id,
    )
    created = f"User {user_id!r} was created, but not its key"
    entry = audit.entry(caller, "key.generate", audit.key_target(record), None, audit.key_fields(record))
    try:
        await blocking(keys.put_new, runtime.key_cache, record, audit.put(runtime.settings, entry))
    except key_records.AliasTaken:
        raise GatewayError(400, f"{created}: key_alias {request.key_alias!r} is already in use.") from None
    except (key_records.LinkRefused, key_records.KeyExists, key_records.Conflict):  # user deleted meanwhile; key used
        raise GatewayError(
            409, f"{created}; make one with /key/generate.", error_type="invalid_request_error"
        ) from None
    runtime.key_cache.invalidate(record.token)  # it may be cached as unknown
    audit.written(entry)
    return KeyWithInfo.of(record, key=plain)


@router.post("/update")
async def update_user(http_request: Request) -> Response:
    request = await parse_body(http_request, UpdateUser)
    runtime, access = runtime_of(http_request), access_of(http_request)
    access.require_admin("change users")
    now = keys.utcnow()
    identifying = {"user_id"} if request.user_id is not None else {"user_id", "user_email"}
    changes = changes_of(request, now, identifying=identifying)
    entries: list[Entry] = []

    def change(user: UserRecord) -> Refused | None:
        before, after = audit.changed(audit.fields(user), changes)
        entries.append(audit.entry(access.caller, "user.update", _target(user.user_id), before, after))
        return users.update(user, changes, now.isoformat(), audit.put(runtime.settings, entries[-1]))

    def update() -> Any:
        user = retrying(runtime.owners, lambda: _user(request.user_id, request.user_email), change)
        audit.written(entries[-1])
        return {"user_id": user.user_id, "data": user_info(user)}

    return answer(await blocking(update))


@router.post("/delete")
async def delete_users(http_request: Request) -> Response:
    request = await parse_body(http_request, DeleteUsers)
    runtime, access = runtime_of(http_request), access_of(http_request)
    access.require_admin("delete users")
    user_ids = list(dict.fromkeys(request.user_ids))

    def delete() -> Any:
        found = {user_id: user for user_id in user_ids if (user := users.get(user_id)) is not None}
        missing = [user_id for user_id in user_ids if user_id not in found]
        if missing:
            raise GatewayError(404, f"Nothing deleted; no user {', '.join(repr(u) for u in missing)}.")
        cascade = Cascade(remaining=org_api.MAX_CASCADE)
        now = keys.utcnow().isoformat()
        try:
            for user_id in user_ids:
                # The entry goes with the mark that starts the delete: a repeated call (to finish) records again.
                entry = audit.entry(access.caller, "user.delete", _target(user_id), audit.fields(found[user_id]))
                refused = users.delete(user_id, cascade, now, audit.put(runtime.settings, entry))
                if refused is None or refused.reason == "unfinished":  # the entry is stored with the mark
                    audit.written(entry)
                if refused is not None and refused.reason != "missing":  # missing: deleted by someone else meanwhile
                    error = admin_error(refused)
                    error.message += f" This call deleted {cascade.keys} keys and {cascade.members} memberships."
                    raise error
        finally:
            forget_cached(runtime.key_cache, runtime.owners, cascade)
        return {"deleted_users": user_ids, "deleted_keys": cascade.keys, "deleted_memberships": cascade.members}

    return answer(await blocking(delete))


@router.get("/info")
async def user_info_route(http_request: Request, user_id: str | None = None) -> Response:
    if not user_id:
        raise GatewayError(400, "user_id: required (/user/info?user_id=<user id>).")
    access = access_of(http_request)
    access.check_read_user(user_id)

    def info() -> Any:
        user = fresh_user(_user(user_id, None))
        shown, key_count = keys_under(user_pk(user.user_id))
        user_teams = [
            team_view(team)
            for team_id in user.teams
            if (access.reads_all or team_id in access.admin_teams) and (team := teams.get(team_id)) is not None
        ]
        return {
            "user_id": user.user_id,
            "user_info": {**user_info(user).model_dump(), "key_count": key_count},
            "keys": shown,
            "teams": user_teams,
        }

    return answer(await blocking(info))


@router.get("/list")
async def list_users(
    http_request: Request,
    page: Annotated[int, Query(ge=1)] = 1,
    page_size: Annotated[int, Query(ge=1, le=MAX_LIST_SIZE)] = 25,
    role: UserRole | None = None,
    team: str | None = None,
    user_email: Annotated[str | None, Query(max_length=254)] = None,
) -> Response:
    """Users newest first, a page at a time (LiteLLM's shape), filtered by role, team, or a part of the email; a
    caller who may not read every user sees only itself."""
    access = access_of(http_request)

    def listing() -> Any:
        found = users.list_users() if access.reads_all else [u for u in [users.get(access.user_id or "")] if u]
        if role is not None:
            found = [user for user in found if user.user_role == role]
        if team is not None:
            found = [user for user in found if team in user.teams]
        if user_email:
            found = [user for user in found if user_email.lower() in (user.user_email or "").lower()]
        shown = [user_info(fresh_user(user)) for user in found[(page - 1) * page_size : page * page_size]]
        return {
            "users": shown,
            "total": len(found),
            "page": page,
            "page_size": page_size,
            "total_pages": math.ceil(len(found) / page_size),
        }

    return answer(await blocking(listing))


def _target(user_id: str) -> str:
    return f"user:{user_id}"


def _user(user_id: str | None, user_email: str | None) -> UserRecord:
    """The user named by user_id or, without one, by user_email; 404 if there is none (blocking)."""
    if user_id is not None:
        user = users.get(user_id) if 0 < len(user_id) <= 256 else None
        if user is None:
            raise GatewayError(404, f"User {user_id[:256]!r} not found.")
        return user
    if user_email is None:
        raise GatewayError(400, "Name the user: `user_id` or `user_email`.")
    user = users.by_email(user_email)
    if user is None:
        raise GatewayError(404, f"No user has user_email {user_email!r}.")
    return user
