"""What an admin caller may do: LiteLLM's roles, each admin route's check, and the scope of what a caller sees.

  proxy_admin           everything the master key may (the master key is a proxy_admin)
  proxy_admin_viewer    read everything, change nothing
  team admin            (a membership with role "admin") the keys and members of its teams, within the team's limits
  internal_user         its own keys: generate, list, block, regenerate, delete, within its user and team limits
  internal_user_viewer  its own keys and spend, read only

A virtual key acts with its user's role (a key without a user has none); a console session with its person's.
The role and team admin rights are read from the user and its memberships at each request, so a change of role
applies at once. Every refusal is a 403 permission_error that says what is missing.

No caller obtains a credential that acts beyond its own reach. A key acts with its user's role only when its plain
key went to its user or to a proxy_admin: a key that a team admin makes or regenerates for another user, or one
moved to another user by anyone, is `delegated` (KeyRecord.delegated_by): it works on the messages API and has no
role here, until its user (with a credential of their own) or a proxy_admin regenerates it. And a team admin makes,
regenerates or hands keys to, and adds to its teams, no user whose role ranks above its own (proxy_admin_viewer,
proxy_admin).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import anyio.to_thread
from starlette.requests import Request

from .auth import Caller, admin_caller
from .errors import GatewayError
from .storage import members, users
from .storage.key_records import KeyRecord
from .storage.scope_items import ScopeRecord

PROXY_ADMIN, PROXY_ADMIN_VIEWER = "proxy_admin", "proxy_admin_viewer"
INTERNAL_USER, INTERNAL_USER_VIEWER = "internal_user", "internal_user_viewer"
# How far a role reaches: a team admin acts on no user whose role ranks above its own (the others rank 0).
_RANK = {PROXY_ADMIN: 2, PROXY_ADMIN_VIEWER: 1}
# Limits a key may not set above the scopes it belongs to, when a team admin or an internal user sets them.
LIMITS = ("max_budget", "rpm_limit", "tpm_limit", "max_parallel_requests")


@dataclass(frozen=True)
class Access:
    """A caller with what it may reach: its role, its user, and the teams it administers."""

    caller: Caller
    role: str | None  # None: a key without a user (no role on the admin API)
    user_id: str | None = None
    teams: frozenset[str] = frozenset()
    admin_teams: frozenset[str] = frozenset()

    @property
    def is_admin(self) -> bool:
        return self.role == PROXY_ADMIN

    @property
    def reads_all(self) -> bool:
        return self.role in (PROXY_ADMIN, PROXY_ADMIN_VIEWER)

    @property
    def _who(self) -> str:
        if self.role is None:
            return "This key has no user, so no role on the admin API"
        if self.admin_teams:
            return f"Your role ({self.role}, admin of team {', '.join(sorted(self.admin_teams))})"
        return f"Your role ({self.role})"

    def refuse(self, what: str, needs: str) -> GatewayError:
        return GatewayError(403, f"{self._who} cannot {what}: it needs {needs}.")

    # -- whole areas ------------------------------------------------------------------------------------------

    def require_admin(self, what: str) -> None:
        if not self.is_admin:
            raise self.refuse(what, "proxy_admin")

    def require_reader(self, what: str) -> None:
        if not self.reads_all:
            raise self.refuse(what, "proxy_admin or proxy_admin_viewer")

    # -- keys -------------------------------------------------------------------------------------------------

    def owns(self, record: KeyRecord) -> bool:
        return self.user_id is not None and record.user_id == self.user_id

    def may_read_key(self, record: KeyRecord) -> bool:
        return self.reads_all or self.owns(record) or (record.team_id in self.admin_teams)

    def check_read_key(self, record: KeyRecord) -> None:
        if not self.may_read_key(record):
            raise self.refuse(f"read key {record.token}", _KEY_NEEDS)

    def check_manage_key(self, record: KeyRecord, action: str, *, own_allowed: bool = True) -> None:
        """`action` ("block", "delete"...) on an existing key: an admin, its team's admin, or (own_allowed) its
        own user with role internal_user."""
        if self.is_admin or record.team_id in self.admin_teams:
            return
        if own_allowed and self.role == INTERNAL_USER and self.owns(record):
            return
        needs = "proxy_admin, or admin of the key's team" + (", or internal_user owning it" if own_allowed else "")
        raise self.refuse(f"{action} key {record.token}", needs)

    def new_key_owner(self, team_id: str | None, user_id: str | None) -> tuple[str | None, str | None]:
        """The (team_id, user_id) a new key of this caller gets: a team admin's key in its team, an internal
        user's own key (its user by default). 403 for anything else."""
        if self.is_admin:
            return team_id, user_id
        if team_id is not None and team_id in self.admin_teams:
            return team_id, user_id
        if self.role == INTERNAL_USER and user_id in (None, self.user_id):
            if team_id is not None and team_id not in self.teams:
                raise self.refuse(f"create a key in team {team_id!r}", "membership of the team")
            return team_id, self.user_id
        raise self.refuse(
            "create this key", "proxy_admin, admin of the key's team, or internal_user creating its own key"
        )

    def check_outranks(self, user_id: str, role: str | None, what: str) -> None:
        """`what` ("create a key for user", "add to team 'x' user"...) user `user_id` of role `role`: not when
        that role ranks above the caller's (a team admin never acts so on a proxy_admin or proxy_admin_viewer)."""
        if self.is_admin or user_id == self.user_id:
            return
        if _RANK.get(role or "", 0) > _RANK.get(self.role or "", 0):
            raise self.refuse(f"{what} {user_id!r}, whose role is {role}", "proxy_admin")

    def delegation(self, user_id: str | None) -> str | None:
        """Who a plain key this caller makes or regenerates for user `user_id` goes to, besides that user: None
        when the key may act with its user's role (no user; the caller is a proxy_admin, or that user itself),
        else the caller (its audit name), and the key has no role on the admin API."""
        if user_id is None or self.is_admin or user_id == self.user_id:
            return None
        return self.caller.actor

    def check_moves(self, record: KeyRecord, changes: Mapping[str, Any]) -> None:
        """A team admin's /key/update may not take a key out of its teams, or give it to a team it does not run."""
        if self.is_admin:
            return
        new_team = changes.get("team_id", record.team_id)
        if "team_id" in changes and new_team not in self.admin_teams:
            raise self.refuse(f"move key {record.token} to team {new_team!r}", "admin of that team")

    def check_within(self, settings: Mapping[str, Any], scopes: Iterable[tuple[str, ScopeRecord | None]]) -> None:
        """A key's limits set by a team admin or an internal user may not exceed those of the scopes it belongs
        to (a key's budget cannot exceed its team's). The master key and proxy_admin are not bound."""
        if self.is_admin:
            return
        for name, scope in scopes:
            if scope is None:
                continue
            for limit in LIMITS:
                value, bound = settings.get(limit), getattr(scope, limit, None)
                if value is not None and bound is not None and Decimal(value) > Decimal(bound):
                    raise self.refuse(
                        f"set {limit} {value}", f"at most {name}'s {limit} ({bound}) for a key in it (proxy_admin)"
                    )

    # -- teams and users --------------------------------------------------------------------------------------

    def check_team_admin(self, team_id: str, what: str) -> None:
        if not self.is_admin and team_id not in self.admin_teams:
            raise self.refuse(f"{what} of team {team_id!r}", "proxy_admin or admin of that team")

    def check_read_team(self, team_id: str) -> None:
        if not self.reads_all and team_id not in self.admin_teams:
            raise self.refuse(f"read team {team_id!r}", "proxy_admin, proxy_admin_viewer or admin of that team")

    def check_read_user(self, user_id: str) -> None:
        if not self.reads_all and user_id != self.user_id:
            raise self.refuse(f"read user {user_id!r}", "proxy_admin or proxy_admin_viewer (or to be that user)")


