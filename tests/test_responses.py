"""The responses that end a pass-through request each start its accounting exactly once, after the last byte.

Through the real HTTP path (uvicorn, the fake upstream, moto). Each test waits on a fact: `app.drain` run on the
gateway's own event loop returns once every after-response task has finished and the ledger is written.
"""

from __future__ import annotations

import httpx
import pytest

from anthropic_gateway import keys
from anthropic_gateway.storage import key_records
from support.captured_lines import ACCESS_MESSAGE, stored_key
from support.servers import CuttingUpstream

BATCH = {
    "requests": [
        {
            "custom_id": "one",
            "params": {"model": "claude-sonnet-4-5", "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]},
        }
    ]
}


def access_lines(captured, request_id: str) -> list[dict]:
    return [r for r in captured.records() if r.get("request_id") == request_id and r.get("message") == ACCESS_MESSAGE]


@pytest.fixture
def one_slot_key(gateway) -> str:
    """A key that may have one request in flight: a request whose accounting never ran would hold it for good."""
    return stored_key(max_parallel_requests=1)


def test_batch_responses_are_accounted_once_each(gateway, captured, one_slot_key):
    with httpx.Client(base_url=gateway.url + "/anthropic", headers={"x-api-key": one_slot_key}, timeout=30) as http:
        request_ids = []
        for _ in range(3):
            response = http.post("/v1/messages/batches", json=BATCH)
            assert response.status_code == 200, response.text  # the slot taken by the one before was released
            assert response.json()["results_url"].startswith(gateway.url + "/anthropic/v1/messages/batches/")
            assert response.headers.get_list("x-gateway-request-id") == [response.headers["x-gateway-request-id"]]
            assert int(response.headers["content-length"]) == len(response.content)
            request_ids.append(response.headers["x-gateway-request-id"])
            gateway.drain()

    assert [len(access_lines(captured, request_id)) for request_id in request_ids] == [1, 1, 1]
    assert key_records.load(keys.hash_key(one_slot_key)).requests == 3


def test_gateway_errors_are_accounted_once_and_release_what_admission_took(gateway_with, captured, one_slot_key):
    from support.servers import free_port

    gateway = gateway_with(anthropic_api_base=f"http://127.0.0.1:{free_port()}")
    with httpx.Client(base_url=gateway.url + "/anthropic", headers={"x-api-key": one_slot_key}, timeout=30) as http:
        request_ids = []
        for _ in range(2):  # refused after admission took the slot: only its accounting gives the slot back
            response = http.post("/v1/messages", json={"model": "claude-sonnet-4-5", "max_tokens": 8, "messages": []})
            assert response.status_code == 502, response.text
            request_ids.append(response.headers["x-gateway-request-id"])
            gateway.drain()
        unauthenticated = http.post("/v1/messages", json={}, headers={"x-api-key": "sk-" + "z" * 43})
        assert unauthenticated.status_code == 401
        assert unauthenticated.headers.get_list("x-gateway-request-id") == [
            unauthenticated.headers["x-gateway-request-id"]
        ]
        request_ids.append(unauthenticated.headers["x-gateway-request-id"])
        gateway.drain()

    lines = [access_lines(captured, request_id) for request_id in request_ids]
    assert [len(found) for found in lines] == [1, 1, 1]
    assert [(found[0]["status"], found[0]["error_source"]) for found in lines] == [
        (502, "gateway"),
        (502, "gateway"),
        (401, "gateway"),
    ]
    assert key_records.load(keys.hash_key(one_slot_key)).requests == 0  # only requests Anthropic answered count


@pytest.fixture
def upstream_cutting_off_its_json(gateway_with):
    """A gateway whose upstream promises a JSON body and closes the connection partway through it."""
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 500\r\n\r\n"
    with CuttingUpstream(head + b'{"id": "msgbatch_') as upstream:
        yield gateway_with(anthropic_api_base=upstream.url)


def test_a_batch_body_cut_off_upstream_is_a_502_accounted_once(captured, one_slot_key, upstream_cutting_off_its_json):
    gateway = upstream_cutting_off_its_json
    with httpx.Client(base_url=gateway.url + "/anthropic", headers={"x-api-key": one_slot_key}, timeout=30) as http:
        response = http.post("/v1/messages/batches", json=BATCH)
        gateway.drain()
        assert http.post("/v1/messages/batches", json=BATCH).status_code == 502  # not 429: the slot was released
    gateway.drain()

    assert response.status_code == 502
    assert response.json() == {
        "type": "error",
        "error": {
            "type": "api_error",
            "message": "The upstream Anthropic API broke off its answer (RemoteProtocolError).",
        },
    }
    [line] = access_lines(captured, response.headers["x-gateway-request-id"])
    assert (line["status"], line["error_source"]) == (502, "gateway")
