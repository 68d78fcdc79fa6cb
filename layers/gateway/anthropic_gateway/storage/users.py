"""Users: pk=USER#<user_id> sk=USER (listed by gsi1pk=USER), and pk=EMAIL#<email> sk=EMAIL for unique emails.

A user is a budgeted scope: its budget and limits apply to every request of its keys, whatever team they are in.
`teams` (a string set) lists its teams and changes with its memberships (members.py). Deleting a user deletes
its keys and memberships first, in bounded steps (`Cascade`), with the user marked `deleting` (and blocked) so
nothing joins it meanwhile.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Self

from . import members, table
from .layout import EMAIL_SK, USER_SK, email_pk, list_all, listed, put_new, user_pk
from .members import Membership
from .outcomes import Refused
from .scope_items import Cascade, ScopeRecord, Transaction, change, delete_keys, mark_deleting, remove, why_not
from .scopes import Scope

ROLES = ("proxy_admin", "proxy_admin_viewer", "internal_user", "internal_user_viewer")
DEFAULT_ROLE = "internal_user"


@dataclass(kw_only=True)
class UserRecord(ScopeRecord):
    user_id: str
    user_alias: str | None = None
    user_email: str | None = None
    user_role: str = DEFAULT_ROLE
    teams: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    blocked: bool = False
    deleting: bool = False

    @classmethod
    def from_item(cls, item: table.Item) -> Self:
        record = super().from_item(item)
        record.teams = sorted(item.get("teams") or ())  # a string set in the item
        return record

    @property
    def scope(self) -> Scope:
        return self.as_scope("user", self.user_id, user_pk(self.user_id), USER_SK)

    def to_item(self) -> table.Item:
        item = self.attributes()
        item.pop("teams")
        if self.teams:  # DynamoDB holds no empty set
            item["teams"] = set(self.teams)
        if not self.deleting:
            item.pop("deleting")
        item.update(pk=user_pk(self.user_id), sk=USER_SK, **listed("USER", self.created_at, self.user_id))
        return item


def get(user_id: str) -> UserRecord | None:
    item = table.get(user_pk(user_id), USER_SK)
    return UserRecord.from_item(item) if item is not None else None


def by_email(email: str) -> UserRecord | None:
    pointer = table.get(email_pk(email), EMAIL_SK)
    return get(str(pointer["user_id"])) if pointer is not None else None


def list_users() -> list[UserRecord]:
    """Every user, newest first (one paged Query of gsi1)."""
    return [UserRecord.from_item(item) for item in list_all("USER")]


def add_new(transaction: Transaction, user: UserRecord) -> None:
    """Add to `transaction` the items of a new user: its record and, with an email, the email's claim."""
    transaction.add(put_new(user.to_item()), Refused("exists", "user", user.user_id))
    if user.user_email:
        claim = {"pk": email_pk(user.user_email), "sk": EMAIL_SK, "user_id": user.user_id}
        transaction.add(put_new(claim), Refused("exists", "email", user.user_email))


def create(user: UserRecord, memberships: list[Membership], audit: table.Put | None = None) -> Refused | None:
    """Store a new user (its `teams` already listing the memberships' teams) and its memberships, all or none."""
    transaction = Transaction()
    add_new(transaction, user)
    for membership in memberships:
        members.join(transaction, membership, team_checked=False, user_exists=False)
    transaction.audited(audit)
    # The email in the token too: single sign-on tries again without it when another user has it (sso.py), and
    # DynamoDB refuses a token it saw with other actions.
    refused = transaction.run(idempotency=f"user-new#{user.user_id}#{user.created_at}#{user.user_email or ''}")
    if refused == Refused("exists", "user", user.user_id) and _created_here(user):
        return None  # our own write, retried after its answer was lost
    return refused


def _created_here(user: UserRecord) -> bool:
    stored = get(user.user_id)
    return stored is not None and stored.created_at == user.created_at


def update(user: UserRecord, changes: dict[str, Any], now: str, audit: table.Put | None = None) -> Refused | None:
    """Admin `changes` to the user as read; a new user_email moves its claim in the same transaction."""
    pk = user_pk(user.user_id)
    transaction = Transaction()
    transaction.add(change(pk, USER_SK, user, changes, now, live=True), Refused("conflict"))
    new_email = changes.get("user_email", user.user_email)
    if "user_email" in changes and (new_email or "").lower() != (user.user_email or "").lower():
        if new_email:
            claim = {"pk": email_pk(new_email), "sk": EMAIL_SK, "user_id": user.user_id}
            transaction.add(put_new(claim), Refused("exists", "email", new_email))
        if user.user_email:
            transaction.add(table.Delete(email_pk(user.user_email), EMAIL_SK))
    transaction.audited(audit)
    refused = transaction.run()
    if refused is not None and refused.reason == "conflict":
        return why_not(pk, USER_SK, Refused("missing", "user", user.user_id))
    return refused


def delete(user_id: str, cascade: Cascade, now: str, audit: table.Put | None = None) -> Refused | None:
    """Delete the user with its keys, its memberships and its email's claim. Refused("unfinished") when the
    cascade's bound was reached first: the user stays marked (blocked) and the next call carries on."""
    pk = user_pk(user_id)
    if not mark_deleting(pk, USER_SK, now, audit):
        return why_not(pk, USER_SK, Refused("missing", "user", user_id))  # gone, or its audit entry failed
    if (refused := delete_keys(pk, cascade, Refused("unfinished", "user", user_id))) is not None:
        return refused
    user = get(user_id)
    for team_id in user.teams if user else ():
        if not cascade.take():
            return Refused("unfinished", "user", user_id)
        if (refused := members.leave(team_id, user_id)) is not None and refused.reason != "missing":
            return refused
        cascade.members += 1
    if user is not None and user.user_email:
        remove(email_pk(user.user_email), EMAIL_SK)
    remove(pk, USER_SK)
    return None
