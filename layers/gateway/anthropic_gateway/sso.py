"""Single sign-on: who a verified ID token says a person is, the user the gateway keeps for them, and their
short-lived personal keys (docs/access.md).

A person's user id is the token's `sub` (stable at the provider, never reassigned; an email can change hands).
Their role comes from OIDC_ROLE_CLAIM when the token carries a known role there, else from the most powerful role
OIDC_GROUP_ROLES gives one of their groups; their teams from OIDC_GROUP_TEAMS. The first sign-in creates the user
(the role mapped, or OIDC_DEFAULT_ROLE), with the email and name the token gives; each later sign-in brings the role
back to what the groups map (when they map one: a role set by an admin stays otherwise) and joins the mapped teams
the user is not in yet. Nothing here removes a membership: leaving a group at the provider is an admin's
/team/member_delete away, as for anyone.

A user whose email another user already holds is created without it: emails are not proof of identity at every
provider (Entra ID lets people edit theirs), so a token never takes over a user an admin made.

Every change a sign-in makes is in the audit log, in the change's own transaction, with the actor `idp:<subject>`
(audit.py's `by_provider`): the user created (`user.create`, its teams included), a role set back to what the
groups map (`user.update`), each mapped team joined (`team.member_add`), and each personal key issued
(`key.generate`) or revoked to free its slot (`key.delete`), by its public hash only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any, Protocol

from aws_lambda_powertools import Logger

from . import audit, keys, oidc
from .aws import AwsCalls, Unavailable
from .errors import GatewayError
from .keys import KeyCache
from .secrets import Secrets
from .settings import ROLES, OidcSettings, Settings
from .storage import key_records, table, teams, users
from .storage.audit import Entry
from .storage.key_records import KeyRecord
from .storage.members import Membership
from .storage.outcomes import Refused
from .storage.teams import Joining
from .storage.users import UserRecord

logger = Logger(child=True)

# Personal keys take one of this many key aliases per user (`personal:<user id>:<slot>`): a new key goes into a
# free slot, else one whose key expired, else the oldest (whose key is revoked). So a person has at most this
# many personal keys, whatever calls a script makes, and each device (which holds one key, two while it renews)
# keeps working beside the others.
PERSONAL_KEY_SLOTS = 8
PERSONAL_MARK = "personal_key"  # metadata of a personal key: {"personal_key": true}
_ROLE_RANK = {role: rank for rank, role in enumerate(ROLES)}  # ROLES lists the most powerful first
_MAX_ID = 256  # a user id is at most this long (the user API's bound)
_CONFLICT = "invalid_request_error"  # 409 has no Anthropic error type of its own


class Parts(Protocol):
    """What single sign-on uses of the running gateway (runtime.py's `Runtime` has them)."""

    settings: Settings
    aws: AwsCalls
    secrets: Secrets
    key_cache: KeyCache


@dataclass(frozen=True)
class Identity:
    """A person as their ID token describes them, the gateway's mappings applied."""

    user_id: str
    email: str | None
    name: str | None
    role: str | None  # the role the token maps to; None: it maps none
    teams: tuple[str, ...]  # the teams its groups map to


def configured(settings: Settings) -> OidcSettings:
    """The runtime's single sign-on settings; 404 when it has none."""
    oidc_settings = settings.oidc
    if oidc_settings is None:
        raise GatewayError(404, "Single sign-on is not configured on this gateway (OIDC_ISSUER).")
    return oidc_settings


_clients: dict[tuple[str, str], oidc.OidcClient] = {}


def client(oidc_settings: OidcSettings) -> oidc.OidcClient:
    """The process's client for the configured issuer (its discovery and keys are cached there)."""
    key = (oidc_settings.issuer, oidc_settings.client_id)
    found = _clients.get(key)
    if found is None:
        found = _clients[key] = oidc.OidcClient(*key)
    return found


async def client_secret(secrets: Secrets, oidc_settings: OidcSettings) -> str | None:
    return await secrets.get(oidc_settings.client_secret_name) if oidc_settings.client_secret_name else None


def provider_error(exc: oidc.OidcError) -> GatewayError:
    """What the caller is told when the provider or its token failed (the reason, never a token)."""
    if isinstance(exc, oidc.InvalidToken):
        return GatewayError(401, f"Single sign-on refused: {exc}.")
    if isinstance(exc, oidc.Refused):
        return GatewayError(401, f"Single sign-on refused by the identity provider: {exc}.")
    return GatewayError(503, f"The identity provider could not be reached ({exc}); retry.")


async def verified_identity(oidc_settings: OidcSettings, token: str, *, nonce: str | None) -> Identity:
    """The person an ID token names, once it is verified (401 when it is not, 503 when the provider is down)."""
    try:
        claims = await client(oidc_settings).verify_id_token(token, nonce=nonce)
    except oidc.OidcError as exc:
        raise provider_error(exc) from None
    return identity_of(claims, oidc_settings)


def identity_of(claims: dict[str, Any], oidc_settings: OidcSettings) -> Identity:
    subject = str(claims["sub"])
    if len(subject) > _MAX_ID or not subject.isprintable() or any(character.isspace() for character in subject):
        raise GatewayError(401, "Single sign-on refused: the ID token's subject cannot be a user id.")
    groups = _strings(claims.get(oidc_settings.groups_claim))
    role = None
    if oidc_settings.role_claim is not None:
        claimed = [value for value in _strings(claims.get(oidc_settings.role_claim)) if value in ROLES]
        role = min(claimed, key=_ROLE_RANK.__getitem__) if claimed else None
    if role is None:
        mapped = [oidc_settings.group_roles[group] for group in groups if group in oidc_settings.group_roles]
        role = min(mapped, key=_ROLE_RANK.__getitem__) if mapped else None
    team_ids = [team for group in groups for team in oidc_settings.group_teams.get(group, ())]
    email = claims.get("email")
    name = claims.get("name") or claims.get("preferred_username")
    return Identity(
        user_id=subject,
        email=email if isinstance(email, str) and 0 < len(email) <= 254 and email.isprintable() else None,
        name=name[:256] if isinstance(name, str) and name.isprintable() and name else None,
        role=role,
        teams=tuple(dict.fromkeys(team_ids)),
    )


def _strings(value: object) -> list[str]:
    """A claim as a list of strings: a list of them, or one string (some providers send a single group so)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [item for item in value if isinstance(item, str)]
    return []


# -- the person's user ---------------------------------------------------------------------------------------------


async def signed_in_user(runtime: Parts, identity: Identity) -> UserRecord:
    """The person's user, created at their first sign-in and brought in line with their groups at each; 403 when
    it is blocked or being deleted."""
    try:
        user = await runtime.aws.call(provision, runtime.settings, identity)
    except Unavailable:
        raise GatewayError(503, "The gateway cannot read its users right now; retry.") from None
    if user.blocked or user.deleting:
        raise GatewayError(403, f"User {user.user_id!r} is blocked: ask an admin of the gateway.")
    return user


def provision(settings: Settings, identity: Identity) -> UserRecord:
    """Blocking (DynamoDB). The user `identity` names, created or synced (see the module's docstring), each change
    audited."""
    for _ in range(3):  # a concurrent first sign-in or change: read again
        user = users.get(identity.user_id)
        refused = _create(settings, identity) if user is None else _sync(settings, user, identity)
        if refused is None:
            found = users.get(identity.user_id)
            if found is not None:
                return found
    raise GatewayError(409, "Your user changed while signing in; sign in again.", error_type=_CONFLICT)


def _create(settings: Settings, identity: Identity) -> Refused | None:
    now = keys.utcnow().isoformat()
    team_ids = _joinable(identity.teams)
    user = UserRecord(
        user_id=identity.user_id,
        user_alias=identity.name,
        user_email=identity.email,
        user_role=identity.role or configured(settings).default_role,
        teams=team_ids,
        metadata={"sso": True},
        created_at=now,
        updated_at=now,
    )
    memberships = [Membership(team_id=team, user_id=user.user_id, created_at=now, updated_at=now) for team in team_ids]
    refused = _audited(settings, _new_user_entry(user), partial(users.create, user, memberships))
    if refused is not None and refused.what == "email":
        logger.warning("sso user created without its email, which another user has", extra={"user_id": user.user_id})
        user.user_email = None
        refused = _audited(settings, _new_user_entry(user), partial(users.create, user, memberships))
    if refused is not None and refused.what == "team":  # a mapped team deleted meanwhile: the next try skips it
        return refused
    if refused is not None and refused.reason == "exists" and refused.what == "user":
        return None  # created by a concurrent sign-in
    return refused


def _sync(settings: Settings, user: UserRecord, identity: Identity) -> Refused | None:
    now = keys.utcnow().isoformat()
    subject = identity.user_id
    if identity.role is not None and identity.role != user.user_role:
        changes = {"user_role": identity.role}
        before, after = audit.changed(audit.fields(user), changes)
        entry = audit.by_provider(subject, "user.update", audit.user_target(user.user_id), before, after)
        refused = _audited(settings, entry, partial(users.update, user, changes, now))
        if refused is not None:
            return refused
    missing = [team for team in _joinable(identity.teams) if team not in user.teams]
    for team_id in missing:
        joining = Joining(Membership(team_id=team_id, user_id=user.user_id, created_at=now, updated_at=now))
        # As /team/member_add records a join (team_routes.py): the members added, none of them a new user.
        added = {"members": [{**audit.fields(joining.membership), "new_user": False}]}
        entry = audit.by_provider(subject, "team.member_add", audit.team_target(team_id), None, added)
        refused = _audited(settings, entry, partial(teams.add_members, team_id, [joining], now))
        if refused is not None and refused.reason != "exists":  # exists: joined by a concurrent sign-in
            return refused
    return None


def _new_user_entry(user: UserRecord) -> Entry:
    """A user's creation at its first sign-in, as /user/new records one: all its settings, its teams included."""
    return audit.by_provider(user.user_id, "user.create", audit.user_target(user.user_id), None, audit.fields(user))


def _audited(settings: Settings, entry: Entry, write: Callable[[table.Put], Refused | None]) -> Refused | None:
    """`write` (a storage write, given its audit action last) a change with `entry` in its transaction; the entry
    logged once the change was stored."""
    refused = write(audit.put(settings, entry))
    if refused is None:
        audit.written(entry)
    return refused


def _joinable(team_ids: tuple[str, ...]) -> list[str]:
    """The mapped teams that exist (a mapping naming a team nobody created is logged, not fatal)."""
    found = []
    for team_id in team_ids:
        team = teams.get(team_id)
        if team is None or team.deleting:
            logger.warning("OIDC_GROUP_TEAMS names a team that does not exist", extra={"team_id": team_id})
        else:
            found.append(team_id)
    return found


# -- personal keys -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PersonalKey:
    key: str  # the plain key, shown once
    record: KeyRecord
    revoked: str | None  # the hash of the key its slot held, if that one still worked


async def issue_personal_key(runtime: Parts, user: UserRecord, team_id: str | None) -> PersonalKey:
    """A new key for `user` that expires after PERSONAL_KEY_HOURS, in `team_id` (one of the user's teams), or in
    the user's only team when there is one and none is named."""
    if team_id is not None and team_id not in user.teams:
        raise GatewayError(403, f"You are not a member of team {team_id[:256]!r}.", error_type="permission_error")
    team = team_id if team_id is not None else user.teams[0] if len(user.teams) == 1 else None
    hours = configured(runtime.settings).personal_key_hours
    try:
        issued = await runtime.aws.call(_issue, runtime.settings, runtime.key_cache, user.user_id, team, hours)
    except Unavailable:
        raise GatewayError(503, "The gateway cannot store keys right now; retry.") from None
    runtime.key_cache.invalidate(issued.record.token, *((issued.revoked,) if issued.revoked else ()))
    return issued


def personal_alias(user_id: str, slot: int) -> str:
    # The user id hashed: an alias is a bounded, printable name whatever the provider's subject looks like.
    return f"personal:{hashlib.sha256(user_id.encode()).hexdigest()[:16]}:{slot}"


def _issue(settings: Settings, key_cache: KeyCache, user_id: str, team_id: str | None, hours: float) -> PersonalKey:
    """Blocking (DynamoDB): the slot's old key deleted, the new one stored with the slot's alias, each audited
    (by their public hash: the key itself is never in an entry)."""
    for _ in range(3):  # another issue for the same person took the slot meanwhile: choose again
        slot, old = _choose_slot(user_id)
        if old is not None:
            revoked = audit.by_provider(user_id, "key.delete", audit.key_target(old), audit.key_fields(old))
            try:
                key_records.delete(old, audit.put(settings, revoked))
            except key_records.Conflict:
                continue
            audit.written(revoked)
        plain, now = keys.new_key(), keys.utcnow()
        record = KeyRecord(
            token=keys.hash_key(plain),
            key_name=keys.key_name(plain),
            key_alias=personal_alias(user_id, slot),
            created_at=now.isoformat(),
            updated_at=now.isoformat(),
            expires=keys.iso(now + timedelta(hours=hours)),
            metadata={PERSONAL_MARK: True},
            user_id=user_id,
            team_id=team_id,
        )
        issued = audit.by_provider(user_id, "key.generate", audit.key_target(record), None, audit.key_fields(record))
        try:
            keys.put_new(key_cache, record, audit.put(settings, issued))
        except (key_records.AliasTaken, key_records.Conflict):  # Conflict: its audit entry could not be written
            continue
        except key_records.LinkRefused as exc:  # the user or the team was deleted meanwhile, or the user left the team
            raise GatewayError(403, f"Cannot issue the key: {refusal_text(exc.refused)}.") from None
        audit.written(issued)
        still_worked = old.token if old is not None and not old.expired(keys.utcnow()) else None
        return PersonalKey(plain, record, still_worked)
    raise GatewayError(409, "Other sign-ins are issuing your keys right now; retry.", error_type=_CONFLICT)


def refusal_text(refused: Refused) -> str:
    if refused.reason == "not_member":
        return f"you are no longer a member of team {refused.team!r}"
    return f"{refused.what} {refused.name!r} is {'being deleted' if refused.reason == 'deleting' else 'gone'}"


def _choose_slot(user_id: str) -> tuple[int, KeyRecord | None]:
    """A free slot, else the one with an expired key, else the one with the oldest key. A slot whose alias an
    admin gave to a key that is not this person's personal key is left alone."""
    held: list[tuple[int, KeyRecord]] = []
    for slot in range(PERSONAL_KEY_SLOTS):
        record = key_records.load_by_alias(personal_alias(user_id, slot))
        if record is None:
            return slot, None
        if record.user_id != user_id or record.metadata.get(PERSONAL_MARK) is not True:
            continue
        if record.expired(keys.utcnow()):
            return slot, record
        held.append((slot, record))
    if not held:
        raise GatewayError(409, "No key alias is free for a personal key.", error_type=_CONFLICT)
    return min(held, key=lambda found: found[1].created_at)
