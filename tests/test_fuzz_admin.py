"""The key API under property-based fuzzing (issue 9): any JSON in any key field of /key/generate and /key/update
gets a 2xx or a 4xx in Anthropic's shape, never a 5xx; and /key/list and /key/info still answer after each case.

Examples are few (they go over real HTTP to the gateway and moto) but aimed: every JSON type, numbers at and past
DynamoDB's and float's limits, deep nesting, unicode and empty strings, and values that pass validation so the
storage layer is reached too.
"""

from __future__ import annotations

import json
import math
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anthropic_gateway import keys
from tests.conftest import MASTER_KEY

FIELDS = (
    "key_alias", "models", "max_budget", "budget_duration", "duration", "rpm_limit", "tpm_limit",
    "max_parallel_requests", "metadata", "tags", "blocked",
)  # fmt: skip

EDGE_NUMBERS = st.sampled_from(
    [0, -0.0, 1e-7, 1e-9, 1e-10, 1e-130, 1e-200, 5e-324, 1e125, 1e126, 1e308, 1e12, 1e13, -1, 2**63, 10**40,
     math.inf, -math.inf, math.nan, 0.1 + 0.2, 123456789012345678901234567890.123]
)  # fmt: skip
EDGE_STRINGS = st.sampled_from(["", " ", "\x00", "\ud800", "é" * 300, "a" * 5000, "999999mo", "0s", "36500d",
                                "36501d", "1mo", " 1h ", "sk-" + "a" * 40, "team:*", "\u202e", "💸"])  # fmt: skip
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**45), max_value=10**45)
    | st.floats()
    | EDGE_NUMBERS
    | st.text(max_size=40)
    | EDGE_STRINGS
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)


def deep(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for index in range(depth):
        value = {"k": value} if index % 2 else [value]
    return value


# Values shaped like what each field takes, so many cases pass validation and reach DynamoDB.
plausible = {
    "key_alias": st.text(min_size=1, max_size=20).map(lambda text: f"fz-{text}"),
    "models": st.lists(st.text(min_size=0, max_size=30) | EDGE_STRINGS, max_size=5),
    "max_budget": st.floats(min_value=0, max_value=1e13) | EDGE_NUMBERS,
    "budget_duration": st.from_regex(r"\A\d{1,7}(s|m|h|d|w|mo)\Z") | EDGE_STRINGS,
    "duration": st.from_regex(r"\A\d{1,7}(s|m|h|d|w|mo)\Z") | EDGE_STRINGS,
    "rpm_limit": st.integers(min_value=-5, max_value=10**13),
    "tpm_limit": st.integers(min_value=-5, max_value=10**13),
    "max_parallel_requests": st.integers(min_value=-5, max_value=10**13),
    "metadata": st.dictionaries(st.text(max_size=6), json_values, max_size=5)
    | st.integers(min_value=0, max_value=60).map(lambda depth: {"d": deep(depth)}),
    "tags": st.lists(st.text(max_size=70) | EDGE_STRINGS | st.sampled_from(["team:a", "app:b"]), max_size=12),
    "blocked": st.booleans(),
}
field_values = st.sampled_from(FIELDS).flatmap(
    lambda name: st.tuples(st.just(name), plausible[name] | json_values | EDGE_NUMBERS | EDGE_STRINGS)
)
bodies = st.lists(field_values, max_size=5).map(dict) | st.dictionaries(st.text(max_size=10), json_values, max_size=3)


@pytest.fixture(scope="module")
def master(gateway):
    with httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {MASTER_KEY}"}, timeout=30) as http:
        yield http


def post(http: httpx.Client, path: str, body: dict) -> httpx.Response:
    # allow_nan: NaN and Infinity go out as the literals some JSON encoders write; lone surrogates as \ud800.
    return http.post(path, content=json.dumps(body, allow_nan=True))


def assert_answered_well(response: httpx.Response) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:500])
    if response.status_code >= 400:
        body = response.json()
        assert body["type"] == "error" and set(body["error"]) == {"type", "message"}, body
        assert isinstance(body["error"]["message"], str) and body["error"]["type"].endswith("_error")


def assert_admin_reads_still_work(http: httpx.Client, token: str | None) -> None:
    listed = http.get("/key/list", params={"size": 100, "return_full_object": True})
    assert listed.status_code == 200, listed.text[:500]
    if token is not None:
        info = http.get("/key/info", params={"key": token})
        assert info.status_code == 200, info.text[:500]


