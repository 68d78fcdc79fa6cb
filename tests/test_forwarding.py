"""Raw HTTP through the gateway: what the upstream receives is what the client sent, minus credentials."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from anthropic_gateway import request_body
from tests.conftest import MASTER_KEY, UPSTREAM_KEY

MESSAGE = {"model": "claude-sonnet-4-5", "max_tokens": 16, "messages": [{"role": "user", "content": "Hi"}]}


def _sent_headers(received) -> dict[str, str]:
    return dict(received.headers)


def test_body_and_query_reach_the_upstream_byte_for_byte(http, fake_upstream):
    # Odd spacing, key order, unicode escapes and float forms must all survive untouched.
    body = (
        b'{ "max_tokens":16 ,"model" : "claude-sonnet-4-5","messages":[{"role":"user","content":"caf\\u00e9 1.50e1"}]}'
    )
    response = http.post("/v1/messages?beta=true&x=%2Fa+b", content=body, headers={"content-type": "application/json"})

    assert response.status_code == 200, response.text
    received = fake_upstream.requests[-1]
    assert received.body == body
    assert received.path == "/v1/messages"
    assert received.query == "beta=true&x=%2Fa+b"


def test_headers_pass_verbatim_and_credentials_are_replaced(gateway, virtual_key, fake_upstream):
    sent = {
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "prompt-caching-2024-07-31,interleaved-thinking-2025-05-14",
        "anthropic-dangerous-direct-browser-access": "true",
        "x-custom-trace": "abc123",
        "user-agent": "claude-cli/2.0.0 (external, cli)",
        "content-type": "application/json",
        "authorization": f"Bearer {virtual_key}",
        "x-litellm-api-key": virtual_key,
    }
    response = httpx.post(gateway.url + "/anthropic/v1/messages", json=MESSAGE, headers=sent)

    assert response.status_code == 200, response.text
    received = _sent_headers(fake_upstream.requests[-1])
    for name in (
        "anthropic-version",
        "anthropic-beta",
        "anthropic-dangerous-direct-browser-access",
        "x-custom-trace",
        "user-agent",
        "content-type",
    ):
        assert received[name] == sent[name]
    assert received["x-api-key"] == UPSTREAM_KEY
    assert "authorization" not in received and "x-litellm-api-key" not in received
    assert received["host"] == fake_upstream.url.removeprefix("http://")
    assert int(received["content-length"]) == len(fake_upstream.requests[-1].body)


def test_default_anthropic_version_only_when_missing(http, fake_upstream):
    http.post("/v1/messages", json=MESSAGE)
    assert fake_upstream.requests[-1].header("anthropic-version") == "2023-06-01"

    http.post("/v1/messages", json=MESSAGE, headers={"anthropic-version": "2099-01-01"})
    assert [v for n, v in fake_upstream.requests[-1].headers if n == "anthropic-version"] == ["2099-01-01"]


def test_upstream_never_sees_a_gateway_key(gateway, virtual_key, fake_upstream):
    for headers in (
        {"x-api-key": virtual_key},
        {"authorization": f"bearer {virtual_key}"},
        {"x-api-key": MASTER_KEY},
        {"authorization": f"BEARER {MASTER_KEY}"},
    ):
        assert httpx.post(gateway.url + "/anthropic/v1/messages", json=MESSAGE, headers=headers).status_code == 200
    everything = b"".join(r.body + json.dumps(r.headers).encode() + r.query.encode() for r in fake_upstream.requests)
    assert virtual_key.encode() not in everything and MASTER_KEY.encode() not in everything
    assert len(fake_upstream.requests) == 4


def test_compressed_request_accepted_and_response_not_garbled(http, fake_upstream):
    response = http.post("/v1/messages", json=MESSAGE, headers={"accept-encoding": "gzip, br"})

    assert response.status_code == 200
    assert response.json()["type"] == "message"  # decodable as sent, whatever encoding was offered
    assert fake_upstream.requests[-1].header("accept-encoding") in (None, "identity")


def test_upstream_error_status_headers_and_body_unchanged(http, fake_upstream):
    fake_upstream.fail_next(
        429,
        headers={"retry-after": "7", "anthropic-ratelimit-requests-remaining": "0"},
        body=b'{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}',
    )
    response = http.post("/v1/messages", json=MESSAGE)

    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    assert response.headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert response.content == b'{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}'


def test_multipart_upload_is_forwarded_byte_for_byte(http, fake_upstream):
    payload = bytes(range(256)) * 64
    response = http.post(
        "/v1/files",
        files={"file": ("blob.bin", payload, "application/octet-stream")},
        headers={"anthropic-beta": "files-api-2025-04-14"},
    )

    assert response.status_code == 200, response.text
    received = fake_upstream.requests[-1]
    assert payload in received.body
    assert received.header("content-type").startswith("multipart/form-data; boundary=")


def test_binary_download_streams_with_length(http):
    response = http.get("/v1/files/file_big_300000/content", headers={"anthropic-beta": "files-api-2025-04-14"})
    assert response.status_code == 200
    assert len(response.content) == 300000
    assert response.headers["content-length"] == "300000"


def test_gateway_answers_carry_a_request_id(http):
    response = http.post("/v1/messages", json=MESSAGE)
    assert response.headers["x-gateway-request-id"].startswith("gwreq_")
    assert response.headers["request-id"].startswith("req_")  # upstream's own, unchanged


def test_request_over_the_lambda_limit_is_refused_before_the_upstream(http, fake_upstream):
    too_big = b"x" * (6 * 1024 * 1024 + 1)
    response = http.post("/v1/files", content=too_big, headers={"content-type": "application/octet-stream"})

    assert response.status_code == 413
    error = response.json()
    assert error["type"] == "error" and error["error"]["type"] == "request_too_large"
    assert "6291456 bytes" in error["error"]["message"]
    assert fake_upstream.requests == []


def test_chunked_request_over_the_limit_is_refused(http, fake_upstream):
    def chunks():
        for _ in range(7):
            yield b"y" * (1024 * 1024)

    response = http.post("/v1/files", content=chunks(), headers={"content-type": "application/octet-stream"})
    assert response.status_code == 413
    assert fake_upstream.requests == []


def test_request_at_the_limit_goes_through(http, fake_upstream):
    body = b"z" * (6 * 1024 * 1024)
    http.post("/v1/files", content=body, headers={"content-type": "application/octet-stream"})
    assert fake_upstream.requests[-1].body == body


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"litellm_metadata":{"tags":["a"]},"model":"m"}', b'{"model":"m"}'),
        (b'{"model":"m", "litellm_metadata": {"tags": ["a"]} }', b'{"model":"m" }'),
        (b'{"a":1,"litellm_metadata":{},"b":[1.0]}', b'{"a":1,"b":[1.0]}'),
        (b'{"litellm_metadata":{}}', b"{}"),
        (b'{"x":{"litellm_metadata":1}}', b'{"x":{"litellm_metadata":1}}'),  # only top level
        (b'["litellm_metadata"]', b'["litellm_metadata"]'),
        (b'{"litellm_metadata": {}, broken', b'{"litellm_metadata": {}, broken'),
    ],
)
def test_litellm_metadata_removal_keeps_every_other_byte(body, expected):
    assert asyncio.run(request_body.prepare(body)).raw == expected


@pytest.mark.parametrize(
    "body",
    [
        b'{"litellm_metadata":{"tags":["a"]},"model":"m"}',
        b'{"model":"m", "litellm_metadata": {"tags": ["a"]} }',
        '{"a":"\u00e9\u6f22","litellm_metadata":{"t":"\u00e9"} ,\n "model" : "m\u00e9","b":1}'.encode(),
        '{"a":"\u00e9","model":"m","litellm_metadata":{"t":"\u6f22"}}'.encode(),
    ],
)
def test_the_model_is_found_in_the_bytes_left_after_the_cut(body):
    """Bedrock's rewrite splices the model's bytes where the one parse found them, also past a cut and non-ASCII
    text: exactly where a fresh read of the forwarded bytes finds them."""
    prepared = asyncio.run(request_body.prepare(body))
    assert b"litellm_metadata" not in prepared.raw
    span = asyncio.run(prepared.model_span())
    assert span is not None and span == asyncio.run(request_body.RequestBody(prepared.raw).model_span())
    assert json.loads(prepared.raw[span[1] : span[2]]) == span[0] == prepared.model


def test_litellm_metadata_is_returned_for_tags_and_gone_from_what_checks_read():
    body = asyncio.run(request_body.prepare(b'{"litellm_metadata":{"tags":["t"]},"model":"m"}'))
    assert body.litellm_metadata == {"tags": ["t"]}
    assert asyncio.run(body.parsed(strict=True)) == {"model": "m"}


def test_upstream_headers_equal_the_clients_minus_credentials_and_hop_by_hop(gateway, virtual_key, fake_upstream):
    sent = [
        ("x-api-key", virtual_key),
        ("anthropic-version", "2023-06-01"),
        ("anthropic-beta", "a-2025-01-01"),
        ("anthropic-beta", "b-2025-02-02"),  # repeated headers stay repeated, in order
        ("content-type", "application/json"),
        ("x-trace", "1"),
        ("connection", "keep-alive, x-hop"),
        ("x-hop", "named by Connection: hop-by-hop"),
        ("te", "trailers"),
        ("accept-encoding", "gzip"),
        ("x-litellm-tags", "team:a"),  # the gateway's, like the two the Lambda Web Adapter adds:
        ("x-amzn-request-context", '{"accountId": "123456789012"}'),
        ("x-amzn-lambda-context", '{"invoked_function_arn": "arn:aws:lambda:..."}'),
    ]
    with httpx.Client() as client:
        request = client.build_request("POST", gateway.url + "/anthropic/v1/messages", json=MESSAGE, headers=sent)
        assert client.send(request).status_code == 200
    on_the_wire = [(name.decode().lower(), value.decode()) for name, value in request.headers.raw]

    received = fake_upstream.requests[-1]
    dropped = {
        "host",
        "content-length",
        "connection",
        "x-hop",
        "te",
        "accept-encoding",
        "x-api-key",
        "x-litellm-tags",
        "x-amzn-request-context",
        "x-amzn-lambda-context",
    }
    expected = [(n, v) for n, v in on_the_wire if n not in dropped]
    assert [(n, v) for n, v in received.headers if n not in dropped] == expected
    added = sorted((n, v) for n, v in received.headers if n in dropped)
    host = fake_upstream.url.removeprefix("http://")
    assert added == sorted(
        [
            ("accept-encoding", "identity"),
            ("content-length", str(len(received.body))),
            ("host", host),
            ("x-api-key", UPSTREAM_KEY),
        ]
    )


def test_unreachable_upstream_is_a_502_in_anthropics_shape(gateway_with, virtual_key):
    from support.servers import free_port

    gateway = gateway_with(anthropic_api_base=f"http://127.0.0.1:{free_port()}")
    with httpx.Client(base_url=gateway.url + "/anthropic", headers={"x-api-key": virtual_key}, timeout=30) as http:
        response = http.post("/v1/messages", json=MESSAGE)

    assert response.status_code == 502
    assert response.json()["error"] == {
        "type": "api_error",
        "message": "The upstream Anthropic API could not be reached (ConnectError).",
    }


def test_upstream_cookies_never_reach_another_request(http, fake_upstream):
    # GHSA-7vwr-g6pm-9hc8: a shared client's cookie jar once leaked cookies between users of a proxy.
    fake_upstream.fail_next(429, headers={"set-cookie": "session=of-the-first-caller; Path=/"})
    first = http.post("/v1/messages", json=MESSAGE)
    assert first.headers["set-cookie"].startswith("session=of-the-first-caller")  # passed to its caller, as sent

    http.cookies.clear()
    http.post("/v1/messages", json=MESSAGE)

    assert fake_upstream.requests[-1].header("cookie") is None
