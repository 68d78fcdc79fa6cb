"""Teams, memberships, users and tags as the admin API answers them, in LiteLLM's field names, money exact.

The readers here are blocking (worker threads): a team's view reads its members and counts its keys (two
Queries of its own partition), and every budget period that ended while its scope was idle starts over first,
so `spend` shows what counts now.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from . import money_fields
from .key_routes import KeyInfo
from .org_api import MAX_SHOWN_KEYS, BudgetView, budget_fields, fresh
from .storage import key_links, key_records, members, tags, teams, users
from .storage.layout import TAG_SK, TEAM_SK, USER_SK, member_sk, tag_pk, team_pk, user_pk
from .storage.members import Membership
from .storage.tags import TagRecord
from .storage.teams import TeamRecord
from .storage.users import UserRecord


class MemberRole(BaseModel):
    user_id: str
    role: str  # admin | user


# Pydantic lists a base's fields first: each view's identity is its last base, so it comes first in the JSON.


class _Team(BaseModel):
    team_id: str
    team_alias: str | None


class _User(BaseModel):
    user_id: str
    user_alias: str | None
    user_email: str | None
    user_role: str


class _Tag(BaseModel):
    name: str
    description: str | None


class TeamInfo(BudgetView, _Team):
    tags: list[str]  # added to every request of the team's keys
    metadata: dict[str, Any]
    blocked: bool
    members_with_roles: list[MemberRole]
    key_count: int


class MemberInfo(BaseModel):
    """A membership: the user's role and its own budget in the team (LiteLLM's team_memberships entries)."""

    team_id: str
    user_id: str
    role: str
    max_budget_in_team: money_fields.Amount | None
    budget_duration: str | None
    budget_reset_at: str | None
    spend: money_fields.Amount  # the member's spend in this team, in the current period
    total_spend: money_fields.Amount
    reserved_spend: money_fields.Amount
    litellm_budget_table: dict[str, Any] | None  # LiteLLM's shape of the same budget
    created_at: str
    updated_at: str


class UserInfo(BudgetView, _User):
    teams: list[str]
    metadata: dict[str, Any]
    blocked: bool


class TagInfo(BudgetView, _Tag):
    litellm_budget_table: dict[str, Any] | None


def team_info(team: TeamRecord, memberships: list[Membership], key_count: int) -> TeamInfo:
    return TeamInfo(
        **budget_fields(team),
        team_id=team.team_id,
        team_alias=team.team_alias,
        tags=team.tags,
        metadata=team.metadata,
        blocked=team.blocked,
        members_with_roles=[MemberRole(user_id=m.user_id, role=m.role) for m in memberships],
        key_count=key_count,
    )


def member_info(membership: Membership) -> MemberInfo:
    budget = None
    if membership.max_budget is not None:
        budget = {"max_budget": membership.max_budget, "budget_duration": membership.budget_duration}
    return MemberInfo(
        team_id=membership.team_id,
        user_id=membership.user_id,
        role=membership.role,
        max_budget_in_team=membership.max_budget,
        budget_duration=membership.budget_duration,
        budget_reset_at=membership.budget_reset_at,
        spend=membership.spend,
        total_spend=membership.total_spend,
        reserved_spend=membership.reserved,
        litellm_budget_table=budget,
        created_at=membership.created_at,
        updated_at=membership.updated_at,
    )


def user_info(user: UserRecord) -> UserInfo:
    return UserInfo(
        **budget_fields(user),
        user_id=user.user_id,
        user_alias=user.user_alias,
        user_email=user.user_email,
        user_role=user.user_role,
        teams=user.teams,
        metadata=user.metadata,
        blocked=user.blocked,
    )


def tag_info(tag: TagRecord) -> TagInfo:
    limits = {
        "max_budget": tag.max_budget,
        "budget_duration": tag.budget_duration,
        "rpm_limit": tag.rpm_limit,
        "tpm_limit": tag.tpm_limit,
        "max_parallel_requests": tag.max_parallel_requests,
    }
    shown = limits if any(value is not None for value in limits.values()) else None
    return TagInfo(**budget_fields(tag), name=tag.name, description=tag.description, litellm_budget_table=shown)


# -- blocking readers ---------------------------------------------------------------------------------------------


def fresh_team(team: TeamRecord) -> TeamRecord:
    return fresh(team, team_pk(team.team_id), TEAM_SK, lambda: teams.get(team.team_id))


def fresh_user(user: UserRecord) -> UserRecord:
    return fresh(user, user_pk(user.user_id), USER_SK, lambda: users.get(user.user_id))


def fresh_tag(tag: TagRecord) -> TagRecord:
    return fresh(tag, tag_pk(tag.name), TAG_SK, lambda: tags.get(tag.name))


def fresh_member(membership: Membership) -> Membership:
    team_id, user_id = membership.team_id, membership.user_id
    return fresh(membership, team_pk(team_id), member_sk(user_id), lambda: members.get(team_id, user_id))


def team_view(team: TeamRecord) -> TeamInfo:
    """The team with its members and key count, its period current."""
    memberships = members.of_team(team.team_id)
    return team_info(fresh_team(team), memberships, teams.key_count(team.team_id))


def team_memberships(team_id: str) -> list[MemberInfo]:
    return [member_info(fresh_member(membership)) for membership in members.of_team(team_id)]


def keys_under(pk: str, **owner: str) -> tuple[list[KeyInfo], int]:
    """The keys indexed under a team's or user's partition (at most MAX_SHOWN_KEYS of them) and how many."""
    ids = key_links.key_ids(pk, **owner)
    shown = [record for key_id in ids[:MAX_SHOWN_KEYS] if (record := key_records.load_by_key_id(key_id)) is not None]
    return [KeyInfo.of(record) for record in shown], len(ids)
