"""The audit log's entries as the admin routes and single sign-on make them: who (from the Caller, or the
identity provider at a person's sign-in), what, and the public fields of the thing before and after, never a
secret; stored in the change's own transaction (storage/audit.py), then written as one structured log line.

A route builds the entry where it knows what it changes (`entry`), hands `put(entry)` to the storage write as one
more action of its transaction, and calls `written(entry)` once that write succeeded. Single sign-on (sso.py) does
the same with `by_provider` for what a sign-in changes: the user it creates, the role and teams the person's
groups map to, and their personal keys.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

from aws_lambda_powertools import Logger

from .auth import Caller
from .settings import Settings
from .storage import table
from .storage.audit import Entry
from .storage.key_records import KeyRecord

logger = Logger(child=True)

# A key's fields an entry shows: its settings and its public hash (`token`). Never the key, nor key_name (the
# key's last characters), nor counters (they change with every request, not through the admin API).
KEY_FIELDS = (
    "token",
    "key_alias",
    "team_id",
    "user_id",
    "delegated_by",
    "blocked",
    "expires",
    "max_budget",
    "budget_duration",
    "rpm_limit",
    "tpm_limit",
    "max_parallel_requests",
    "models",
    "tags",
    "metadata",
    "upstreams",
)
PROVIDER = "idp:"  # the actor of a change single sign-on made: idp:<subject>
# Fields of a team, user, membership or tag that are bookkeeping, not settings.
_COUNTERS = frozenset({"spend", "total_spend", "reserved", "created_at", "updated_at", "budget_reset_at", "deleting"})


def now() -> str:
    return datetime.now(UTC).isoformat()


def entry(
    caller: Caller,
    action: str,
    target: str,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> Entry:
    return Entry(
        at=now(),
        actor=caller.actor,
        actor_user_id=caller.user_id,
        action=action,
        target=target,
        before=before,
        after=after,
    )


def by_provider(
    subject: str,
    action: str,
    target: str,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> Entry:
    """An entry for a change the identity provider made at the sign-in of `subject` (the ID token's sub, which is
    the person's user id): actor `idp:<subject>`, never the console session's `sso:<subject>`, so a role the groups
    gave reads apart from a change the person made themselves."""
    return Entry(
        at=now(),
        actor=f"{PROVIDER}{subject}",
        actor_user_id=subject,
        action=action,
        target=target,
        before=before,
        after=after,
    )


def put(settings: Settings, audit_entry: Entry) -> table.Put:
    """The action that stores `audit_entry`, kept AUDIT_RETENTION_DAYS (`settings`: the runtime's)."""
    return audit_entry.put(settings.audit_retention_days)


def written(audit_entry: Entry) -> None:
    """The entry as one structured log line, once its change is stored."""
    logger.info("audit", extra={"audit": table.plain(dataclasses.asdict(audit_entry))})


def key_fields(record: KeyRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in KEY_FIELDS}


def user_target(user_id: str) -> str:
    return f"user:{user_id}"


def team_target(team_id: str) -> str:
    return f"team:{team_id}"


def key_target(record: KeyRecord) -> str:
    """A key's target: its key_id (the hash it was created with), which stays when the key is regenerated."""
    return f"key:{record.key_id}"


def fields(record: Any) -> dict[str, Any]:
    """A team's, user's, membership's or tag's settings (a dataclass record)."""
    return {name: value for name, value in dataclasses.asdict(record).items() if name not in _COUNTERS}


def changed(before: dict[str, Any], changes: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(before, after) of the fields `changes` names: only what changed is recorded."""
    return {name: before.get(name) for name in changes}, dict(changes)
