"""Request tags: merged from the body, the x-litellm-tags header and the key's defaults; validated before forwarding."""

from __future__ import annotations

import anthropic
import httpx
import pytest
from starlette.datastructures import Headers

from anthropic_gateway import tags
from anthropic_gateway.auth import MASTER, Principal
from anthropic_gateway.errors import GatewayError
from anthropic_gateway.storage.key_records import KeyRecord
from support.captured_lines import stored_key

HELLO = {"model": "claude-sonnet-4-5", "max_tokens": 16, "messages": [{"role": "user", "content": "Hello"}]}


@pytest.fixture
def gw(gateway):
    """Raw HTTP to the pass-through with a virtual key without default tags."""
    headers = {"x-api-key": stored_key()}
    with httpx.Client(base_url=gateway.url + "/anthropic", headers=headers, timeout=30) as client:
        yield client


def headers(*values: str) -> Headers:
    return Headers(raw=[(b"x-litellm-tags", value.encode()) for value in values])


def keyed(*default_tags: str) -> Principal:
    return Principal(record=KeyRecord(token="0" * 64, key_name="sk-...abcd", tags=list(default_tags)))


def rejected(metadata: dict | None = None, header: tuple[str, ...] = (), principal: Principal | None = None) -> str:
    with pytest.raises(GatewayError) as raised:
        tags.resolve(metadata, headers(*header), principal)
    assert raised.value.status == 400 and raised.value.error_type == "invalid_request_error"
    return raised.value.message


# -- merging -----------------------------------------------------------------------------------------------------


def test_merged_in_order_body_header_key_without_duplicates():
    resolved = tags.resolve(
        {"tags": ["team:a", "app:x"]}, headers("app:x, env:prod", "extra"), keyed("team:a", "cc:42")
    )
    assert resolved == ["team:a", "app:x", "env:prod", "extra", "cc:42"]


def test_no_tags_anywhere():
    assert tags.resolve(None, headers(), MASTER) == []
    assert tags.resolve({"user": "x"}, headers(), None) == []
    assert tags.resolve({"tags": None}, headers(), keyed()) == []


def test_header_items_are_trimmed_and_empty_items_skipped():
    assert tags.resolve(None, headers(" a , b,,c, "), None) == ["a", "b", "c"]


def test_every_allowed_character_and_the_length_limit():
    longest = "x" * tags.MAX_TAG_LENGTH
    allowed = "Az09 _.:/=+@-"
    assert tags.resolve({"tags": [allowed, longest]}, headers(), None) == [allowed, longest]


def test_ten_tags_pass_and_eleven_do_not():
    ten = [f"t{i}" for i in range(10)]
    assert tags.resolve({"tags": ten}, headers(), None) == ten
    message = rejected({"tags": ten[:6]}, ("t6,t7,t8,t9",), keyed("key-default"))
    assert "11" in message and "10" in message


# -- validation --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["", "   ", "x" * 65, "semi;colon", 'quote"', "new\nline", "ümlaut", "a,b"])
def test_invalid_body_tags_are_named(bad):
    message = rejected({"tags": ["fine", bad]})
    if bad.strip():
        assert repr(bad.strip()) in message


@pytest.mark.parametrize("bad", ["emoji-\U0001f600", "tab\there", "<script>"])
def test_invalid_header_and_key_tags_are_rejected(bad):
    # Starlette decodes header bytes as latin-1, so the header case names the tag as it arrived.
    assert "Invalid tag" in rejected(header=(bad,))
    assert repr(bad) in rejected(principal=keyed(bad))


@pytest.mark.parametrize("value", ["team:a", {"team": "a"}, ["a", 1], [["a"]]])
def test_body_tags_must_be_a_list_of_strings(value):
    assert "litellm_metadata.tags" in rejected({"tags": value})


def test_a_tag_that_looks_like_a_key_is_rejected_without_echoing_it():
    key = "sk-" + "A1b2_" * 8
    message = rejected({"tags": [key]})
    assert "API key" in message and key not in message


def test_a_very_long_tag_is_not_echoed_in_full():
    assert len(rejected({"tags": ["y" * 5000]})) < 300


# -- end to end --------------------------------------------------------------------------------------------------


def test_tags_from_body_header_and_key_reach_the_metrics(gateway, fake_upstream, captured):
    key = stored_key(tags=["team:a", "cc:42"])
    with httpx.Client(base_url=gateway.url + "/anthropic", headers={"x-api-key": key}, timeout=30) as client:
        response = client.post(
            "/v1/messages",
            json={**HELLO, "litellm_metadata": {"tags": ["team:a", "app:x"]}},
            headers={"x-litellm-tags": "app:x, env:prod"},
        )
    assert response.status_code == 200
    lines = captured.for_request(response.headers["x-gateway-request-id"])

    assert lines.access["tags"] == ["team:a", "app:x", "env:prod", "cc:42"]
    # Metric dimensions: the key's default tags; the others (not in METRIC_TAGS) count once under `other`.
    assert list(lines.by_tag()) == ["team:a", "other", "cc:42"]
    forwarded = fake_upstream.requests[-1]
    assert "litellm_metadata" not in forwarded.json()
    assert forwarded.header("x-litellm-tags") is None


def test_sdk_gets_bad_request_naming_the_tag_and_nothing_is_forwarded(gateway, fake_upstream):
    client = anthropic.Anthropic(base_url=gateway.url + "/anthropic", api_key=stored_key(), max_retries=0)
    with pytest.raises(anthropic.BadRequestError) as raised:
        client.messages.create(**HELLO, extra_body={"litellm_metadata": {"tags": ["ok", "no|pipes"]}})
    assert raised.value.status_code == 400
    assert raised.value.body["error"]["type"] == "invalid_request_error"
    assert "'no|pipes'" in raised.value.body["error"]["message"]
    assert raised.value.response.headers["x-gateway-request-id"].startswith("gwreq_")
    assert fake_upstream.requests == []


def test_too_many_tags_in_the_header_is_a_400(gw, fake_upstream):
    response = gw.post("/v1/messages", json=HELLO, headers={"x-litellm-tags": ",".join(f"t{i}" for i in range(11))})
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert fake_upstream.requests == []


def test_a_key_with_an_invalid_default_tag_is_refused(gateway, fake_upstream):
    key = stored_key(tags=["fine", "not fine!"])
    with httpx.Client(base_url=gateway.url + "/anthropic", headers={"x-api-key": key}, timeout=30) as client:
        response = client.post("/v1/messages", json=HELLO)
    assert response.status_code == 400
    assert "'not fine!'" in response.json()["error"]["message"]
    assert fake_upstream.requests == []
