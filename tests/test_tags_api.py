"""The tag API over raw HTTP (LiteLLM's /tag/* routes), and a registered tag as a CloudWatch Tag dimension value."""

from __future__ import annotations

import http.client
import json
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from urllib.parse import urlsplit

import httpx
from botocore.exceptions import ClientError, ReadTimeoutError

from anthropic_gateway import metrics
from anthropic_gateway.settings import get_settings
from anthropic_gateway.storage import table, tags
from support.orgs import error_of, exact, new_key, ok, unique
from tests.conftest import MASTER_KEY

MESSAGE = {"model": "claude-haiku-4-5", "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]}


def test_tag_lifecycle_in_litellms_shapes(admin):
    name = unique("app:nightly")
    created = ok(
        admin.post(
            "/tag/new",
            json={
                "name": name,
                "description": "the nightly batch",
                "max_budget": 50,
                "budget_duration": "1d",
                "rpm_limit": 100,
            },
        )
    )

    assert created["message"] == f"Tag {name} created successfully"
    tag = created["tag"]
    assert (tag["name"], tag["description"], tag["max_budget"], tag["budget_duration"]) == (
        name,
        "the nightly batch",
        50,
        "1d",
    )
    assert tag["litellm_budget_table"]["rpm_limit"] == 100 and tag["spend"] == 0 and tag["budget_reset_at"]
    assert ok(admin.get("/tag/info", params={"name": name})) == tag
    assert ok(admin.post("/tag/info", json={"names": [name]})) == {name: tag}
    assert name in [listed["name"] for listed in ok(admin.get("/tag/list"))]

    updated = ok(admin.post("/tag/update", json={"name": name, "max_budget": 75.5, "description": None}))
    assert updated["message"] == f"Tag {name} updated successfully"
    assert (updated["tag"]["max_budget"], updated["tag"]["description"], updated["tag"]["rpm_limit"]) == (
        75.5,
        None,
        100,
    )

    assert ok(admin.post("/tag/delete", json={"name": name})) == {"message": f"Tag {name} deleted successfully"}
    assert error_of(admin.get("/tag/info", params={"name": name}))[0] == 404
    assert name not in [listed["name"] for listed in ok(admin.get("/tag/list"))]


def test_a_tag_without_limits_has_no_budget_table_and_budgets_are_exact(admin):
    plain = ok(admin.post("/tag/new", json={"name": unique("label")}))["tag"]
    assert plain["litellm_budget_table"] is None and plain["max_budget"] is None
    raw = f'{{"name": "{unique("exact")}", "max_budget": 49.999999999999}}'
    assert exact(admin.post("/tag/new", content=raw))["tag"]["max_budget"] == Decimal("49.999999999999")


def test_tag_refusals(admin):
    name = unique("dup")
    ok(admin.post("/tag/new", json={"name": name}))
    status, kind, _ = error_of(admin.post("/tag/new", json={"name": name}))
    assert (status, kind) == (409, "invalid_request_error")
    for body in (
        {"name": "sk-" + "a" * 40},  # shaped like a key: never a tag
        {"name": "x" * 65},
        {"name": "bad<tag>"},
        {"name": ""},
        {},
        {"name": unique("t"), "description": "d" * 1025},
        {"name": unique("t"), "max_budget": -1},
        {"name": unique("t"), "budget_id": "b"},
    ):
        status, kind, _ = error_of(admin.post("/tag/new", json=body))
        assert (status, kind) == (400, "invalid_request_error"), body
    missing = unique("missing")
    assert error_of(admin.post("/tag/update", json={"name": missing, "rpm_limit": 1}))[0] == 404
    assert error_of(admin.post("/tag/delete", json={"name": missing}))[0] == 404
    status, _, text = error_of(admin.post("/tag/info", json={"names": [name, missing]}))
    assert status == 404 and missing in text and name not in text
    assert error_of(admin.get("/tag/info"))[0] == 400
    assert error_of(admin.post("/tag/info", json={"names": []}))[0] == 400


def registered_count() -> int:
    item = table.get(tags.COUNT_PK, tags.COUNT_SK)
    assert item is not None
    return int(item["registered"])


def test_the_registry_bound_is_exact_under_concurrent_creates(admin, gateway, monkeypatch):
    """The bound is checked in each create's own transaction: ten creates at once for three free places make
    three tags, never more, and every tag stored is one the gateway enforces."""
    ok(admin.post("/tag/new", json={"name": unique("first")}))  # the count exists from here on
    monkeypatch.setattr(tags, "MAX_REGISTERED", registered_count() + 3)
    names = [unique("racing") for _ in range(10)]

    def create(name: str) -> int:
        with httpx.Client(base_url=admin.base_url, headers=admin.headers, timeout=30) as client:
            response = client.post("/tag/new", json={"name": name, "max_budget": 0})
        if response.status_code != 200:
            status, _, text = error_of(response)
            assert (status, text) == (400, f"At most {tags.MAX_REGISTERED} registered tags; delete some first.")
        return response.status_code

    with ThreadPoolExecutor(max_workers=len(names)) as pool:
        statuses = list(pool.map(create, names))
    assert sorted(statuses) == [200] * 3 + [400] * 7
    stored = {tag.name for tag in tags.list_tags()}
    made = [name for name, status in zip(names, statuses, strict=True) if status == 200]
    assert set(made) <= stored and not (set(names) - set(made)) & stored
    assert registered_count() == tags.MAX_REGISTERED == len(stored)

    # Each one made is enforced (its budget of 0 refuses), and a delete frees a place.
    key = new_key(admin)["key"]
    for name in made:
        refused = httpx.post(
            gateway.url + "/anthropic/v1/messages",
            headers={"x-api-key": key, "x-litellm-tags": name},
            json=MESSAGE,
            timeout=30,
        )
        assert error_of(refused)[:2] == (402, "billing_error")
    ok(admin.post("/tag/delete", json={"name": made[0]}))
    assert registered_count() == tags.MAX_REGISTERED - 1
    ok(admin.post("/tag/new", json={"name": unique("freed")}))
    assert error_of(admin.post("/tag/new", json={"name": unique("one-too-many")}))[0] == 400


def test_a_registered_tag_is_a_metric_dimension_value_of_its_own(gateway, admin, captured):
    name = unique("app:registered")
    key = new_key(admin)["key"]

    def tag_values() -> list[str]:
        with httpx.Client(base_url=gateway.url + "/anthropic", headers={"x-api-key": key}, timeout=30) as client:
            response = client.post("/v1/messages", json=MESSAGE, headers={"x-litellm-tags": name})
        assert response.status_code == 200
        return list(captured.for_request(response.headers["x-gateway-request-id"]).by_tag())

    assert tag_values() == [metrics.OTHER]
    ok(admin.post("/tag/new", json={"name": name}))
    assert tag_values() == [name]
    ok(admin.post("/tag/delete", json={"name": name}))
    assert tag_values() == [metrics.OTHER]


def test_the_registry_reads_tags_registered_elsewhere_without_io_on_the_request_path(admin):
    """A tag registered through another instance (here: straight into the table) reaches this process's registry
    with a refresh, which a stale registry starts on its own in a thread; snapshots never wait for it."""
    name = unique("elsewhere")
    record = tags.TagRecord(name=name, created_at="2026-01-01T00:00:00+00:00", updated_at="2026-01-01T00:00:00+00:00")
    from anthropic_gateway.storage import table

    table.handle().put_item(Item=record.to_item())
    registry = tags.TagRegistry(get_settings())
    assert name not in registry.snapshot()  # answers at once; the refresh it started runs in its own thread
    registry.refresh()
    assert registry.snapshot()[name].created_at == record.created_at


def test_storage_that_does_not_answer_is_a_503_to_retry_not_a_500(gateway, monkeypatch):
    """An admin change whose DynamoDB call times out (or is throttled) is a dependency outage: 503 in Anthropic's
    shape, saying the change may or may not have been made; a bug of the gateway stays a 500. Neither closes the
    connection: the client's next request on it gets its answer (a keep-alive client was reset there)."""

    def timed_out(*args, **kwargs):
        raise ReadTimeoutError(endpoint_url="http://dynamodb")

    def throttled(*args, **kwargs):
        error = {"Error": {"Code": "ThrottlingException", "Message": "slow down"}}
        raise ClientError({**error, "ResponseMetadata": {"HTTPStatusCode": 400}}, "TransactWriteItems")

    def buggy(*args, **kwargs):
        return 1 / 0

    connection = http.client.HTTPConnection(urlsplit(gateway.url).netloc, timeout=30)
    connection.connect()
    one_socket = connection.sock

    def post_tag(name: str) -> tuple[int, dict]:
        body = json.dumps({"name": unique(name)})
        headers = {"Authorization": f"Bearer {MASTER_KEY}", "Content-Type": "application/json"}
        connection.request("POST", "/tag/new", body=body, headers=headers)
        response = connection.getresponse()
        answer = json.loads(response.read())
        assert connection.sock is one_socket  # the same connection, not a new one
        return response.status, answer

    for failure in (timed_out, throttled):
        monkeypatch.setattr(tags, "create", failure)
        status, answer = post_tag("unanswered")
        assert (status, answer["error"]["type"]) == (503, "api_error")
        assert "may or may not have been made" in answer["error"]["message"]

    monkeypatch.setattr(tags, "create", buggy)
    status, answer = post_tag("buggy")
    assert (status, answer["error"]["type"]) == (500, "api_error")

    monkeypatch.undo()
    assert post_tag("answered")[0] == 200
    connection.close()
