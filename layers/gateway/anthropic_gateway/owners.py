"""The team, user and membership a key belongs to, as the request path reads them: cached like key records.

A key record names its team and its user (`team_id`, `user_id`); every request of the key is governed by them too
(governance.scopes). Their records (limits, models, default tags, blocked) are cached per runtime (`OwnersCache`,
runtime.py holds it) by (pk, sk) for KEY_CACHE_TTL, as key records are, absent ones included, at most
`MAX_ENTRIES`: a warm request reads none of them. A cold one reads what is missing, at most the team, the user and
the membership, in one BatchGetItem, under the request's AWS deadline (auth.py), shared by the requests that need
the same records at that moment. A change made through this runtime's admin API applies here at once (`forget`);
one made on another instance within KEY_CACHE_TTL. The admin API reads them from the table at each request
(`load(fresh=True)`, auth.admin_caller). Budgets do not wait for the cache: every budget hold is
conditional on the record as it is now.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .keys import RecordCache
from .settings import Settings
from .storage import table
from .storage.key_records import KeyRecord
from .storage.layout import TEAM_SK, USER_SK, member_sk, team_pk, user_pk
from .storage.members import Membership
from .storage.teams import TeamRecord
from .storage.users import UserRecord

MAX_ENTRIES = 10_000  # teams, users and memberships are admin-made: this bounds memory, not what clients send

Record = TeamRecord | UserRecord | Membership


@dataclass(frozen=True)
class Owners:
    """The records of a key's team, user and membership, as cached (None: the key has none, or it is gone)."""

    team: TeamRecord | None = None
    user: UserRecord | None = None
    member: Membership | None = None


def needed(record: KeyRecord) -> list[tuple[str, str]]:
    """The (pk, sk) of the records a request of this key is governed by, besides the key's own."""
    wanted = []
    if record.team_id is not None:
        wanted.append((team_pk(record.team_id), TEAM_SK))
    if record.user_id is not None:
        wanted.append((user_pk(record.user_id), USER_SK))
    if record.team_id is not None and record.user_id is not None:
        wanted.append((team_pk(record.team_id), member_sk(record.user_id)))
    return wanted


def described(record: KeyRecord) -> str:
    """What `needed` reads, as an error names it: "team 'search', user 'ana' and their membership"."""
    named = [f"{kind} {name!r}" for kind, name in (("team", record.team_id), ("user", record.user_id)) if name]
    if record.team_id is not None and record.user_id is not None:
        return f"{named[0]}, {named[1]} and their membership"
    return " and ".join(named)


class OwnersCache:
    """One runtime's teams, users and memberships, as its requests read them (see the module's docstring)."""

    def __init__(self, settings: Settings) -> None:
        self._cache: RecordCache[tuple[str, str], Record] = RecordCache(settings, MAX_ENTRIES)

    def cached(self, record: KeyRecord) -> Owners | None:
        """The key's owners from the cache without I/O, or None when one of them is not cached (or has expired)."""
        return self._read(record, self._cache.get)

    def stale(self, record: KeyRecord) -> Owners | None:
        """The key's owners as cached, expired no longer than AWS_STALE_SECONDS ago: for outages only."""
        return self._read(record, self._cache.stale)

    def _read(
        self, record: KeyRecord, lookup: Callable[[tuple[str, str]], tuple[bool, Record | None]]
    ) -> Owners | None:
        found: dict[tuple[str, str], Record | None] = {}
        for place in needed(record):
            hit, owner = lookup(place)
            if not hit:
                return None
            found[place] = owner
        return _owners(record, found)

    def load(self, record: KeyRecord, *, fresh: bool = False) -> Owners:
        """Blocking. The key's owners: what is cached, and what is not read in one BatchGetItem and cached; with
        `fresh`, all of them read (the admin API: a change made on any instance applies at once)."""
        found: dict[tuple[str, str], Record | None] = {}
        missing = []
        for place in needed(record):
            hit, owner = (False, None) if fresh else self._cache.get(place)
            if hit:
                found[place] = owner
            else:
                missing.append(place)
        if missing:
            items = table.get_many(missing)
            for place in missing:
                item = items.get(place)
                found[place] = _record(place, item) if item is not None else None
                self._cache.put(place, found[place])
        return _owners(record, found)

    def forget(self) -> None:
        """Drop every cached team, user and membership: an admin change made here applies here at once."""
        self._cache.invalidate()


def _record(place: tuple[str, str], item: table.Item) -> Record:
    if place[1] == TEAM_SK:
        return TeamRecord.from_item(item)
    if place[1] == USER_SK:
        return UserRecord.from_item(item)
    return Membership.from_item(item)


def _owners(record: KeyRecord, found: dict[tuple[str, str], Record | None]) -> Owners:
    team = found.get((team_pk(record.team_id), TEAM_SK)) if record.team_id is not None else None
    user = found.get((user_pk(record.user_id), USER_SK)) if record.user_id is not None else None
    member = None
    if record.team_id is not None and record.user_id is not None:
        member = found.get((team_pk(record.team_id), member_sk(record.user_id)))
    return Owners(
        team=team if isinstance(team, TeamRecord) else None,
        user=user if isinstance(user, UserRecord) else None,
        member=member if isinstance(member, Membership) else None,
    )
