"""The key management API (master key only), in LiteLLM proxy's request and response shapes."""

from __future__ import annotations

import anyio.to_thread
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import keys
from .auth import require_master
from .errors import GatewayError


async def _master_only(request: Request) -> None:
    await require_master(request.headers)


router = APIRouter(prefix="/key", dependencies=[Depends(_master_only)])


class GenerateKeyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key_alias: str | None = Field(default=None, min_length=1, max_length=256)
    metadata: dict = Field(default_factory=dict)


async def parse_body[M: BaseModel](request: Request, model: type[M]) -> M:
    """The JSON body as `model`, whatever content-type the client sent (curl -d sends a form type)."""
    raw = await request.body()
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())
        raise GatewayError(400, f"Invalid request: {problems}") from None


@router.post("/generate")
async def generate_key(http_request: Request) -> dict:
    request = await parse_body(http_request, GenerateKeyRequest)
    plain = keys.new_key()
    now = keys.iso(keys.utcnow())
    record = keys.KeyRecord(
        token=keys.hash_key(plain),
        key_name=keys.key_name(plain),
        key_alias=request.key_alias,
        created_at=now,
        updated_at=now,
        metadata=request.metadata,
    )
    try:
        await anyio.to_thread.run_sync(keys.put_new, record)
    except keys.AliasTaken:
        raise GatewayError(400, f"key_alias {request.key_alias!r} is already in use.") from None
    return {"key": plain, **_public(record)}


def _public(record: keys.KeyRecord) -> dict:
    return {
        "key_name": record.key_name,
        "key_alias": record.key_alias,
        "token": record.token,
        "expires": record.expires,
        "metadata": record.metadata,
        "created_at": record.created_at,
    }
