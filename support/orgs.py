"""Raw-HTTP helpers for the organisation APIs (teams, users, tags) in tests: create things, read answers exactly."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from typing import Any

import anthropic
import httpx

HELLO: list[anthropic.types.MessageParam] = [{"role": "user", "content": "Hello"}]


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def exact(response: httpx.Response) -> Any:
    """The JSON answer with every number that has a fraction as the exact Decimal written on the wire."""
    return json.loads(response.text, parse_float=Decimal)


def error_of(response: httpx.Response) -> tuple[int, str, str]:
    """(status, Anthropic error type, message) of an error answer; fails unless it has Anthropic's shape."""
    body = response.json()
    assert body["type"] == "error" and set(body["error"]) == {"type", "message"}, body
    return response.status_code, body["error"]["type"], body["error"]["message"]


def ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    return response.json()


def new_team(admin: httpx.Client, **settings: Any) -> dict[str, Any]:
    settings.setdefault("team_id", unique("team"))
    team: dict[str, Any] = ok(admin.post("/team/new", json=settings))
    return team


def new_user(admin: httpx.Client, **settings: Any) -> dict[str, Any]:
    settings.setdefault("user_id", unique("user"))
    settings.setdefault("auto_create_key", False)
    user: dict[str, Any] = ok(admin.post("/user/new", json=settings))
    return user


def new_key(admin: httpx.Client, **settings: Any) -> dict[str, Any]:
    key: dict[str, Any] = ok(admin.post("/key/generate", json=settings))
    return key


def works(gateway_url: str, key: str) -> bool:
    """Whether the pass-through takes `key` (a 200 from the fake upstream), or refuses it with a 401."""
    client = anthropic.Anthropic(base_url=gateway_url + "/anthropic", api_key=key, max_retries=0)
    try:
        client.messages.create(model="claude-haiku-4-5", max_tokens=8, messages=HELLO)
    except anthropic.AuthenticationError:
        return False
    return True
