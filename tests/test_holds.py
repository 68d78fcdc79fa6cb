"""Every hold admission takes (the key's parallel slot, its budget reservation) is released however the request ends.

Raw HTTP through uvicorn, the fake upstream and moto, with a key that may have one request in flight and has a
budget: a leaked slot shows as a 429 on the next request, a leaked reservation as nonzero `reserved_spend`.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import httpx
import pytest

from anthropic_gateway import keys
from anthropic_gateway.storage import key_records, table
from support.captured_lines import ACCESS_MESSAGE
from support.servers import CuttingUpstream, free_port
from support.waiting import eventually

MESSAGE = {"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": [{"role": "user", "content": "Hi"}]}
STREAM = {**MESSAGE, "stream": True}


@pytest.fixture
def held_key(make_key) -> str:
    return make_key(max_parallel_requests=1, max_budget=5)


def _client(gateway, key: str) -> httpx.Client:
    return httpx.Client(base_url=gateway.url + "/anthropic", headers={"x-api-key": key}, timeout=30)


@pytest.fixture
def key_http(gateway, held_key) -> Iterator[httpx.Client]:
    with _client(gateway, held_key) as client:
        yield client


def assert_released(gateway, admin, key: str) -> None:
    gateway.drain()
    record = key_records.load(keys.hash_key(key))
    assert record is not None
    info = admin.get("/key/info", params={"key": keys.token_of(key)}).json()["info"]
    assert info["reserved_spend"] == 0, info
    parallel = table.handle().get_item(Key={"pk": key_records.record_pk(record.key_id), "sk": "PARALLEL"}).get("Item")
    assert not (parallel or {}).get("slots"), parallel


def _access_line(captured, request_id: str | None = None) -> dict:
    lines = [r for r in captured.records() if r.get("message") == ACCESS_MESSAGE]
    if request_id is not None:
        lines = [r for r in lines if r.get("request_id") == request_id]
    assert lines, "no access log line"
    return lines[-1]


def test_client_gone_while_the_upstream_still_sends_its_headers(gateway, admin, held_key, fake_upstream, captured):
    body = httpx.Request("POST", "/", json=MESSAGE).content
    head = (
        "POST /anthropic/v1/messages HTTP/1.1\r\nHost: gw\r\ncontent-type: application/json\r\n"
        f"x-api-key: {held_key}\r\nx-fake-header-delay-ms: 600000\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        sock.sendall(head + body)
        eventually(lambda: fake_upstream.requests, what="the upstream got the request")
    # Without cancelling, the request would wait the upstream's 10 minutes and drain() would fail.
    assert_released(gateway, admin, held_key)
    line = _access_line(captured)
    assert (line["status"], line.get("error_source")) == (499, None)
    fake_upstream.drain()  # the upstream saw the gateway go: it has nothing left in flight


def test_client_gone_mid_body(gateway, admin, held_key, key_http, fake_upstream):
    headers = {"x-fake-chunks": "200", "x-fake-delay-ms": "20"}
    with key_http.stream("POST", "/v1/messages", json=STREAM, headers=headers) as response:
        assert response.status_code == 200
        next(response.iter_raw())
    assert_released(gateway, admin, held_key)
    assert key_http.post("/v1/messages", json=MESSAGE).status_code == 200


def test_silent_upstream_is_a_504_and_releases(gateway_with, admin, held_key, captured):
    gateway = gateway_with(upstream_read_timeout=0.3)
    with _client(gateway, held_key) as key_http:
        response = key_http.post("/v1/messages", json=MESSAGE, headers={"x-fake-header-delay-ms": "600000"})
    assert response.status_code == 504
    assert response.json() == {
        "type": "error",
        "error": {"type": "timeout_error", "message": "The upstream Anthropic API did not answer in time."},
    }
    assert_released(gateway, admin, held_key)
    assert _access_line(captured, response.headers["x-gateway-request-id"])["status"] == 504


def test_refused_upstream_is_a_502_and_releases(gateway_with, admin, held_key):
    gateway = gateway_with(anthropic_api_base=f"http://127.0.0.1:{free_port()}")
    with _client(gateway, held_key) as key_http:
        response = key_http.post("/v1/messages", json=MESSAGE)
    assert response.status_code == 502
    assert response.json()["error"] == {
        "type": "api_error",
        "message": "The upstream Anthropic API could not be reached (ConnectError).",
    }
    assert_released(gateway, admin, held_key)


@pytest.fixture
def upstream_cutting_its_stream(gateway_with):
    """A gateway whose upstream starts an SSE stream (chunked) and drops the connection partway through it."""
    start = {"type": "message_start", "message": {"model": "claude-sonnet-4-5", "usage": {"input_tokens": 5}}}
    event = b"event: message_start\ndata: " + json.dumps(start).encode() + b"\n\n"
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    with CuttingUpstream(head + b"%x\r\n%s\r\n" % (len(event), event)) as upstream:
        yield gateway_with(anthropic_api_base=upstream.url)


def test_upstream_cut_mid_body_releases(admin, held_key, upstream_cutting_its_stream, captured):
    gateway = upstream_cutting_its_stream
    with _client(gateway, held_key) as key_http, key_http.stream("POST", "/v1/messages", json=STREAM) as response:
        assert response.status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            response.read()  # the gateway ends the response where the upstream broke off
    assert_released(gateway, admin, held_key)
    line = _access_line(captured)
    assert (line["completed"], line["error_source"], line["input_tokens"]) == (False, "upstream", 5)


def test_an_unexpected_error_after_admission_is_a_502_and_releases(
    gateway, admin, held_key, key_http, monkeypatch, captured
):
    from anthropic_gateway import routing

    async def broken(*args: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(routing, "forward", broken)
    response = key_http.post("/v1/messages", json=MESSAGE)
    assert response.status_code == 502
    assert response.json() == {
        "type": "error",
        "error": {"type": "api_error", "message": "Upstream or gateway error; the request was not completed."},
    }
    assert_released(gateway, admin, held_key)
    line = _access_line(captured, response.headers["x-gateway-request-id"])
    assert (line["status"], line["error_source"]) == (502, "gateway")
    monkeypatch.undo()
    assert key_http.post("/v1/messages", json=MESSAGE).status_code == 200
