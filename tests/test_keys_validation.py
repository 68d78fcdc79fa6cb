"""Issue 9, the admin API as an attacker uses it: every input a 400 in Anthropic's shape, never a 5xx, and what is
stored never breaks /key/info or /key/list for anyone."""

from __future__ import annotations

import json
import re
from decimal import Decimal

import boto3
import pytest

from anthropic_gateway import keys
from anthropic_gateway.settings import get_settings
from anthropic_gateway.storage import key_records, table

HELLO = {"model": "claude-haiku-4-5", "max_tokens": 8, "messages": [{"role": "user", "content": "Hello"}]}


def nested(depth: int) -> dict:
    value: dict = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"n": value}
    return value


# Each was a 500 (or a hang, or an item nothing could read back) before; see issue 9.
REFUSED = {
    "budget underflows Decimal": {"max_budget": 1e-200},
    "budget is the smallest float": {"max_budget": 5e-324},
    "budget overflows to infinity": {"max_budget": "<1e400>"},
    "budget negative": {"max_budget": -1},
    "budget above a trillion": {"max_budget": 1e13},
    "budget with 20 significant digits": {"max_budget": "<12345678901.234567891>"},
    "budget finer than 12 decimal places": {"max_budget": "<0.0000000010000001>"},
    "budget a string": {"max_budget": "10"},
    "duration overflows the date": {"duration": "999999mo"},
    "budget period overflows the date": {"budget_duration": "999999mo"},
    "duration past 100 years": {"duration": "36501d"},
    "duration zero": {"duration": "0d"},
    "duration unparseable": {"duration": "1 year"},
    "metadata empty key": {"metadata": {"": 1}},
    "metadata empty key nested": {"metadata": {"a": [{"b": {"": "x"}}]}},
    "metadata past 32 levels": {"metadata": nested(40)},
    "metadata past 400 KB": {"metadata": {"blob": "x" * 410_000}},
    "metadata too many digits": {"metadata": {"n": 1.2345678901234567e-200}},
    "metadata infinity": {"metadata": {"n": "<1e400>"}},
    "models too many": {"models": [f"claude-{i}" for i in range(101)]},
    "models empty name": {"models": [""]},
    "models control characters": {"models": ["claude\x00"]},
    "tags too many": {"tags": [f"t{i}" for i in range(11)]},
    "tags invalid": {"tags": ["bad<tag>"]},
    "rpm negative": {"rpm_limit": -1},
    "tpm huge": {"tpm_limit": 10**30},
    "parallel a float": {"max_parallel_requests": 1.5},
    "alias too long": {"key_alias": "a" * 257},
    "alias control characters": {"key_alias": "a\nb"},
    "unknown field": {"budget": 1},
}


def body(settings: dict) -> bytes:
    """The JSON text, with "<1e400>" written as the number 1e400 (no Python float can say it; nor 20 digits)."""
    return re.sub(r'"<([-+.0-9e]+)>"', r"\1", json.dumps(settings)).encode()


def assert_anthropic_400(response) -> str:
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error", body
    return body["error"]["message"]


@pytest.mark.parametrize("settings", REFUSED.values(), ids=REFUSED.keys())
def test_generate_refuses_what_cannot_be_stored_or_used(admin, settings):
    listed_before = admin.get("/key/list", params={"size": 100}).json()["total_count"]
    message = assert_anthropic_400(admin.post("/key/generate", content=body(settings)))
    assert next(iter(settings)) in message  # names the field
    listed = admin.get("/key/list", params={"size": 100, "return_full_object": True})
    assert listed.status_code == 200 and listed.json()["total_count"] == listed_before


@pytest.mark.parametrize("settings", REFUSED.values(), ids=REFUSED.keys())
def test_update_refuses_the_same_and_leaves_the_key_as_it_was(admin, make_key, settings):
    token = keys.hash_key(make_key(max_budget=5, metadata={"team": "a"}))
    before = admin.get("/key/info", params={"key": token}).json()["info"]
    assert_anthropic_400(admin.post("/key/update", content=body({"key": token, **settings})))
    after = admin.get("/key/info", params={"key": token})
    assert after.status_code == 200 and after.json()["info"] == before


def test_non_finite_json_numbers_are_refused(admin):
    for raw in (b'{"max_budget": NaN}', b'{"max_budget": Infinity}', b'{"metadata": {"n": -Infinity}}'):
        assert_anthropic_400(admin.post("/key/generate", content=raw))


def test_limits_at_the_documented_bounds_are_accepted(admin, make_key):
    key = make_key(
        max_budget=1e12,
        duration="36500d",
        budget_duration="1200mo",
        rpm_limit=10**12,
        metadata=nested(30),
        models=[f"claude-{i}" for i in range(100)],
        tags=[f"t{i}" for i in range(10)],
    )
    info = admin.get("/key/info", params={"key": keys.hash_key(key)})
    assert info.status_code == 200 and info.json()["info"]["metadata"] == nested(30)


