"""The tag API, in LiteLLM proxy's routes and shapes: registered tags with a budget and limits. Changes take
proxy_admin (or the master key), reads proxy_admin or proxy_admin_viewer (access.py); every change is stored with
its audit entry in one transaction (audit.py).

A registered tag's budget and limits apply to every request that carries the tag, whatever its key or team, and
the tag is a CloudWatch `Tag` dimension value of its own (docs/metrics.md). Tags that are not registered still
work as labels (spend per tag, METRIC_TAGS), as before. At most storage.tags.MAX_REGISTERED tags.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from starlette.responses import Response

from . import audit, keys
from . import tags as request_tags
from .access import admin_access
from .access import of as access_of
from .auth import runtime_of
from .errors import GatewayError
from .org_api import (
    Description,
    ScopeSettings,
    answer,
    blocking,
    changes_of,
    first_reset,
    parse_body,
    refuse_unless_done,
    retrying,
)
from .org_views import fresh_tag, tag_info
from .storage import tags
from .storage.audit import Entry
from .storage.outcomes import Refused
from .storage.tags import TagRecord

router = APIRouter(prefix="/tag", dependencies=[Depends(admin_access)])
MAX_NAMES = 100  # tags one POST /tag/info asks about


def _tag_name(value: str) -> str:
    try:
        request_tags.validate(value)  # what a request may carry: a tag that cannot be sent is useless registered
    except GatewayError as exc:
        raise ValueError(exc.message) from None
    return value


TagName = Annotated[str, AfterValidator(_tag_name)]


class TagSettings(ScopeSettings):
    description: Description | None = None


class NewTag(TagSettings):
    name: TagName


class UpdateTag(TagSettings):
    name: TagName


class TagRef(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: TagName


class TagNames(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    names: Annotated[list[str], Field(min_length=1, max_length=MAX_NAMES)]


@router.post("/new")
async def new_tag(http_request: Request) -> Response:
    request = await parse_body(http_request, NewTag)
    runtime, access = runtime_of(http_request), access_of(http_request)
    access.require_admin("register tags")
    now = keys.utcnow()
    tag = TagRecord(
        name=request.name,
        description=request.description,
        models=request.models or [],
        max_budget=request.max_budget,
        budget_duration=request.budget_duration,
        budget_reset_at=first_reset(request.budget_duration, now),
        rpm_limit=request.rpm_limit,
        tpm_limit=request.tpm_limit,
        max_parallel_requests=request.max_parallel_requests,
        created_at=now.isoformat(),
        updated_at=now.isoformat(),
    )

    def create() -> Any:
        entry = audit.entry(access.caller, "tag.create", _target(tag.name), None, audit.fields(tag))
        refused = tags.create(tag, audit.put(runtime.settings, entry))  # the bound is checked in its transaction
        if refused is not None and refused.reason == "full":
            raise GatewayError(400, f"At most {tags.MAX_REGISTERED} registered tags; delete some first.")
        refuse_unless_done(refused)
        runtime.tag_registry.put(tag)
        audit.written(entry)
        return {"message": f"Tag {tag.name} created successfully", "tag": tag_info(tag)}

    return answer(await blocking(create))


@router.post("/update")
async def update_tag(http_request: Request) -> Response:
    request = await parse_body(http_request, UpdateTag)
    runtime, access = runtime_of(http_request), access_of(http_request)
    access.require_admin("change tags")
    now = keys.utcnow()
    changes = changes_of(request, now, identifying={"name"})
    entries: list[Entry] = []

    def change(tag: TagRecord) -> Refused | None:
        before, after = audit.changed(audit.fields(tag), changes)
        entries.append(audit.entry(access.caller, "tag.update", _target(tag.name), before, after))
        return tags.update(tag, changes, now.isoformat(), audit.put(runtime.settings, entries[-1]))

    def update() -> Any:
        tag = retrying(runtime.owners, lambda: _tag(request.name), change)
        runtime.tag_registry.put(tag)
        audit.written(entries[-1])
        return {"message": f"Tag {tag.name} updated successfully", "tag": tag_info(tag)}

    return answer(await blocking(update))


@router.post("/delete")
async def delete_tag(http_request: Request) -> Response:
    request = await parse_body(http_request, TagRef)
    runtime, access = runtime_of(http_request), access_of(http_request)
    access.require_admin("delete tags")

    def delete() -> None:
        tag = _tag(request.name)
        entry = audit.entry(access.caller, "tag.delete", _target(tag.name), audit.fields(tag))
        refuse_unless_done(tags.delete(request.name, audit.put(runtime.settings, entry)))
        runtime.tag_registry.discard(request.name)
        audit.written(entry)

    await blocking(delete)
    return answer({"message": f"Tag {request.name} deleted successfully"})


@router.get("/info")
async def tag_info_route(http_request: Request, name: str | None = None) -> Response:
    access_of(http_request).require_reader("read tags")
    if not name:
        raise GatewayError(400, "name: required (/tag/info?name=<tag>).")
    return answer(await blocking(lambda: tag_info(fresh_tag(_tag(name)))))


@router.post("/info")
async def tags_info(http_request: Request) -> Response:
    """LiteLLM's form: {"names": [...]} -> {name: tag}; 404 naming the tags that are not registered."""
    access_of(http_request).require_reader("read tags")
    request = await parse_body(http_request, TagNames)
    names = list(dict.fromkeys(request.names))

    def info() -> Any:
        found = {name: tag for name in names if 0 < len(name) <= 256 and (tag := tags.get(name)) is not None}
        if missing := [name for name in names if name not in found]:
            raise GatewayError(404, f"Tags not found: {', '.join(repr(name[:100]) for name in missing[:20])}.")
        return {name: tag_info(fresh_tag(tag)) for name, tag in found.items()}

    return answer(await blocking(info))


@router.get("/list")
async def list_tags(http_request: Request) -> Response:
    """Every registered tag, oldest first (LiteLLM's /tag/list: a JSON array)."""
    access_of(http_request).require_reader("read tags")
    return answer(await blocking(lambda: [tag_info(fresh_tag(tag)) for tag in tags.list_tags()]))


def _target(name: str) -> str:
    return f"tag:{name}"


def _tag(name: str) -> TagRecord:
    tag = tags.get(name) if 0 < len(name) <= 256 else None
    if tag is None:
        raise GatewayError(404, f"Tag {name[:256]!r} not found.")
    return tag
