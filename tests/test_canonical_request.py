"""Every check reads what is forwarded: one canonical path, one parse of the body, honest bills for cut streams.

Raw HTTP through uvicorn, the fake upstream and moto, as an attacker would send it.
"""

from __future__ import annotations

import gzip
import json
import socket
from contextlib import ExitStack

import httpx
import pytest

from anthropic_gateway import keys
from anthropic_gateway.storage import key_records
from support.captured_lines import ACCESS_MESSAGE

HAIKU = "claude-haiku-4-5"
OPUS = "claude-opus-4-1"


def _message(model: str, **extra: object) -> dict:
    return {"model": model, "max_tokens": 1000, "messages": [{"role": "user", "content": "Hi"}], **extra}


def _raw(port: int, request_line: str, key: str, body: bytes, extra_headers: str = "") -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(
            f"{request_line} HTTP/1.1\r\nHost: gw\r\nx-api-key: {key}\r\ncontent-type: application/json\r\n"
            f"{extra_headers}content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
            + body
        )
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    return int(reply.split(b" ", 2)[1]), reply.split(b"\r\n\r\n", 1)[1]


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/%6dessages", "/v1/%6D%65ssages", "/%76%31/messages"])
def test_an_encoded_path_meets_the_same_allowlist(gateway, make_key, fake_upstream, path):
    key = make_key(models=[HAIKU])
    status, body = _raw(gateway.port, f"POST /anthropic{path}", key, json.dumps(_message(OPUS)).encode())
    assert status == 403, body
    assert json.loads(body)["error"]["type"] == "permission_error"
    assert fake_upstream.requests == []

    status, _ = _raw(gateway.port, f"POST /anthropic{path}", key, json.dumps(_message(HAIKU)).encode())
    assert status == 200
    assert fake_upstream.requests[-1].path == "/v1/messages"  # the canonical path is the one sent


@pytest.mark.parametrize("coding", ["gzip", "identity, gzip", "br", "deflate"])
@pytest.mark.parametrize("settings", [{"models": [HAIKU]}, {"max_budget": 1}, {}])
def test_a_compressed_body_is_refused_not_forwarded_unread(gateway, make_key, fake_upstream, settings, coding):
    """An upstream that decodes Content-Encoding would read a model and a max_tokens no check saw."""
    key = make_key(**settings)
    compressed = gzip.compress(json.dumps(_message(OPUS, max_tokens=64000)).encode())
    status, body = _raw(gateway.port, "POST /anthropic/v1/messages", key, compressed, f"content-encoding: {coding}\r\n")
    assert status == 400, body
    assert json.loads(body)["error"]["type"] == "invalid_request_error"
    assert fake_upstream.requests == []

    plain = json.dumps(_message(HAIKU)).encode()
    status, _ = _raw(gateway.port, "POST /anthropic/v1/messages", key, plain, "content-encoding: identity\r\n")
    assert status == 200  # identity is no encoding


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/%6dessages"])
def test_an_encoded_path_meets_the_same_budget(gateway, make_key, path):
    """Streams held open until the budget refuses one: as many through the encoded path as through the plain."""
    key = make_key(max_budget=0.05)  # sonnet, max_tokens 1000: about $0.015 reserved each
    admitted = 0
    with ExitStack() as open_streams:
        for _ in range(10):
            client = open_streams.enter_context(
                httpx.Client(base_url=gateway.url, headers={"x-api-key": key}, timeout=30)
            )
            response = open_streams.enter_context(
                client.stream(
                    "POST",
                    "/anthropic" + path,
                    json=_message("claude-sonnet-4-5", stream=True),
                    headers={"x-fake-chunks": "100", "x-fake-delay-ms": "100"},
                )
            )
            if response.status_code != 200:
                assert response.status_code == 402
                break
            admitted += 1
    gateway.drain()
    assert admitted == 4


@pytest.mark.parametrize(
    "path",
    ["/v1%2Fmessages", "/v1/%2e%2e/messages", "/v1/messages%20", "/v1/%5cmessages", "/v1//messages", "/v1/me%00"],
)
def test_ambiguous_paths_are_refused(gateway, virtual_key, fake_upstream, path):
    status, body = _raw(gateway.port, f"POST /anthropic{path}", virtual_key, b"{}")
    assert status == 400
    assert json.loads(body)["error"]["type"] == "invalid_request_error"
    assert fake_upstream.requests == []