_KEY_NEEDS = "proxy_admin, proxy_admin_viewer, admin of the key's team, or to own it"


def resolve(caller: Caller) -> Access:
    """The caller's access, read from its user and memberships (blocking)."""
    if caller.kind == "master":
        return Access(caller=caller, role=PROXY_ADMIN)
    if caller.user_id is None:
        return Access(caller=caller, role=None)
    if caller.key is not None and caller.key.delegated_by is not None:
        raise GatewayError(
            403,
            f"This key of user {caller.user_id!r} was made or given to it by {caller.key.delegated_by}, not by the "
            "user or a proxy_admin: it has no role on the admin API (it works on the messages API). Its user, with "
            "a key or console session of their own, or a proxy_admin can regenerate it to give it the user's role.",
        )
    user = users.get(caller.user_id)
    if user is None or user.deleting:
        raise GatewayError(403, f"User {caller.user_id!r} of this caller no longer exists: it has no role.")
    if user.blocked:
        raise GatewayError(403, f"User {user.user_id!r} is blocked: it has no access to the admin API.")
    admin_teams = {
        team_id
        for team_id in user.teams
        if (membership := members.get(team_id, user.user_id)) is not None and membership.role == "admin"
    }
    return Access(
        caller=caller,
        role=user.user_role,
        user_id=user.user_id,
        teams=frozenset(user.teams),
        admin_teams=frozenset(admin_teams),
    )


async def admin_access(request: Request) -> Access:
    """Router dependency of every admin route: who calls and what it may reach, left in `request.state.access`
    for the route's own checks (and `request.state.caller`, for the audit log)."""
    caller = await admin_caller(request)
    try:
        access = await anyio.to_thread.run_sync(resolve, caller)
    except GatewayError:
        raise
    except Exception:  # DynamoDB unreachable: a fast answer in Anthropic's shape
        raise GatewayError(503, "The gateway cannot read its users right now; retry.") from None
    if access.role is None:
        raise GatewayError(
            403,
            "This key has no user, so no role on the admin API: use the master key, or a key of a user with a "
            "role (user_role).",
        )
    request.state.caller = caller
    request.state.access = access
    return access


def of(request: Request) -> Access:
    """The access `admin_access` resolved for this request."""
    access: Access = request.state.access
    return access
