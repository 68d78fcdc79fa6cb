"""How a storage refusal (storage/outcomes.py) reads to an admin API caller: an Anthropic-shaped error."""

from __future__ import annotations

from .errors import GatewayError
from .storage.outcomes import Refused

_CONFLICT = "invalid_request_error"  # 409 has no Anthropic error type of its own


def admin_error(refused: Refused) -> GatewayError:
    """The error for a refused team, member, user or tag change."""
    subject = _subject(refused)
    match refused.reason:
        case "exists":
            return GatewayError(409, f"{subject} already exists.", error_type=_CONFLICT)
        case "missing" if refused.what == "member":
            return GatewayError(404, f"User {refused.name!r} is not a member of team {refused.team!r}.")
        case "missing":
            return GatewayError(404, f"{subject} not found.")
        case "not_member":
            return GatewayError(400, f"User {refused.name!r} is not a member of team {refused.team!r}.")
        case "deleting":
            return GatewayError(
                409, f"{subject} is being deleted; repeat its delete to finish it.", error_type=_CONFLICT
            )
        case "unfinished" if refused.what == "member":
            return GatewayError(
                409,
                f"User {refused.name!r} has more keys in team {refused.team!r} than one call deletes; repeat "
                "/team/member_delete to finish (it is no longer a member).",
                error_type=_CONFLICT,
            )
        case "unfinished":
            return GatewayError(
                409,
                f"{subject} is being deleted and has more keys or members than one call removes; it is blocked "
                "meanwhile. Repeat the same delete to finish.",
                error_type=_CONFLICT,
            )
        case _:
            return GatewayError(409, "Changed by another request at the same time; retry.", error_type=_CONFLICT)


def key_owner_error(refused: Refused) -> GatewayError:
    """The error for a key whose team_id or user_id cannot take it: the request named something that is not."""
    if refused.reason == "not_member":
        return GatewayError(
            400,
            f"user_id: user {refused.name!r} is not a member of team {refused.team!r} (add it with /team/member_add).",
        )
    if refused.reason == "missing":
        return GatewayError(400, f"{refused.what}_id: no {refused.what} {refused.name!r} (or it is being deleted).")
    return admin_error(refused)


def _subject(refused: Refused) -> str:
    noun = {"email": "A user with user_email"}.get(refused.what, refused.what.capitalize())
    return f"{noun} {refused.name!r}"
