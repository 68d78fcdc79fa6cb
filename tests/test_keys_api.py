"""The key management API over HTTP, as curl or a LiteLLM script would use it, and its effect on the SDK."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from decimal import Decimal

import anthropic
import boto3
import pytest

from anthropic_gateway import keys
from anthropic_gateway.settings import get_settings
from anthropic_gateway.storage import table
from tests.conftest import MASTER_KEY

HELLO = [{"role": "user", "content": "Hello"}]


def sdk(gateway, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url + "/anthropic", api_key=key, max_retries=0)


def call(gateway, key: str):
    return sdk(gateway, key).messages.create(model="claude-haiku-4-5", max_tokens=8, messages=HELLO)


def error_of(response) -> tuple[int, str, str]:
    body = response.json()
    assert body["type"] == "error", body
    return response.status_code, body["error"]["type"], body["error"]["message"]


def unique(name: str) -> str:
    return f"{name}-{keys.new_key()[-8:]}"


# -- generate ---------------------------------------------------------------------------------------------------


def test_generate_returns_the_key_once_and_stores_only_its_hash(admin, gateway):
    settings = {
        "key_alias": unique("team-search"),
        "models": ["claude-haiku-4-5"],
        "max_budget": 12.5,
        "budget_duration": "30d",
        "duration": "1h",
        "rpm_limit": 100,
        "tpm_limit": 100000,
        "max_parallel_requests": 4,
        "metadata": {"team": "search", "nested": {"cost_center": 42}},
        "tags": ["team:search"],
    }
    created = admin.post("/key/generate", json=settings).json()

    plain = created["key"]
    assert plain.startswith("sk-") and keys.is_well_formed(plain)
    assert created["token"] == hashlib.sha256(plain.encode()).hexdigest()
    assert created["key_name"] == "sk-..." + plain[-4:]
    assert {name: created[name] for name in settings if name not in ("duration", "budget_duration")} == {
        name: value for name, value in settings.items() if name not in ("duration", "budget_duration")
    }
    assert created["budget_duration"] == "30d" and created["budget_reset_at"] and created["expires"]
    assert created["spend"] == 0 and created["blocked"] is False

    info = admin.get("/key/info", params={"key": created["token"]})
    assert info.status_code == 200
    assert plain not in info.text
    assert info.json()["key"] == created["token"]
    shown = info.json()["info"]
    for name in (
        "key_alias",
        "models",
        "max_budget",
        "rpm_limit",
        "tpm_limit",
        "max_parallel_requests",
        "metadata",
        "tags",
        "expires",
        "created_at",
        "updated_at",
        "budget_reset_at",
    ):
        assert shown[name] == created[name], name
    # The table holds the hash, never the key itself.
    item = table.handle().get_item(Key={"pk": f"KEY#{created['token']}", "sk": "KEY"})["Item"]
    assert plain not in repr(item)


KEY_FIELDS = [
    *("token", "key_name", "key_alias", "spend", "total_spend", "reserved_spend", "max_budget", "budget_duration"),
    *("budget_reset_at", "expires", "models", "tags", "metadata", "rpm_limit", "tpm_limit", "max_parallel_requests"),
    *("upstreams", "team_id", "user_id", "delegated_by", "blocked", "created_at", "updated_at", "input_tokens"),
    *("output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "requests"),
]


def test_every_route_shows_a_key_with_the_same_fields_unset_ones_null(admin):
    """Clients read these by name: every field is always there (null when unset), in one order on every route."""
    created = admin.post("/key/generate", json={}).json()
    assert list(created) == ["key", *KEY_FIELDS]
    unset = ("key_alias", "max_budget", "budget_duration", "budget_reset_at", "expires", "team_id", "user_id")
    assert [created[name] for name in unset] == [None] * len(unset)
    assert [created[name] for name in ("rpm_limit", "tpm_limit", "max_parallel_requests")] == [None] * 3
    assert (created["models"], created["tags"], created["metadata"]) == ([], [], {})
    token = created["token"]

    info = admin.get("/key/info", params={"key": token}).json()
    assert list(info) == ["key", "info"] and list(info["info"]) == KEY_FIELDS
    assert list(admin.post("/key/update", json={"key": token, "rpm_limit": 5}).json()) == ["key", *KEY_FIELDS]
    assert list(admin.post("/key/block", json={"key": token}).json()) == KEY_FIELDS
    assert list(admin.post("/key/unblock", json={"key": token}).json()) == KEY_FIELDS
    regenerated = admin.post("/key/regenerate", json={"key": token}).json()
    assert list(regenerated) == ["key", *KEY_FIELDS] and regenerated["key"].startswith("sk-")
    listed = admin.get("/key/list", params={"size": 1, "return_full_object": "true"}).json()
    assert list(listed) == ["keys", "total_count", "current_page", "total_pages"]
    assert list(listed["keys"][0]) == KEY_FIELDS


def test_info_accepts_the_plain_key_too(admin, make_key):
    plain = make_key()
    info = admin.get("/key/info", params={"key": plain})
    assert info.status_code == 200 and info.json()["key"] == keys.hash_key(plain)
    assert plain not in info.text


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"team_id": "t1"}, "team_id"),
        ({"max_budget": "10"}, "max_budget"),
        ({"max_budget": -1}, "max_budget"),
        ({"rpm_limit": 1.5}, "rpm_limit"),
        ({"tpm_limit": "100"}, "tpm_limit"),
        ({"max_parallel_requests": True}, "max_parallel_requests"),
        ({"models": "claude-haiku-4-5"}, "models"),
        ({"metadata": ["not", "an", "object"]}, "metadata"),
        ({"metadata": {"huge": 1e300}}, "metadata"),
        ({"tags": "team:a"}, "tags"),
        ({"tags": ["has\nnewline"]}, "tags"),
        ({"blocked": "yes"}, "blocked"),
        ({"duration": "10 years"}, "duration"),
        ({"budget_duration": "0d"}, "budget_duration"),
        ({"key_alias": ""}, "key_alias"),
        ({"key": 42}, "key"),
    ],
)
def test_generate_refuses_bad_fields_naming_them(admin, body, field):
    status, kind, message = error_of(admin.post("/key/generate", json=body))
    assert (status, kind) == (400, "invalid_request_error")
    assert field in message


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b'"a string"'])
def test_generate_refuses_bodies_that_are_not_a_json_object(admin, raw):
    status, kind, _ = error_of(admin.post("/key/generate", content=raw))
    assert (status, kind) == (400, "invalid_request_error")


def test_type_errors_name_json_types(admin):
    """The body is JSON: an error says array and object, as JSON calls them, not list and dictionary."""
    for body, said in (
        (b"[1, 2]", "body: Input should be an object"),
        (b'{"models": "claude-haiku-4-5"}', "models: Input should be a valid array"),
        (b'{"metadata": "owner"}', "metadata: Input should be an object"),
    ):
        status, _, message = error_of(admin.post("/key/generate", content=body))
        assert status == 400 and said in message, message


def test_caller_chosen_key_works_and_must_look_like_a_key(admin, gateway):
    chosen = "sk-" + keys.new_key()[3:30]
    created = admin.post("/key/generate", json={"key": chosen})
    assert created.status_code == 200 and created.json()["key"] == chosen
    assert call(gateway, chosen).type == "message"

    for bad in ("not-sk-prefixed-0123456789abcdefghij", "sk-short", "sk-" + "x" * 30 + "!"):
        status, _, message = error_of(admin.post("/key/generate", json={"key": bad}))
        assert status == 400 and "key" in message and bad not in message
    status, _, message = error_of(admin.post("/key/generate", json={"key": chosen}))
    assert status == 400 and "already in use" in message and chosen not in message


def test_the_master_key_cannot_become_a_virtual_key(admin):
    status, _, message = error_of(admin.post("/key/generate", json={"key": MASTER_KEY}))
    assert status == 400 and "master key" in message and MASTER_KEY not in message


def test_key_alias_is_unique(admin):
    alias = unique("billing-bot")
    assert admin.post("/key/generate", json={"key_alias": alias}).status_code == 200
    status, _, message = error_of(admin.post("/key/generate", json={"key_alias": alias}))
    assert status == 400 and alias in message


# -- who may call the key API -----------------------------------------------------------------------------------


def test_key_api_needs_the_master_key(gateway, virtual_key):
    import httpx

    with httpx.Client(base_url=gateway.url) as http:
        status, kind, _ = error_of(http.get("/key/list"))
        assert (status, kind) == (401, "authentication_error")
        status, kind, _ = error_of(http.get("/key/list", headers={"Authorization": f"Bearer {virtual_key}"}))
        assert (status, kind) == (403, "permission_error")
        status, kind, _ = error_of(http.post("/key/generate", json={}, headers={"x-api-key": "sk-" + "w" * 40}))
        assert (status, kind) == (401, "authentication_error")


# -- money, exactly ---------------------------------------------------------------------------------------------


def exact(response) -> dict:
    """The JSON answer with every number that has a fraction read as the exact Decimal written."""
    assert response.status_code == 200, response.text
    return json.loads(response.text, parse_float=Decimal)


def stored_number(token: str, name: str) -> str:
    """A number of the key's item as DynamoDB holds it on the wire (the digits that were written)."""
    item = boto3.client("dynamodb").get_item(
        TableName=get_settings().table_name, Key={"pk": {"S": f"KEY#{token}"}, "sk": {"S": "KEY"}}
    )["Item"]
    return item[name]["N"]