@pytest.mark.parametrize(
    "body",
    [
        b'{"model":"claude-haiku-4-5","mod\\u0065l":"claude-opus-4-1","max_tokens":8,"messages":[]}',
        b'{"model":"claude-haiku-4-5","max_tokens":8,"messages":[],"model":"claude-opus-4-1"}',
        b'{"litellm_metadata":{"tags":["a"]},"model":"claude-haiku-4-5","litellm_metadat\\u0061":{"x":1}}',
    ],
)
@pytest.mark.parametrize("restricted", [True, False])
def test_members_named_twice_are_refused(gateway, make_key, fake_upstream, body, restricted):
    key = make_key(models=[HAIKU]) if restricted else make_key()
    status, reply = _raw(gateway.port, "POST /anthropic/v1/messages", key, body)
    if not restricted and b"\\u" not in body and b"litellm_metadata" not in body:
        # Nothing here reads this body: it goes upstream as sent, for Anthropic to judge.
        assert fake_upstream.requests[-1].body == body
        return
    assert status == 400, reply
    assert "more than once" in json.loads(reply)["error"]["message"]
    assert fake_upstream.requests == []


DEEP = b"[" * 100_000 + b"]" * 100_000


def _access_lines(captured, gateway) -> list[dict]:
    gateway.drain()
    return [r for r in captured.records() if r.get("message") == ACCESS_MESSAGE]


def test_deep_nesting_is_a_400_when_the_gateway_must_read_the_body(gateway, make_key, fake_upstream, captured):
    body = b'{"litellm_metadata":{"tags":["a"]},"model":"claude-haiku-4-5","deep":' + DEEP + b"}"
    status, reply = _raw(gateway.port, "POST /anthropic/v1/messages", make_key(), body)
    assert status == 400, reply
    restricted = b'{"model":"claude-haiku-4-5","deep":' + DEEP + b"}"
    status, reply = _raw(gateway.port, "POST /anthropic/v1/messages", make_key(models=[HAIKU]), restricted)
    assert status == 400, reply
    assert "too deeply" in json.loads(reply)["error"]["message"]
    assert fake_upstream.requests == []
    assert [line["status"] for line in _access_lines(captured, gateway)] == [400, 400]


def test_deep_nesting_goes_through_untouched_when_nothing_reads_it(gateway, virtual_key, fake_upstream, captured):
    body = b'{"model":"claude-haiku-4-5","deep":' + DEEP + b"}"
    status, _ = _raw(gateway.port, "POST /anthropic/v1/messages/count_tokens", virtual_key, body)
    assert fake_upstream.requests[-1].body == body  # whatever the upstream makes of it is its answer
    assert [line["status"] for line in _access_lines(captured, gateway)] == [status]


def test_query_goes_upstream_byte_for_byte(gateway, virtual_key, fake_upstream):
    body = json.dumps(_message(HAIKU)).encode()
    status, _ = _raw(gateway.port, "POST /anthropic/v1/messages?beta=true&x=%2F%20a+b&y=?#frag", virtual_key, body)
    assert status == 200
    assert fake_upstream.requests[-1].query == "beta=true&x=%2F%20a+b&y=?"
    status, _ = _raw(gateway.port, "POST /anthropic/v1/messages?#", virtual_key, body)
    assert status == 200


def test_a_stream_cut_before_its_final_usage_is_billed_an_upper_bound(gateway, virtual_key, fake_upstream, captured):
    real_output_tokens = 200
    headers = {
        "x-fake-chunks": "200",
        "x-fake-delay-ms": "1",
        "x-fake-final-delay-ms": "600000",  # the final usage never comes in time
        "x-fake-usage": json.dumps({"input_tokens": 7, "output_tokens": real_output_tokens}),
    }
    message = {**_message("claude-sonnet-4-5", stream=True), "messages": [{"role": "user", "content": "w" * 800}]}
    deltas = 0
    http = httpx.Client(base_url=gateway.url + "/anthropic", headers={"x-api-key": virtual_key}, timeout=30)
    with http, http.stream("POST", "/v1/messages", json=message, headers=headers) as response:
        for line in response.iter_lines():
            deltas += line.startswith("event: content_block_delta")
            if deltas == 199:
                break  # the client goes away before the last delta and message_delta
    gateway.drain()
    [line] = _access_lines(captured, gateway)
    assert line["usage_estimated"] is True
    assert line["output_tokens"] >= real_output_tokens
    assert line["input_tokens"] == 7 and line["cost_usd"] > 0
    recorded = key_records.load(keys.hash_key(virtual_key))
    assert recorded is not None and recorded.output_tokens >= real_output_tokens


def test_a_stream_with_its_final_usage_is_billed_exactly(http, gateway, fake_upstream, captured):
    headers = {"x-fake-chunks": "20", "x-fake-usage": json.dumps({"output_tokens": 20})}
    response = http.post("/v1/messages", json=_message("claude-sonnet-4-5", stream=True), headers=headers)
    assert response.status_code == 200
    gateway.drain()
    [line] = _access_lines(captured, gateway)
    assert (line["usage_estimated"], line["output_tokens"]) == (False, 20)
