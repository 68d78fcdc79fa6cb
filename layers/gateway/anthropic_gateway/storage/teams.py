"""Teams: pk=TEAM#<team_id> sk=TEAM (listed by gsi1pk=TEAM), with their memberships and key index in the same
partition (members.py, key_links.py).

A team is a budgeted scope: its budget and limits apply to every request of its keys, together. Creating a team
with members, and adding members, create missing users on the way (as LiteLLM does) in the same transaction.
Deleting a team deletes its keys and memberships first, in bounded steps (`Cascade`), with the team marked
`deleting` (and blocked) so no key or member joins it meanwhile.

A `TeamRegistry` keeps the teams in a runtime's memory (storage/registry.py; runtime.py holds one, and the admin
routes keep it current after their writes), so metrics read which team ids exist without I/O: a team is a
CloudWatch `Team` dimension value of its own, up to MAX_DIMENSION_TEAMS (the oldest teams).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..settings import Settings
from . import members, table, users
from .layout import KEY_PREFIX, TEAM_SK, list_all, listed, partition, put_new, team_pk
from .members import Membership
from .outcomes import Refused
from .registry import Registry
from .scope_items import Cascade, ScopeRecord, Transaction, apply, change, delete_keys, mark_deleting, remove, why_not
from .scopes import Scope
from .users import UserRecord

# Each team in the registry is a CloudWatch dimension value (about 10 custom metrics, billed monthly). Teams are
# created by admins, so their number is the operator's; past this many, newer teams are counted as `other`.
MAX_DIMENSION_TEAMS = 1000


@dataclass(kw_only=True)
class TeamRecord(ScopeRecord):
    team_id: str
    team_alias: str | None = None
    tags: list[str] = field(default_factory=list)  # added to every request of the team's keys
    metadata: dict[str, Any] = field(default_factory=dict)
    blocked: bool = False
    deleting: bool = False

    @property
    def scope(self) -> Scope:
        return self.as_scope("team", self.team_id, team_pk(self.team_id), TEAM_SK)

    def to_item(self) -> table.Item:
        item = self.attributes()
        if not self.deleting:
            item.pop("deleting")
        item.update(pk=team_pk(self.team_id), sk=TEAM_SK, **listed("TEAM", self.created_at, self.team_id))
        return item


@dataclass(frozen=True)
class Joining:
    """A user joining a team: the membership, and the user's record when the user is new (created with it)."""

    membership: Membership
    new_user: UserRecord | None = None


def get(team_id: str) -> TeamRecord | None:
    item = table.get(team_pk(team_id), TEAM_SK)
    return TeamRecord.from_item(item) if item is not None else None


def list_teams() -> list[TeamRecord]:
    """Every team, newest first (one paged Query of gsi1)."""
    return [TeamRecord.from_item(item) for item in list_all("TEAM")]


def key_count(team_id: str) -> int:
    return len(partition(team_pk(team_id), KEY_PREFIX))


def create(team: TeamRecord, joining: list[Joining], audit: table.Put | None = None) -> Refused | None:
    """Store a new team with its first members, all or none (with `audit`, its audit entry)."""
    transaction = Transaction()
    transaction.add(put_new(team.to_item()), Refused("exists", "team", team.team_id))
    _join(transaction, joining, team_checked=True)
    transaction.audited(audit)
    refused = transaction.run(idempotency=f"team-new#{team.team_id}#{team.created_at}")
    if refused == Refused("exists", "team", team.team_id):
        stored = get(team.team_id)
        if stored is None or stored.created_at != team.created_at:
            return refused
        refused = None  # our own write, retried after its answer was lost
    return refused


def add_members(team_id: str, joining: list[Joining], now: str, audit: table.Put | None = None) -> Refused | None:
    """Make users members of the team (creating the new ones), all or none, while the team is not being deleted."""
    transaction = Transaction()
    _join(transaction, joining, team_checked=False)
    transaction.audited(audit)
    return transaction.run(idempotency=f"member-add#{team_id}#{now}#" + ",".join(j.membership.user_id for j in joining))


def _join(transaction: Transaction, joining: list[Joining], *, team_checked: bool) -> None:
    for index, join in enumerate(joining):
        if join.new_user is not None:
            users.add_new(transaction, join.new_user)
        # The team is checked once per transaction: DynamoDB takes one action per item.
        members.join(
            transaction, join.membership, team_checked=team_checked or index > 0, user_exists=join.new_user is None
        )


def update(team: TeamRecord, changes: dict[str, Any], now: str, audit: table.Put | None = None) -> Refused | None:
    """Admin `changes` to the team as read, unless it is being deleted."""
    pk = team_pk(team.team_id)
    if not apply(change(pk, TEAM_SK, team, changes, now, live=True), audit):
        return why_not(pk, TEAM_SK, Refused("missing", "team", team.team_id))
    return None


def delete(team_id: str, cascade: Cascade, now: str, audit: table.Put | None = None) -> Refused | None:
    """Delete the team with its keys and memberships. Refused("unfinished") when the cascade's bound was reached
    first: the team stays marked (blocked) and the next call carries on."""
    pk = team_pk(team_id)
    if not mark_deleting(pk, TEAM_SK, now, audit):
        return why_not(pk, TEAM_SK, Refused("missing", "team", team_id))  # gone, or its audit entry failed
    if (refused := delete_keys(pk, cascade, Refused("unfinished", "team", team_id))) is not None:
        return refused
    for membership in members.of_team(team_id):
        if not cascade.take():
            return Refused("unfinished", "team", team_id)
        if (refused := members.leave(team_id, membership.user_id)) is not None and refused.reason != "missing":
            return refused
        cascade.members += 1
    remove(pk, TEAM_SK)
    return None


class TeamRegistry(Registry[TeamRecord]):
    """The teams as a runtime last read them (at most MAX_DIMENSION_TEAMS, oldest first): registry.py."""

    def __init__(self, settings: Settings) -> None:
        ttl = settings.key_cache_ttl
        super().__init__("team-registry", _oldest_first, lambda team: team.team_id, MAX_DIMENSION_TEAMS, ttl)


def _oldest_first() -> list[TeamRecord]:
    return list(reversed(list_teams()))
