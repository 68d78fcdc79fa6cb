"""Who is calling: the master key, a virtual key (with its team, user and membership), a person signed in to the
console, or nobody. Every route authenticates here: the pass-through with keys alone (`authenticate`), the admin API
with keys or the console's single sign-on session (`admin_caller`)."""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from functools import partial
from typing import Literal, Protocol

from aws_lambda_powertools import Logger
from starlette.datastructures import Headers
from starlette.requests import Request

from . import keys, sso_session
from .aws import AwsCalls, Unavailable
from .errors import GatewayError
from .keys import KeyCache
from .owners import Owners, OwnersCache, described
from .secrets import Secrets
from .settings import Settings
from .storage import users
from .storage.key_records import KeyRecord
from .storage.tags import TagRegistry
from .storage.teams import TeamRegistry
from .storage.users import UserRecord


class Parts(Protocol):
    """What authentication uses of the running gateway (runtime.py's `Runtime` has them)."""

    aws: AwsCalls
    secrets: Secrets
    key_cache: KeyCache
    owners: OwnersCache
    team_registry: TeamRegistry


class AdminParts(Parts, Protocol):
    """What the admin routes use of the running gateway (runtime.py's `Runtime` has them)."""

    settings: Settings
    tag_registry: TagRegistry


def runtime_of(request: Request) -> AdminParts:
    """The runtime of the gateway serving an admin request: the admin app holds it in its state (admin.py)."""
    runtime: AdminParts = request.app.state.runtime
    return runtime


@dataclass(frozen=True)
class Principal:
    record: KeyRecord | None  # None for the master key
    owners: Owners = field(default_factory=Owners)  # the key's team, user and membership (owners.py)

    @property
    def is_master(self) -> bool:
        return self.record is None

    @property
    def token(self) -> str | None:
        return self.record.token if self.record else None


MASTER = Principal(record=None)
logger = Logger(child=True)


def presented_key(headers: Headers) -> str | None:
    """The credential a client sent, the ways Anthropic and LiteLLM clients send it: x-litellm-api-key, else
    x-api-key, else Authorization: Bearer (of each name, the first header counts)."""
    found: dict[bytes, bytes] = {}
    for name, value in headers.raw:  # one pass over the headers, not one per name
        lower = name.lower()
        if lower in _KEY_HEADERS and lower not in found:
            found[lower] = value
    for name in (b"x-litellm-api-key", b"x-api-key"):
        if key := found.get(name, b"").decode("latin-1").strip():
            return key
    scheme, _, credentials = found.get(b"authorization", b"").decode("latin-1").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return None


_KEY_HEADERS = frozenset({b"x-litellm-api-key", b"x-api-key", b"authorization"})


def _is_master(key: str, master: str) -> bool:
    return hmac.compare_digest(key.encode(), master.encode())


async def _lookup(runtime: Parts, key: str) -> KeyRecord | None:
    if not keys.is_well_formed(key):
        return None
    token = keys.hash_key(key)
    hit, record = runtime.key_cache.get(token)
    if hit:
        return record
    _, stale = runtime.key_cache.stale(token)
    if stale is not None and runtime.aws.recently_failed():
        return stale  # AWS failed a moment ago: no request waits out the deadline again for a known key
    try:
        return await runtime.aws.call_shared(("key", token), partial(runtime.key_cache.load, token))
    except Exception as exc:  # DynamoDB unreachable or too slow: a key seen lately keeps working for a while
        if stale is not None:
            logger.warning("key served from the expired cache", extra={"error": type(exc).__name__})
            return stale
        raise GatewayError(503, "The gateway cannot check API keys right now; retry.") from None


async def _owners_of(runtime: Parts, record: KeyRecord) -> Owners:
    """The key's team, user and membership: cached, else read under the request's deadline; during an outage, as
    cached a while ago (like the key record itself), else a 503."""
    found = runtime.owners.cached(record)
    if found is not None:
        return found
    stale = runtime.owners.stale(record)
    if stale is not None and runtime.aws.recently_failed():
        return stale
    try:
        return await runtime.aws.call_shared(
            ("owners", record.team_id, record.user_id), partial(runtime.owners.load, record)
        )
    except Exception as exc:
        if stale is not None:
            logger.warning("key owners served from the expired cache", extra={"error": type(exc).__name__})
            return stale
        raise GatewayError(503, f"The gateway cannot read this key's {described(record)} right now; retry.") from None


def _check_owners(record: KeyRecord, found: Owners) -> None:
    """A key of a blocked, deleted or being-deleted team or user, or of a user who left the team, is refused as a
    blocked key is: the team or user is named."""
    if record.team_id is not None:
        team = found.team
        if team is None or team.deleting:
            raise GatewayError(401, f"This key's team {record.team_id!r} has been deleted.")
        if team.blocked:
            raise GatewayError(401, f"This key's team {record.team_id!r} is blocked.")
    if record.user_id is not None:
        _check_user(found.user, record.user_id, "This key's")
    if record.team_id is not None and record.user_id is not None and found.member is None:
        raise GatewayError(401, f"This key's user {record.user_id!r} is no longer in team {record.team_id!r}.")