def listed_budget(admin, token: str) -> Decimal:
    """The key's max_budget as /key/list answers it, read page by page (other tests' keys may be listed before it)."""
    page, pages = 1, 1
    while page <= pages:
        params = {"size": 100, "page": page, "return_full_object": True}
        listed = exact(admin.get("/key/list", params=params))
        for key in listed["keys"]:
            if key["token"] == token:
                return key["max_budget"]
        page, pages = page + 1, listed["total_pages"]
    raise AssertionError(f"{token} is not listed")


@pytest.mark.parametrize(
    ("sent", "written"),
    [("0.1", "0.1"), ("0.3", "0.3"), ("123456789.123456789", "123456789.123456789"), ("1e-7", "0.0000001")],
)
def test_a_budget_is_stored_and_answered_exactly_as_sent(admin, sent, written):
    created = admin.post("/key/generate", content=f'{{"max_budget": {sent}}}')
    assert f'"max_budget":{written},' in created.text  # a plain number: no float rounding, no exponent
    token = exact(created)["token"]
    assert exact(created)["max_budget"] == Decimal(written)
    assert stored_number(token, "max_budget") == written
    assert exact(admin.get("/key/info", params={"key": token}))["info"]["max_budget"] == Decimal(written)

    updated = admin.post("/key/update", content=f'{{"key": "{token}", "max_budget": {written}0}}')  # 0.10: the same
    assert exact(updated)["max_budget"] == Decimal(written) and f'"max_budget":{written},' in updated.text
    assert listed_budget(admin, token) == Decimal(written)
    # 0.1 + 0.2 is 0.3 here: what governs the key is the decimal sent, not the float nearest to it.
    assert Decimal(stored_number(token, "budget_headroom")) == Decimal(written)


