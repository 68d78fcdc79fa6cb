"""Which keys belong to a team or a user: index items written in the key record's own transaction (key_records.py).

  pk=TEAM#<team_id> sk=KEY#<key_id>  {key_id, user_id}   a key of the team
  pk=USER#<user_id> sk=KEY#<key_id>  {key_id, team_id}   a key of the user

A team's or a user's keys are then one Query of its partition, never a scan of every key, and they are exactly
the keys whose record names it: a key joins, moves and leaves in the same transaction as its record changes.
A key joins a team or a user only while that exists and is not being deleted, and a key with both only when the
user is a member of the team: conditions of that same transaction, so a deleted team never gets a key.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import table
from .layout import KEY_PREFIX, TEAM_SK, USER_SK, check_live, delete, member_sk, partition, team_pk, user_pk
from .outcomes import CONFLICT, Refused


@dataclass
class Links:
    """The actions that move a key between owners, and what each one's failed condition means."""

    actions: list[table.Action] = field(default_factory=list)
    meanings: list[Refused] = field(default_factory=list)

    def add(self, action: table.Action, if_failed: Refused = CONFLICT) -> None:
        self.actions.append(action)
        self.meanings.append(if_failed)

    def refusal(self, failed: list[int]) -> Refused:
        """The outcome for the failed actions (indexes into `actions`): the first one's meaning."""
        return self.meanings[min(failed)]


def relink(key_id: str, old: tuple[str | None, str | None], new: tuple[str | None, str | None]) -> Links:
    """The actions that take key `key_id` from owners `old` (team_id, user_id) to `new`: checks that the new
    team and user exist (and the membership, with both), index items put and deleted. Nothing for no change."""
    links = Links()
    if old == new:
        return links
    (old_team, old_user), (team_id, user_id) = old, new
    if team_id is not None:
        links.add(check_live(team_pk(team_id), TEAM_SK), Refused("missing", "team", team_id))
    if user_id is not None:
        links.add(check_live(user_pk(user_id), USER_SK), Refused("missing", "user", user_id))
    if team_id is not None and user_id is not None:
        links.add(_check_member(team_id, user_id), Refused("not_member", "user", user_id, team=team_id))
    # One action per item: an index item that stays (same team, new user) is overwritten, never deleted and put.
    if old_team is not None and old_team != team_id:
        links.add(delete(team_pk(old_team), KEY_PREFIX + key_id))
    if team_id is not None:
        links.add(_put(team_pk(team_id), key_id, user_id=user_id))
    if old_user is not None and old_user != user_id:
        links.add(delete(user_pk(old_user), KEY_PREFIX + key_id))
    if user_id is not None:
        links.add(_put(user_pk(user_id), key_id, team_id=team_id))
    return links


def unlink(key_id: str, team_id: str | None, user_id: str | None) -> list[table.Action]:
    """The deletes of a key's index items, for the transaction that deletes the key."""
    return relink(key_id, (team_id, user_id), (None, None)).actions


def _check_member(team_id: str, user_id: str) -> table.ConditionCheck:
    return table.ConditionCheck(team_pk(team_id), member_sk(user_id), "attribute_exists(pk)")


def _put(pk: str, key_id: str, **owner: str | None) -> table.Put:
    item: table.Item = {"pk": pk, "sk": KEY_PREFIX + key_id, "key_id": key_id}
    item.update({name: value for name, value in owner.items() if value is not None})
    return table.Put(item)


def key_ids(pk: str, **owner: str) -> list[str]:
    """The ids of the keys indexed in partition `pk` (a team's or a user's), optionally only those whose index
    item names `owner` (user_id=... in a team, team_id=... of a user)."""
    items = partition(pk, KEY_PREFIX)
    return [str(item["key_id"]) for item in items if all(item.get(name) == value for name, value in owner.items())]