def _check_user(user: UserRecord | None, user_id: str, whose: str) -> UserRecord:
    """The user (a key's, or a console session's), unless deleted, being deleted or blocked: then a 401 naming it."""
    if user is None or user.deleting:
        raise GatewayError(401, f"{whose} user {user_id!r} has been deleted.")
    if user.blocked:
        raise GatewayError(401, f"{whose} user {user_id!r} is blocked.")
    return user


async def _usable(runtime: Parts, key: str) -> KeyRecord:
    """The record of virtual key `key`: 401 when it is unknown, blocked or expired."""
    record = await _lookup(runtime, key)
    if record is None:
        raise GatewayError(401, "Invalid API key.")
    if record.blocked:
        raise GatewayError(401, "This key is blocked.")
    if record.expired(keys.utcnow()):
        raise GatewayError(401, f"This key expired at {record.expires}.")
    return record


async def authenticate(runtime: Parts, headers: Headers) -> Principal:
    """The master key or a usable virtual key, or a 401 that never says more than needed."""
    key = presented_key(headers)
    if key is None:
        raise GatewayError(401, "Missing API key: send your gateway key in x-api-key or Authorization: Bearer.")
    if _is_master(key, await runtime.secrets.master_key()):
        return MASTER
    record = await _usable(runtime, key)
    if record.team_id:
        runtime.team_registry.snapshot()  # refreshes the registry, if due, while the request runs (metrics.py reads it)
    if record.team_id is None and record.user_id is None:
        return Principal(record=record)
    found = await _owners_of(runtime, record)
    _check_owners(record, found)
    return Principal(record=record, owners=found)


# -- the admin API ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Caller:
    """Who is calling the admin API, however they proved it: the one value that role checks and the audit log's
    "who" read.

    kind: "master" (the master key), "key" (a virtual key: `key` is its record, `user_id` its user if any; its
    role is its user's, read by the role checks, or none when the key is delegated: KeyRecord.delegated_by), or
    "sso" (a console session: `user_id` is the person's user, `subject` the ID token's sub, `role` and `teams`
    read from the user at this request).
    """

    kind: Literal["master", "key", "sso"]
    role: str | None = None
    user_id: str | None = None
    teams: tuple[str, ...] = ()
    key: KeyRecord | None = None
    subject: str | None = None
    email: str | None = None

    @property
    def actor(self) -> str:
        """The caller as a log or an audit record names it: never a secret."""
        if self.kind == "master":
            return "master"
        if self.kind == "key" and self.key is not None:
            return f"key:{self.key.key_alias or self.key.token}"
        return f"sso:{self.subject}"


MASTER_CALLER = Caller(kind="master", role="proxy_admin")


async def admin_caller(request: Request) -> Caller:
    """The caller of an admin route: a key in the headers (the master key or a virtual key), else the console's
    single sign-on session cookie, whose state-changing requests must carry its CSRF token. 401 for neither, and
    for a key the messages API would refuse (blocked, expired; its team or user blocked or deleted, its user out of
    its team: read from the table, not the cache, so an admin change applies at once) or a session of a blocked or
    deleted user. What the caller may do is access.py's."""
    runtime: Parts = runtime_of(request)
    key = presented_key(request.headers)
    if key is not None:
        if _is_master(key, await runtime.secrets.master_key()):
            return MASTER_CALLER
        record = await _usable(runtime, key)
        if record.team_id is not None or record.user_id is not None:
            try:
                found = await runtime.aws.call(partial(runtime.owners.load, record, fresh=True))
            except Exception:  # DynamoDB unreachable or too slow: a fast answer in Anthropic's shape
                raise GatewayError(503, "The gateway cannot check this key's team and user right now; retry.") from None
            _check_owners(record, found)
        return Caller(kind="key", key=record, user_id=record.user_id)
    session = await sso_session.session_of(runtime.secrets, request.cookies)
    if session is None:
        raise GatewayError(401, "Missing master key: send it as Authorization: Bearer <master key>, or sign in.")
    if not sso_session.csrf_ok(session, request.method, request.headers.get(sso_session.CSRF_HEADER)):
        raise GatewayError(
            403,
            f"Missing or wrong {sso_session.CSRF_HEADER} header: a change made with the console's session cookie "
            "needs the session's CSRF token (GET /sso/session).",
        )
    try:
        user = await runtime.aws.call(users.get, session.user_id)
    except Unavailable:
        raise GatewayError(503, "The gateway cannot read its users right now; retry.") from None
    user = _check_user(user, session.user_id, "Your")
    return Caller(
        kind="sso",
        role=user.user_role,
        user_id=user.user_id,
        teams=tuple(user.teams),
        subject=session.user_id,
        email=session.email,
    )