def test_a_budget_with_more_digits_than_can_be_kept_exactly_is_a_400(admin, make_key):
    token = keys.hash_key(make_key(max_budget=5))
    for path, extra in (("/key/generate", ""), ("/key/update", f', "key": "{token}"')):
        refused = admin.post(path, content=f'{{"max_budget": 12345678901.234567891{extra}}}')  # 20 digits
        status, kind, message = error_of(refused)
        assert (status, kind) == (400, "invalid_request_error")
        assert "max_budget" in message and "at most 18 significant digits (got 20)" in message, message
    assert exact(admin.get("/key/info", params={"key": token}))["info"]["max_budget"] == 5


def test_spend_is_answered_exactly_as_stored(admin, gateway, make_key):
    key = make_key(max_budget=1)
    call(gateway, key)
    gateway.drain()
    response = admin.get("/key/info", params={"key": keys.hash_key(key)})
    info = exact(response)["info"]
    stored = stored_number(keys.hash_key(key), "spend")
    assert info["spend"] == info["total_spend"] == Decimal(stored) > 0
    assert f'"spend":{stored},' in response.text and "e-" not in stored.lower()  # written plain, like 0.000048


# -- update -----------------------------------------------------------------------------------------------------


def test_update_by_key_and_by_alias(admin):
    alias = unique("updatable")
    token = admin.post("/key/generate", json={"key_alias": alias, "max_budget": 5, "rpm_limit": 10}).json()["token"]

    updated = admin.post(
        "/key/update",
        json={"key": token, "max_budget": 7.5, "models": ["claude-opus-4-5"], "metadata": {"owner": "ana"}},
    )
    assert updated.status_code == 200, updated.text
    assert updated.json()["key"] == token
    assert (updated.json()["max_budget"], updated.json()["models"]) == (7.5, ["claude-opus-4-5"])

    by_alias = admin.post("/key/update", json={"key_alias": alias, "rpm_limit": None, "duration": "2h"}).json()
    assert by_alias["token"] == token and by_alias["rpm_limit"] is None and by_alias["expires"]
    assert by_alias["max_budget"] == 7.5 and by_alias["metadata"] == {"owner": "ana"}  # untouched fields stay

    info = admin.get("/key/info", params={"key": token}).json()["info"]
    assert (info["max_budget"], info["rpm_limit"], info["models"]) == (7.5, None, ["claude-opus-4-5"])


