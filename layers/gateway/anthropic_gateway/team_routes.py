"""The team API, in LiteLLM proxy's routes and shapes: teams, their members and members' budgets.

Teams are created, changed and deleted by proxy_admin (and the master key); a team's admins (members with role
"admin") manage its members, within the team's budget, and add no user whose role ranks above theirs; reads
take proxy_admin, proxy_admin_viewer or the team's admin (access.py). Every change is stored with its audit
entry in one transaction (audit.py).

A team is a budget and limits shared by its keys; a membership is a user's role and own budget in the team.
Deleting a team deletes its keys and memberships (as LiteLLM does), in bounded steps (org_api.MAX_CASCADE per
call): a bigger team stays blocked until a repeated delete finishes it. Missing users named as members are created
on the way, as LiteLLM does. docs/organisations.md has the model and examples.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from starlette.responses import Response

from . import audit, keys, org_api
from .access import Access, admin_access
from .access import of as access_of
from .auth import AdminParts, runtime_of
from .errors import GatewayError
from .key_routes import MAX_KEY_TAGS, Duration, Identifier, _tags
from .org_api import (
    MAX_PER_CALL,
    Email,
    Metadata,
    Money,
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
from .org_views import fresh_member, keys_under, member_info, team_memberships, team_view, user_info
from .refusals import admin_error
from .storage import key_links, members, teams, users
from .storage.audit import Entry
from .storage.layout import team_pk
from .storage.members import Membership
from .storage.outcomes import Refused
from .storage.scope_items import Cascade, delete_keys
from .storage.teams import Joining, TeamRecord
from .storage.users import UserRecord

router = APIRouter(prefix="/team", dependencies=[Depends(admin_access)])

Role = Literal["admin", "user"]
Tags = Annotated[list[str], Field(max_length=MAX_KEY_TAGS), AfterValidator(_tags)]


# -- request shapes ---------------------------------------------------------------------------------------------


class Member(BaseModel):
    """A user, by user_id or user_email (a user that does not exist yet is created), and its role in the team."""

    model_config = ConfigDict(extra="forbid", strict=True)

    user_id: Identifier | None = None
    user_email: Email | None = None
    role: Role = "user"


Members = Annotated[list[Member], Field(min_length=1, max_length=MAX_PER_CALL)]


class TeamSettings(ScopeSettings):
    team_alias: Name | None = None
    tags: Tags | None = None
    metadata: Metadata | None = None
    blocked: bool | None = None


class NewTeam(TeamSettings):
    team_id: Identifier | None = None  # generated when not given
    members_with_roles: Annotated[list[Member], Field(max_length=MAX_PER_CALL)] | None = None


class UpdateTeam(TeamSettings):
    team_id: Identifier


class TeamRef(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    team_id: Identifier


class DeleteTeams(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    team_ids: Annotated[list[Identifier], Field(min_length=1, max_length=MAX_PER_CALL)]


class MemberAdd(TeamRef):
    member: Member | Members
    max_budget_in_team: Money | None = None
    budget_duration: Duration | None = None  # of the member budget; default: the team's


class MemberRef(TeamRef):
    user_id: Identifier | None = None
    user_email: Email | None = None


class MemberUpdate(MemberRef):
    role: Role | None = None
    max_budget_in_team: Money | None = None
    budget_duration: Duration | None = None


# -- routes -----------------------------------------------------------------------------------------------------


@router.post("/new")
async def new_team(http_request: Request) -> Response:
    request = await parse_body(http_request, NewTeam)
    runtime, access = runtime_of(http_request), access_of(http_request)
    access.require_admin("create teams")
    now = keys.utcnow()
    team = TeamRecord(
        team_id=request.team_id or str(uuid.uuid4()),
        team_alias=request.team_alias,
        models=request.models or [],
        max_budget=request.max_budget,
        budget_duration=request.budget_duration,
        budget_reset_at=first_reset(request.budget_duration, now),
        rpm_limit=request.rpm_limit,
        tpm_limit=request.tpm_limit,
        max_parallel_requests=request.max_parallel_requests,
        tags=request.tags or [],
        metadata=request.metadata or {},
        blocked=bool(request.blocked),
        created_at=now.isoformat(),
        updated_at=now.isoformat(),
    )

    def create() -> Any:
        joining = _joining(team, request.members_with_roles or [], None, None, now)
        after = {**audit.fields(team), "members": _joined(joining)}
        entry = audit.entry(access.caller, "team.create", _target(team.team_id), None, after)
        refuse_unless_done(teams.create(team, joining, audit.put(runtime.settings, entry)))
        runtime.team_registry.put(team)
        audit.written(entry)
        return team_view(teams.get(team.team_id) or team)

    return answer(await blocking(create))


@router.post("/update")
async def update_team(http_request: Request) -> Response:
    request = await parse_body(http_request, UpdateTeam)
    runtime, access = runtime_of(http_request), access_of(http_request)
    access.require_admin("change teams")
    now = keys.utcnow()
    changes = changes_of(request, now, identifying={"team_id"})

    def update() -> Any:
        team = _changed(runtime, access, "team.update", request.team_id, changes, now.isoformat())
        return {"team_id": team.team_id, "data": team_view(team)}

    return answer(await blocking(update))


@router.post("/block")
async def block_team(http_request: Request) -> Response:
    return await _set_blocked(http_request, True)


@router.post("/unblock")
async def unblock_team(http_request: Request) -> Response:
    return await _set_blocked(http_request, False)


async def _set_blocked(http_request: Request, blocked: bool) -> Response:
    request = await parse_body(http_request, TeamRef)
    runtime, access = runtime_of(http_request), access_of(http_request)
    access.require_admin("block or unblock teams")
    now = keys.utcnow().isoformat()
    action = "team.block" if blocked else "team.unblock"

    def change() -> Any:
        return team_view(_changed(runtime, access, action, request.team_id, {"blocked": blocked}, now))

    return answer(await blocking(change))


@router.post("/delete")
async def delete_teams(http_request: Request) -> Response:
    request = await parse_body(http_request, DeleteTeams)
    runtime, access = runtime_of(http_request), access_of(http_request)
    access.require_admin("delete teams")
    team_ids = list(dict.fromkeys(request.team_ids))

    def delete() -> Any:
        found = {team_id: team for team_id in team_ids if (team := teams.get(team_id)) is not None}
        missing = [team_id for team_id in team_ids if team_id not in found]
        if missing:
            shown = ", ".join(repr(team_id) for team_id in missing)
            raise GatewayError(404, f"Nothing deleted; no team {shown}.")
        cascade = Cascade(remaining=org_api.MAX_CASCADE)
        now = keys.utcnow().isoformat()
        try:
            for team_id in team_ids:
                # The entry goes with the mark that starts the delete: a repeated call (to finish) records again.
                entry = audit.entry(access.caller, "team.delete", _target(team_id), audit.fields(found[team_id]))
                refused = teams.delete(team_id, cascade, now, audit.put(runtime.settings, entry))
                if refused is None:
                    runtime.team_registry.discard(team_id)
                if refused is None or refused.reason == "unfinished":  # the entry is stored with the mark
                    audit.written(entry)
                if refused is not None and refused.reason != "missing":  # missing: deleted by someone else meanwhile
                    raise _partial(refused, cascade)
        finally:
            forget_cached(runtime.key_cache, runtime.owners, cascade)
        return {"deleted_teams": team_ids, "deleted_keys": cascade.keys, "deleted_members": cascade.members}

    return answer(await blocking(delete))


def _partial(refused: Refused, cascade: Cascade) -> GatewayError:
    error = admin_error(refused)
    if cascade.keys or cascade.members:
        error.message += f" This call deleted {cascade.keys} keys and {cascade.members} memberships."
    return error


@router.get("/info")
async def team_info(http_request: Request, team_id: str | None = None) -> Response:
    if not team_id:
        raise GatewayError(400, "team_id: required (/team/info?team_id=<team id>).")
    access_of(http_request).check_read_team(team_id)

    def info() -> Any:
        view = team_view(_team(team_id))
        shown, _ = keys_under(team_pk(team_id))
        return {"team_id": team_id, "team_info": view, "keys": shown, "team_memberships": team_memberships(team_id)}

    return answer(await blocking(info))


@router.get("/list")
async def list_teams(http_request: Request, user_id: str | None = None) -> Response:
    """Every team (LiteLLM's /team/list: a JSON array), or the teams of `user_id`; only the teams the caller may
    read (a team admin: its teams)."""
    access = access_of(http_request)
    if user_id is not None:
        access.check_read_user(user_id)

    def listing() -> Any:
        if user_id is None:
            found = teams.list_teams()
        else:
            user = users.get(user_id) if 0 < len(user_id) <= 256 else None
            if user is None:
                raise GatewayError(404, f"User {user_id[:256]!r} not found.")
            found = [team for team_id in user.teams if (team := teams.get(team_id)) is not None]
        return [team_view(team) for team in found if access.reads_all or team.team_id in access.admin_teams]

    return answer(await blocking(listing))


@router.post("/member_add")
async def member_add(http_request: Request) -> Response:
    request = await parse_body(http_request, MemberAdd)
    added = request.member if isinstance(request.member, list) else [request.member]
    runtime, access = runtime_of(http_request), access_of(http_request)
    access.check_team_admin(request.team_id, "add members")
    now = keys.utcnow()

    def add() -> Any:
        team = _team(request.team_id)
        if team.deleting:
            raise admin_error(Refused("deleting", "team", team.team_id))
        _check_member_budget(access, team, request.max_budget_in_team)
        joining = _joining(team, added, request.max_budget_in_team, request.budget_duration, now)
        _check_ranks(access, team, joining)
        added_members = {"members": _joined(joining)}
        entry = audit.entry(access.caller, "team.member_add", _target(team.team_id), None, added_members)
        refuse_unless_done(
            teams.add_members(team.team_id, joining, now.isoformat(), audit.put(runtime.settings, entry))
        )
        audit.written(entry)
        view = team_view(teams.get(team.team_id) or team)
        added_ids = [join.membership.user_id for join in joining]
        return {
            **view.model_dump(),
            "updated_users": [user_info(user) for user_id in added_ids if (user := users.get(user_id))],
            "updated_team_memberships": [
                member_info(membership) for user_id in added_ids if (membership := members.get(team.team_id, user_id))
            ],
        }

    return answer(await blocking(add))


@router.post("/member_update")
async def member_update(http_request: Request) -> Response:
    request = await parse_body(http_request, MemberUpdate)
    now = keys.utcnow()
    changes: dict[str, Any] = {}
    if "role" in request.model_fields_set and request.role is not None:
        changes["role"] = request.role
    if "max_budget_in_team" in request.model_fields_set:
        changes["max_budget"] = request.max_budget_in_team
    if "budget_duration" in request.model_fields_set:
        changes["budget_duration"] = request.budget_duration
        changes["budget_reset_at"] = first_reset(request.budget_duration, now)

    runtime, access = runtime_of(http_request), access_of(http_request)
    access.check_team_admin(request.team_id, "change members")
    entries: list[Entry] = []

    def change(membership: Membership) -> Refused | None:
        before, after = audit.changed(audit.fields(membership), changes)
        before["user_id"] = after["user_id"] = membership.user_id
        target = _target(membership.team_id)
        entries.append(audit.entry(access.caller, "team.member_update", target, before, after))
        return members.update(membership, changes, now.isoformat(), audit.put(runtime.settings, entries[-1]))

    def update() -> dict[str, Any]:
        if "max_budget" in changes:
            _check_member_budget(access, _team(request.team_id), changes["max_budget"])
        user_id = _member_id(request)
        membership = retrying(runtime.owners, lambda: _membership(request.team_id, user_id), change)
        if entries:
            audit.written(entries[-1])
        user = users.get(user_id)  # LiteLLM's answer names the member's email too
        return {**member_info(fresh_member(membership)).model_dump(), "user_email": user.user_email if user else None}

    return answer(await blocking(update))


@router.post("/member_delete")
async def member_delete(http_request: Request) -> Response:
    """Remove a member, and delete its keys in the team (they would name a team their user is not in)."""
    request = await parse_body(http_request, MemberRef)
    runtime, access = runtime_of(http_request), access_of(http_request)
    access.check_team_admin(request.team_id, "remove members")

    def delete() -> Any:
        team, user_id = _team(request.team_id), _member_id(request)
        membership = members.get(team.team_id, user_id)
        before = audit.fields(membership) if membership else {"user_id": user_id}
        entry = audit.entry(access.caller, "team.member_delete", _target(team.team_id), before)
        refused = members.leave(team.team_id, user_id, audit.put(runtime.settings, entry))
        if refused is None:
            audit.written(entry)
        pk = team_pk(team.team_id)
        # Not a member any more, but with keys left in the team by an earlier call stopped at the bound: carry on.
        if refused is not None and not (refused.reason == "missing" and key_links.key_ids(pk, user_id=user_id)):
            raise admin_error(refused)
        cascade = Cascade(remaining=org_api.MAX_CASCADE)
        unfinished = Refused("unfinished", "member", user_id, team=team.team_id)
        refused = delete_keys(pk, cascade, unfinished, user_id=user_id)
        forget_cached(runtime.key_cache, runtime.owners, cascade)
        if refused is not None:
            raise _partial(refused, cascade)
        return {**team_view(teams.get(team.team_id) or team).model_dump(), "deleted_keys": cascade.keys}

    return answer(await blocking(delete))


# -- helpers (blocking) -------------------------------------------------------------------------------------------


def _target(team_id: str) -> str:
    return f"team:{team_id}"


def _joined(joining: list[Joining]) -> list[dict[str, Any]]:
    """The members a change adds, as its audit entry shows them (new users flagged)."""
    return [{**audit.fields(join.membership), "new_user": join.new_user is not None} for join in joining]


def _changed(
    runtime: AdminParts, access: Access, action: str, team_id: str, changes: dict[str, Any], now: str
) -> TeamRecord:
    """The team with admin `changes` applied, recorded as `action`; the runtime's caches and team registry see it
    at once."""
    entries: list[Entry] = []

    def change(team: TeamRecord) -> Refused | None:
        before, after = audit.changed(audit.fields(team), changes)
        entries.append(audit.entry(access.caller, action, _target(team.team_id), before, after))
        return teams.update(team, changes, now, audit.put(runtime.settings, entries[-1]))

    team = retrying(runtime.owners, lambda: _team(team_id), change)
    runtime.team_registry.put(team)
    audit.written(entries[-1])
    return team


def _check_member_budget(access: Access, team: TeamRecord, budget: Decimal | None) -> None:
    """A team admin gives a member at most the team's own budget (proxy_admin is not bound)."""
    if budget is not None and not access.is_admin and team.max_budget is not None and budget > team.max_budget:
        raise access.refuse(
            f"give a member max_budget_in_team {budget}",
            f"at most team {team.team_id!r}'s max_budget ({team.max_budget}) (proxy_admin)",
        )


def _check_ranks(access: Access, team: TeamRecord, joining: list[Joining]) -> None:
    """A team admin adds no existing user whose role ranks above its own (access.check_outranks)."""
    if access.is_admin:
        return
    for join in joining:
        if join.new_user is None and (user := users.get(join.membership.user_id)) is not None:
            access.check_outranks(user.user_id, user.user_role, f"add to team {team.team_id!r} user")


def _team(team_id: str) -> TeamRecord:
    team = teams.get(team_id) if 0 < len(team_id) <= 256 else None
    if team is None:
        raise GatewayError(404, f"Team {team_id[:256]!r} not found.")
    return team


def _membership(team_id: str, user_id: str) -> Membership:
    membership = members.get(team_id, user_id)
    if membership is None:
        _team(team_id)  # a missing team is named as such
        raise admin_error(Refused("missing", "member", user_id, team=team_id))
    return membership


def _member_id(request: MemberRef) -> str:
    """The user a member request names: user_id, else the user with user_email."""
    if request.user_id is not None:
        return request.user_id
    if request.user_email is None:
        raise GatewayError(400, "Name the member: `user_id` or `user_email`.")
    user = users.by_email(request.user_email)
    if user is None:
        raise GatewayError(404, f"No user has user_email {request.user_email!r}.")
    return user.user_id


def _joining(
    team: TeamRecord, named: list[Member], budget: Decimal | None, budget_duration: str | None, now: datetime
) -> list[Joining]:
    """The memberships `named` stands for, with the users to create for members that do not exist yet.

    A member budget's period defaults to the team's, so a monthly team has monthly member budgets.
    """
    duration = budget_duration or (team.budget_duration if budget is not None else None)
    joining: list[Joining] = []
    seen: set[str] = set()
    for member in named:
        user, new_user = _user_of(member), None
        if user is None:
            new_user = UserRecord(
                user_id=member.user_id or str(uuid.uuid4()),
                user_email=member.user_email,
                teams=[team.team_id],
                created_at=now.isoformat(),
                updated_at=now.isoformat(),
            )
        user_id = user.user_id if user is not None else new_user.user_id if new_user is not None else ""
        email = (new_user.user_email or "").lower() if new_user is not None else ""
        if user_id in seen or (email and email in seen):
            raise GatewayError(400, f"member: user {email or user_id!r} is named more than once.")
        seen.update({user_id, email} - {""})
        membership = Membership(
            team_id=team.team_id,
            user_id=user_id,
            role=member.role,
            max_budget=budget,
            budget_duration=duration,
            budget_reset_at=first_reset(duration, now),
            created_at=now.isoformat(),
            updated_at=now.isoformat(),
        )
        joining.append(Joining(membership, new_user))
    return joining


def _user_of(member: Member) -> UserRecord | None:
    if member.user_id is not None:
        return users.get(member.user_id)
    if member.user_email is None:
        raise GatewayError(400, "member: each member needs a `user_id` or a `user_email`.")
    return users.by_email(member.user_email)