def raw_item(token: str) -> dict:
    """The key's item as DynamoDB returns it on the wire (numbers as the strings that were written)."""
    client = boto3.client("dynamodb")
    return client.get_item(TableName=get_settings().table_name, Key={"pk": {"S": f"KEY#{token}"}, "sk": {"S": "KEY"}})[
        "Item"
    ]


def test_tiny_budget_is_stored_in_plain_notation_and_governs(admin, gateway, make_key):
    import httpx

    key = make_key(max_budget=1e-7)
    token = keys.hash_key(key)
    assert raw_item(token)["max_budget"] == {"N": "0.0000001"}
    # moto's UpdateItem arithmetic (budget_headroom ADD) reads only plain notation: an update must apply at once.
    updated = admin.post("/key/update", json={"key": token, "max_budget": 2e-7})
    assert updated.status_code == 200 and updated.json()["max_budget"] == 2e-7
    assert raw_item(token)["max_budget"] == {"N": "0.0000002"}
    assert Decimal(raw_item(token)["budget_headroom"]["N"]) == Decimal("0.0000002")

    with httpx.Client(base_url=gateway.url + "/anthropic", headers={"x-api-key": key}, timeout=30) as client:
        # Admitted while headroom is left (its reservation takes it below zero), then spent: the next is a 402,
        # never a 503 after retries of a write the embedded DynamoDB could not apply.
        assert client.post("/v1/messages", json=HELLO).status_code == 200
        gateway.drain()
        response = client.post("/v1/messages", json=HELLO)
    assert response.status_code == 402 and response.json()["error"]["type"] == "billing_error"
    assert Decimal(raw_item(token)["spend"]["N"]) > 0 and "E" not in raw_item(token)["budget_headroom"]["N"]


def test_a_bad_stored_record_does_not_break_list_or_info(admin, make_key):
    good = keys.hash_key(make_key(key_alias=f"good-{keys.new_key()[-8:]}"))
    bad_token = keys.hash_key(keys.new_key())
    now = keys.iso(keys.utcnow())
    # Written by hand (an older version, a console edit): every field the wrong type, bytes in metadata.
    table.handle().put_item(
        Item={
            "pk": key_records.record_pk(bad_token),
            "sk": "KEY",
            "gsi1pk": "KEY",
            "gsi1sk": f"{now}#{bad_token}",
            "token": bad_token,
            "key_id": bad_token,
            "key_name": 42,
            "created_at": now,
            "models": "claude-haiku-4-5",
            "tags": {"x": 1},
            "metadata": {"raw": b"\xff\xfe"},
            "spend": "lots",
            "rpm_limit": "many",
            "blocked": "no",
            "budget_duration": "999999mo",
            "budget_reset_at": "2000-01-01T00:00:00+00:00",
        }
    )
    # And one without a token at all (it opens nothing, so the list leaves it out).
    table.handle().put_item(
        Item={"pk": "KEY#orphan-" + bad_token, "sk": "KEY", "gsi1pk": "KEY", "gsi1sk": f"{now}#orphan"}
    )

    listed = admin.get("/key/list", params={"size": 100, "return_full_object": True})
    assert listed.status_code == 200, listed.text
    shown = {info["token"]: info for info in listed.json()["keys"]}
    assert good in shown and bad_token in shown
    bad = shown[bad_token]
    assert (bad["models"], bad["tags"], bad["metadata"], bad["spend"], bad["rpm_limit"]) == ([], [], {}, 0.0, None)
    assert bad["created_at"] == now  # what is valid is still shown

    info = admin.get("/key/info", params={"key": bad_token})
    assert info.status_code == 200, info.text
    assert info.json()["info"]["token"] == bad_token
    deleted = admin.post("/key/delete", json={"keys": [bad_token]})
    assert deleted.status_code == 200 and deleted.json()["deleted_keys"] == [bad_token]
    table.handle().delete_item(Key={"pk": "KEY#orphan-" + bad_token, "sk": "KEY"})


def test_lookups_by_an_alias_dynamodb_could_not_hold_are_a_400_or_nothing_found(admin):
    long_alias = "a" * 5000  # past DynamoDB's 2 KB partition key
    assert_anthropic_400(admin.post("/key/block", json={"key_alias": long_alias}))
    assert_anthropic_400(admin.post("/key/delete", json={"key_aliases": [long_alias]}))
    listed = admin.get("/key/list", params={"key_alias": long_alias})
    assert listed.status_code == 200 and listed.json()["keys"] == []