def test_update_renames_the_alias_and_frees_the_old_one(admin):
    old, new = unique("old-name"), unique("new-name")
    token = admin.post("/key/generate", json={"key_alias": old}).json()["token"]

    renamed = admin.post("/key/update", json={"key": token, "key_alias": new})
    assert renamed.status_code == 200 and renamed.json()["key_alias"] == new
    assert admin.get("/key/list", params={"key_alias": new}).json()["keys"] == [token]
    assert admin.get("/key/list", params={"key_alias": old}).json()["keys"] == []
    assert admin.post("/key/generate", json={"key_alias": old}).status_code == 200  # free again

    taken = admin.post("/key/update", json={"key": token, "key_alias": old})
    assert error_of(taken)[0] == 400
    assert admin.get("/key/info", params={"key": token}).json()["info"]["key_alias"] == new


def test_update_errors(admin):
    assert error_of(admin.post("/key/update", json={"key": "sk-" + "n" * 40, "rpm_limit": 1}))[:2] == (
        404,
        "not_found_error",
    )
    assert error_of(admin.post("/key/update", json={"key_alias": unique("nobody"), "rpm_limit": 1}))[0] == 404
    assert error_of(admin.post("/key/update", json={"rpm_limit": 1}))[0] == 400
    assert error_of(admin.post("/key/update", json={"key": "neither-key-nor-hash"}))[0] == 400
    token = admin.post("/key/generate", json={}).json()["token"]
    status, _, message = error_of(admin.post("/key/update", json={"key": token, "spend": 0}))
    assert status == 400 and "spend" in message


# -- block, unblock, expiry -------------------------------------------------------------------------------------


def test_block_and_unblock_apply_at_once(admin, gateway, make_key, fake_upstream):
    key = make_key()
    assert call(gateway, key).type == "message"

    blocked = admin.post("/key/block", json={"key": key})
    assert blocked.status_code == 200 and blocked.json()["blocked"] is True and key not in blocked.text
    before = len(fake_upstream.requests)
    with pytest.raises(anthropic.AuthenticationError, match="blocked"):
        call(gateway, key)
    assert len(fake_upstream.requests) == before

    assert admin.post("/key/unblock", json={"key": keys.hash_key(key)}).json()["blocked"] is False
    assert call(gateway, key).type == "message"


def test_generate_blocked(admin, gateway, make_key):
    key = make_key(blocked=True)
    with pytest.raises(anthropic.AuthenticationError, match="blocked"):
        call(gateway, key)


def test_expired_key_is_refused(admin, gateway, make_key, fake_upstream, monkeypatch):
    key = make_key(duration="1h")
    assert call(gateway, key).type == "message"

    later = keys.utcnow() + timedelta(hours=1, seconds=1)
    monkeypatch.setattr(keys, "utcnow", lambda: later)
    before = len(fake_upstream.requests)
    with pytest.raises(anthropic.AuthenticationError, match="expired"):
        call(gateway, key)
    assert len(fake_upstream.requests) == before


def test_update_duration_null_means_never_expires(admin, gateway, make_key, monkeypatch):
    key = make_key(duration="1h")
    assert admin.post("/key/update", json={"key": key, "duration": None}).json()["expires"] is None
    much_later = keys.utcnow() + timedelta(days=3650)
    monkeypatch.setattr(keys, "utcnow", lambda: much_later)
    assert call(gateway, key).type == "message"


# -- delete -----------------------------------------------------------------------------------------------------


def test_delete_by_keys_and_by_aliases(admin, gateway, make_key):
    first, alias = make_key(), unique("to-delete")
    second = make_key(key_alias=alias)
    assert call(gateway, first).type == "message" and call(gateway, second).type == "message"

    deleted = admin.post("/key/delete", json={"keys": [first]})
    assert deleted.status_code == 200 and deleted.json() == {"deleted_keys": [keys.hash_key(first)]}
    with pytest.raises(anthropic.AuthenticationError):
        call(gateway, first)

    assert admin.post("/key/delete", json={"key_aliases": [alias]}).json() == {"deleted_keys": [keys.hash_key(second)]}
    with pytest.raises(anthropic.AuthenticationError):
        call(gateway, second)
    assert error_of(admin.get("/key/info", params={"key": second}))[0] == 404
    assert admin.post("/key/generate", json={"key_alias": alias}).status_code == 200  # the alias is free again


def test_delete_with_a_missing_key_deletes_nothing(admin, gateway, make_key):
    kept = make_key()
    missing = "sk-" + "m" * 40
    status, kind, message = error_of(admin.post("/key/delete", json={"keys": [kept, missing]}))
    assert (status, kind) == (404, "not_found_error")
    assert missing not in message and kept not in message
    assert call(gateway, kept).type == "message"
    assert error_of(admin.post("/key/delete", json={}))[0] == 400


