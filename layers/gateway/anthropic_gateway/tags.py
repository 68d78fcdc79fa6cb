"""Request tags: where they come from and what a valid one looks like.

Tags become CloudWatch metric dimensions (billed per distinct value) and DynamoDB spend items, so only short,
plain tags get in; anything else is refused with a 400 naming the tag, before the request goes upstream.
"""

from __future__ import annotations

import re
from typing import Any

from starlette.datastructures import Headers

from .auth import Principal
from .errors import GatewayError

HEADER = "x-litellm-tags"  # LiteLLM's header: comma-separated tags
MAX_TAGS = 10
MAX_TAG_LENGTH = 64
_TAG = re.compile(r"[A-Za-z0-9 _.:/=+@-]+")
# A tag shaped like an API key is a pasted credential, not a label: it would end up on dashboards and reports.
_KEY_LIKE = re.compile(r"(?:sk|key)[-_][A-Za-z0-9_-]{20,}", re.IGNORECASE)


def resolve(litellm_metadata: dict[str, Any] | None, headers: Headers, principal: Principal | None) -> list[str]:
    """The request's tags: body, then header, then the key's defaults, then its team's; de-duplicated, first
    occurrence kept."""
    merged = [*_from_body(litellm_metadata), *_from_header(headers), *_from_key(principal)]
    tags = list(dict.fromkeys(merged))
    for tag in tags:
        validate(tag)
    if len(tags) > MAX_TAGS:
        raise GatewayError(
            400, f"Too many tags: {len(tags)}; at most {MAX_TAGS} per request, counting the key's default tags."
        )
    return tags


def validate(tag: str) -> None:
    """Raise a 400 naming `tag` unless it is 1-64 plain characters (also usable for tags stored on keys)."""
    if _KEY_LIKE.search(tag):
        # Never echo it: it may be a working credential.
        raise GatewayError(400, "Invalid tag: it looks like an API key. Tags are visible in metrics and reports.")
    if not (0 < len(tag) <= MAX_TAG_LENGTH and _TAG.fullmatch(tag)):
        shown = tag if len(tag) <= 100 else tag[:100] + "..."
        raise GatewayError(
            400,
            f"Invalid tag {shown!r}: a tag is 1-{MAX_TAG_LENGTH} characters of letters, digits, space "
            "and _ . : / = + @ -",
        )


def _from_body(litellm_metadata: dict[str, Any] | None) -> list[str]:
    if not litellm_metadata or litellm_metadata.get("tags") is None:
        return []
    tags = litellm_metadata["tags"]
    if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
        raise GatewayError(400, "Invalid litellm_metadata.tags: expected a list of strings.")
    return [tag.strip() for tag in tags]


def _from_header(headers: Headers) -> list[str]:
    # Empty items are skipped so "a, b," and a header sent twice both work.
    return [tag.strip() for value in headers.getlist(HEADER) for tag in value.split(",") if tag.strip()]


def _from_key(principal: Principal | None) -> list[str]:
    record = principal.record if principal else None
    defaults = record.tags if record else None
    team = principal.owners.team if principal else None
    found = [*(defaults if isinstance(defaults, list) else []), *(team.tags if team is not None else [])]
    return [str(tag).strip() for tag in found]
