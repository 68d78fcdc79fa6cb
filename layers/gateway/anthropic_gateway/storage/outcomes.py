"""What a storage change answers when it is not made: an outcome the caller maps to its own error."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Reason = Literal["exists", "missing", "not_member", "deleting", "conflict", "unfinished", "full"]


@dataclass(frozen=True)
class Refused:
    """Why a change was not made (none of it was): the `what` ("team", "user", "member", "email", "tag") named
    `name` already exists, is missing, is being deleted...; `team` names the team a membership is about.
    "conflict": other requests changed the same items meanwhile (read again and retry); "full": the bound of
    such items is reached (registered tags)."""

    reason: Reason
    what: str = ""
    name: str = ""
    team: str = ""


CONFLICT = Refused("conflict")