# -- list -------------------------------------------------------------------------------------------------------


def test_list_paginates_and_never_shows_keys(admin, make_key):
    created = [make_key(metadata={"batch": "list-test"}) for _ in range(3)]
    mine = [keys.hash_key(k) for k in created]

    def walk(size: int, **params) -> tuple[list, int]:
        entries, page = [], 1
        while True:
            listed = admin.get("/key/list", params={"page": page, "size": size, **params})
            assert listed.status_code == 200 and listed.json()["current_page"] == page
            assert not any(key in listed.text for key in created)
            body = listed.json()
            if not body["keys"]:
                assert page == body["total_pages"] + 1
                return entries, body["total_count"]
            assert len(body["keys"]) <= size
            entries += body["keys"]
            page += 1

    tokens, total = walk(100)
    assert len(tokens) == total == len(set(tokens)) >= 3
    assert walk(2)[0] == tokens  # the same keys in the same order, in pages of 2
    # Newest first (other tests may have made keys with a clock set in the future: compare these three only).
    assert [token for token in tokens if token in mine] == mine[::-1]

    full, _ = walk(100, return_full_object="true")
    shown = {entry["token"]: entry for entry in full}
    assert [shown[token]["metadata"] for token in mine] == [{"batch": "list-test"}] * 3


def test_list_filters_by_alias_and_checks_its_parameters(admin, make_key):
    alias = unique("listed")
    key = make_key(key_alias=alias)
    assert admin.get("/key/list", params={"key_alias": alias}).json() == {
        "keys": [keys.hash_key(key)],
        "total_count": 1,
        "current_page": 1,
        "total_pages": 1,
    }
    for params in ({"size": 101}, {"size": 0}, {"page": 0}, {"page": "two"}):
        status, kind, message = error_of(admin.get("/key/list", params=params))
        assert (status, kind) == (400, "invalid_request_error") and next(iter(params)) in message


# -- regenerate -------------------------------------------------------------------------------------------------


def test_regenerate_replaces_the_key_and_keeps_settings_and_spend(admin, gateway, make_key, fake_upstream):
    from tests.test_governance import settled, usage_header

    alias = unique("rotating")
    old = make_key(key_alias=alias, max_budget=100.0, rpm_limit=1000, metadata={"team": "a"})
    sdk(gateway, old).messages.create(
        model="claude-haiku-4-5",
        max_tokens=8,
        messages=HELLO,
        extra_headers=usage_header(input_tokens=100, output_tokens=10),
    )
    spent = settled(gateway, admin, old, requests=1)["spend"]
    assert spent > 0

    regenerated = admin.post("/key/regenerate", json={"key": old})
    assert regenerated.status_code == 200, regenerated.text
    new = regenerated.json()["key"]
    assert new != old and regenerated.json()["token"] == keys.hash_key(new)

    before = len(fake_upstream.requests)
    with pytest.raises(anthropic.AuthenticationError):
        call(gateway, old)
    assert len(fake_upstream.requests) == before
    assert call(gateway, new).type == "message"

    info = settled(gateway, admin, new, requests=2)
    assert (info["key_alias"], info["max_budget"], info["rpm_limit"], info["metadata"]) == (
        alias,
        100.0,
        1000,
        {"team": "a"},
    )
    assert info["spend"] > spent
    assert error_of(admin.get("/key/info", params={"key": old}))[0] == 404

    # Again, by alias and with a chosen key: the previous one stops working too.
    chosen = "sk-" + keys.new_key()[3:35]
    again = admin.post("/key/regenerate", json={"key_alias": alias, "new_key": chosen})
    assert again.status_code == 200 and again.json()["key"] == chosen
    with pytest.raises(anthropic.AuthenticationError):
        call(gateway, new)
    assert call(gateway, chosen).type == "message"
    assert admin.get("/key/list", params={"key_alias": alias}).json()["keys"] == [keys.hash_key(chosen)]

    # A retired key can't be chosen again, and deleting the key removes every trace.
    assert error_of(admin.post("/key/regenerate", json={"key": chosen, "new_key": old}))[0] == 400
    assert admin.post("/key/delete", json={"keys": [chosen]}).status_code == 200
    with pytest.raises(anthropic.AuthenticationError):
        call(gateway, chosen)


def test_regenerate_unknown_key(admin):
    assert error_of(admin.post("/key/regenerate", json={"key": "sk-" + "u" * 40}))[:2] == (404, "not_found_error")
    assert error_of(admin.post("/key/regenerate", json={"key": "sk-" + "u" * 40, "extra": 1}))[0] == 400