FUZZ = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


@FUZZ
@given(body=bodies)
def test_generate_never_fails_with_a_5xx(master, body):
    response = post(master, "/key/generate", body)
    assert_answered_well(response)
    token = response.json()["token"] if response.status_code == 200 else None
    try:
        assert_admin_reads_still_work(master, token)
    finally:
        if token is not None:
            master.post("/key/delete", json={"keys": [token]})


@pytest.fixture(scope="module")
def existing(master):
    """One key every update case changes; any state a case leaves must still be readable by the next."""
    created = master.post("/key/generate", json={"max_budget": 10, "metadata": {"team": "fuzz"}})
    assert created.status_code == 200
    yield created.json()["token"]
    master.post("/key/delete", json={"keys": [created.json()["token"]]})


@FUZZ
@given(body=bodies, by_alias=st.booleans())
def test_update_never_fails_with_a_5xx(master, existing, body, by_alias):
    target = {"key": existing}
    if by_alias and isinstance(body.get("key_alias"), str):
        target = {}  # key_alias then names the key to change: usually none (404), never a 5xx
    response = post(master, "/key/update", {**body, **target})
    assert_answered_well(response)
    assert_admin_reads_still_work(master, existing)


@FUZZ
@given(key=json_values | EDGE_STRINGS, alias=json_values | EDGE_STRINGS)
def test_lookups_by_any_key_or_alias_never_fail_with_a_5xx(master, key, alias):
    for path, body in (
        ("/key/block", {"key": key}),
        ("/key/unblock", {"key_alias": alias}),
        ("/key/regenerate", {"key_alias": alias}),
        ("/key/delete", {"keys": [key], "key_aliases": [alias]}),
    ):
        assert_answered_well(post(master, path, body))
    for path, name, value in (("/key/info", "key", key), ("/key/list", "key_alias", alias)):
        # Encoded by hand: a lone surrogate goes out as the invalid UTF-8 it makes (httpx refuses to encode it).
        raw = quote(str(value).encode("utf-8", "surrogatepass"), safe="")
        assert_answered_well(master.get(f"{path}?{name}={raw}"))


def test_the_fuzzers_reach_the_storage_layer(master):
    """A guard against strategies that only ever produce 400s: valid edge values are stored and read back."""
    body = {"max_budget": 1e-9, "duration": "36500d", "metadata": {"d": deep(29), "n": 1e-130}, "tags": ["team:a"]}
    created = post(master, "/key/generate", body)
    assert created.status_code == 200, created.text
    token = created.json()["token"]
    assert keys.is_hash(token)
    assert_admin_reads_still_work(master, token)
    assert master.get("/key/info", params={"key": token}).json()["info"]["metadata"]["n"] == 1e-130
    master.post("/key/delete", json={"keys": [token]})


# -- schemathesis: every admin route and parameter the OpenAPI schema describes ------------------------------------


def _admin_schema() -> dict[str, Any]:
    """The admin API's OpenAPI document, built here: production serves none (`openapi_url=None` in admin.py).

    The POST routes read their JSON body by hand (any content-type, as curl -d sends), so FastAPI cannot see it;
    their request models are put into the document as the bodies they are.
    """
    from fastapi.openapi.utils import get_openapi

    from anthropic_gateway import admin, key_routes

    # Its routes only: no runtime serves them.
    document = get_openapi(title="admin", version="test", routes=admin.build(None).routes)
    bodies = {
        "/key/generate": key_routes.GenerateRequest,
        "/key/update": key_routes.UpdateRequest,
        "/key/regenerate": key_routes.RegenerateRequest,
        "/key/block": key_routes.KeyRef,
        "/key/unblock": key_routes.KeyRef,
        "/key/delete": key_routes.DeleteRequest,
    }
    for path, model in bodies.items():
        content = {"application/json": {"schema": model.model_json_schema()}}
        document["paths"][path]["post"]["requestBody"] = {"required": True, "content": content}
    return document


admin_schema = schemathesis.openapi.from_dict(_admin_schema()).include(path_regex=r"^/(key|spend)/")


@admin_schema.parametrize()
@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
def test_schemathesis_admin_api(case, gateway):
    response = case.call(base_url=gateway.url, headers={"Authorization": f"Bearer {MASTER_KEY}"}, timeout=30)
    assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:300])
    if response.status_code >= 400:
        body = response.json()
        assert body["type"] == "error" and set(body["error"]) == {"type", "message"}, body
