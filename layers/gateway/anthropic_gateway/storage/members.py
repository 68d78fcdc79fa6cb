"""Team memberships: pk=TEAM#<team_id> sk=MEMBER#<user_id>, a user's role and own budget in a team.

A membership is a budgeted scope of its own (its max_budget is the API's `max_budget_in_team`). The user's item
lists its teams (`teams`, a string set): joining and leaving change both items in one transaction, joining only
while the team and the user exist and are not being deleted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import table
from .layout import MEMBER_PREFIX, TEAM_SK, USER_SK, check_live, member_sk, partition, put_new, team_pk, user_pk
from .outcomes import Refused
from .scope_items import ScopeRecord, Transaction, apply, change, why_not
from .scopes import Scope

ROLES = ("admin", "user")


@dataclass(kw_only=True)
class Membership(ScopeRecord):
    team_id: str
    user_id: str
    role: str = "user"

    @property
    def scope(self) -> Scope:
        """The user's budget in the team (`max_budget_in_team`)."""
        pk, sk = team_pk(self.team_id), member_sk(self.user_id)
        return self.as_scope("member", self.user_id, pk, sk, within=self.team_id)

    def to_item(self) -> table.Item:
        item = self.attributes()
        item.update(pk=team_pk(self.team_id), sk=member_sk(self.user_id))
        return item


def join(transaction: Transaction, membership: Membership, *, team_checked: bool, user_exists: bool) -> None:
    """Add to `transaction` what makes the user a member: the membership item; the team checked live (unless the
    transaction creates or checks it already); for a user that exists, the team added to its `teams` (a new user's
    item, written by the caller, lists it already)."""
    team_id, user_id = membership.team_id, membership.user_id
    if not team_checked:
        transaction.add(check_live(team_pk(team_id), TEAM_SK), Refused("missing", "team", team_id))
    transaction.add(put_new(membership.to_item()), Refused("exists", "member", user_id, team=team_id))
    if user_exists:
        transaction.add(_teams_update(user_id, "ADD", team_id, live=True), Refused("missing", "user", user_id))


def leave(team_id: str, user_id: str, audit: table.Put | None = None) -> Refused | None:
    """Remove the membership, and the team from the user's `teams` (with `audit`, the change's audit entry)."""
    gone = Refused("missing", "member", user_id, team=team_id)
    member = table.Delete(team_pk(team_id), member_sk(user_id), "attribute_exists(pk)")
    transaction = Transaction()
    transaction.add(member, gone)
    transaction.add(_teams_update(user_id, "DELETE", team_id, live=False), Refused("missing", "user", user_id))
    transaction.audited(audit)
    refused = transaction.run()
    if refused is None or refused.what != "user":
        return refused
    # No user item: a membership never outlives its user (a user's delete removes its memberships first), but if
    # one ever did, it must still be removable, or its team could never be deleted.
    alone = Transaction()
    alone.add(member, gone)
    alone.audited(audit)
    return alone.run()


def _teams_update(user_id: str, verb: str, team_id: str, *, live: bool) -> table.Update:
    condition = "attribute_exists(pk)" + (" AND attribute_not_exists(#deleting)" if live else "")
    names = {"#teams": "teams", **({"#deleting": "deleting"} if live else {})}
    return table.Update(user_pk(user_id), USER_SK, f"{verb} #teams :team", condition, names, {":team": {team_id}})


def get(team_id: str, user_id: str) -> Membership | None:
    item = table.get(team_pk(team_id), member_sk(user_id))
    return Membership.from_item(item) if item is not None else None


def of_team(team_id: str) -> list[Membership]:
    """The team's memberships, by user id."""
    return [Membership.from_item(item) for item in partition(team_pk(team_id), MEMBER_PREFIX)]


def update(membership: Membership, changes: dict[str, Any], now: str, audit: table.Put | None = None) -> Refused | None:
    """Admin `changes` to the membership as read (role, max_budget, budget period)."""
    pk, sk = team_pk(membership.team_id), member_sk(membership.user_id)
    if apply(change(pk, sk, membership, changes, now), audit):
        return None
    return why_not(pk, sk, Refused("missing", "member", membership.user_id, team=membership.team_id))
