"""Who sent a request, through which door: the access log and the links the gateway hands out, for every door.

The request contexts below have the shapes the Lambda Web Adapter writes into `x-amzn-request-context`: it
serialises the event's requestContext as the Rust `lambda_http` crate parsed it, the HTTP API 2.0 payload shape for
a Function URL and the 1.0 shape for a REST API (AWS's "Lambda proxy integration input format" pages list the
fields). The end-to-end tests send them to the tests' gateway over loopback, as the adapter does on Lambda.
"""

from __future__ import annotations

import json

import httpx
import pytest

from anthropic_gateway.front_door import Arrival, FrontDoor

FUNCTION_URL_CONTEXT = {
    "routeKey": "$default",
    "accountId": "anonymous",
    "stage": "$default",
    "requestId": "3f6c1e9a-8d2b-4c7e-9a51-0b2d4e6f8a10",
    "apiId": "abcdefghijklmnopqrstuvwxyz0123",
    "domainName": "abcdefghijklmnopqrstuvwxyz0123.lambda-url.us-east-1.on.aws",
    "domainPrefix": "abcdefghijklmnopqrstuvwxyz0123",
    "time": "12/Mar/2026:19:03:58 +0000",
    "timeEpoch": 1773342238000,
    "http": {
        "method": "POST",
        "path": "/anthropic/v1/messages",
        "protocol": "HTTP/1.1",
        "sourceIp": "203.0.113.7",
        "userAgent": "Anthropic/Python 0.75.0",
    },
}


def rest_api_context(path: str, source_ip: str = "198.51.100.23") -> dict:
    return {
        "accountId": "123456789012",
        "resourceId": "a1b2c3",
        "stage": "gateway",
        "domainName": "k3x9w2v7q1.execute-api.us-east-1.amazonaws.com",
        "domainPrefix": "k3x9w2v7q1",
        "requestId": "c0ffee00-1234-4abc-8def-0123456789ab",
        "extendedRequestId": "AbCdEfGhIjKlMnO=",
        "protocol": "HTTP/1.1",
        "identity": {"sourceIp": source_ip, "userAgent": "claude-cli/2.0", "accessKey": None, "user": None},
        "resourcePath": "/anthropic/{proxy+}",
        "path": path,
        "httpMethod": "POST",
        "requestTime": "12/Mar/2026:19:03:58 +0000",
        "requestTimeEpoch": 1773342238000,
        "apiId": "k3x9w2v7q1",
    }


def scope(context: dict | bytes | None, server: str = "127.0.0.1", path: str = "/anthropic/v1/messages") -> dict:
    headers = [(b"content-type", b"application/json")]
    if context is not None:
        raw = context if isinstance(context, bytes) else json.dumps(context).encode()
        headers.append((b"x-amzn-request-context", raw))
    # What uvicorn's proxy headers make of the adapter's connection: X-Forwarded-For's address as the client.
    return {"type": "http", "path": path, "headers": headers, "client": ("10.0.0.9", 0), "server": (server, 8080)}


# -- each door, read from the scope --------------------------------------------------------------------------------


def test_function_url_requests_are_from_the_contexts_source_ip():
    door = Arrival.of(scope(FUNCTION_URL_CONTEXT)).front_door()
    assert door == FrontDoor("function_url", "203.0.113.7", "3f6c1e9a-8d2b-4c7e-9a51-0b2d4e6f8a10", "")


def test_rest_api_requests_are_from_the_identitys_source_ip_and_keep_the_stage_for_links():
    door = Arrival.of(scope(rest_api_context("/gateway/anthropic/v1/messages"))).front_door()
    assert door == FrontDoor("rest_api", "198.51.100.23", "c0ffee00-1234-4abc-8def-0123456789ab", "/gateway")
    # Through a custom domain mapped to the stage, the public path is the app's own: no prefix.
    assert Arrival.of(scope(rest_api_context("/anthropic/v1/messages"))).front_door().path_prefix == ""
    # A path that is not the app's path with something before it gives no prefix (never a made-up one).
    assert Arrival.of(scope(rest_api_context("/gateway/other"))).front_door().path_prefix == ""
    assert Arrival.of(scope(rest_api_context("//evil.example/anthropic/v1/messages"))).front_door().path_prefix == ""


def test_buffered_door_requests_are_from_the_http_api_events_source_ip():
    event = {"version": "2.0", "requestContext": {**FUNCTION_URL_CONTEXT, "domainName": "x.execute-api.aws"}}
    mangum = {**scope(None, server="x.execute-api.aws"), "aws.event": event}
    door = Arrival.of(mangum).front_door()
    assert (door.door, door.client_ip, door.edge_request_id) == (
        "http_api",
        "203.0.113.7",
        event["requestContext"]["requestId"],
    )


def test_without_a_context_the_client_is_the_connections():
    assert Arrival.of(scope(None)).front_door() == FrontDoor("direct", "10.0.0.9", None)


@pytest.mark.parametrize("raw", [b"not json", b"[1, 2]", b'{"http": "nope"}', b'{"identity": [], "path": "/x"}'])
def test_a_header_that_is_no_request_context_is_ignored(raw):
    assert Arrival.of(scope(raw)).front_door() == FrontDoor("direct", "10.0.0.9", None)


def test_a_context_header_from_another_machine_is_not_believed():
    """`make dev` listens on every address; a client elsewhere cannot name its own address in the log."""
    forged = {**FUNCTION_URL_CONTEXT, "http": {**FUNCTION_URL_CONTEXT["http"], "sourceIp": "192.0.2.1"}}
    assert Arrival.of(scope(forged, server="192.168.1.20")).front_door() == FrontDoor("direct", "10.0.0.9", None)


# -- end to end: what the access line and the batch links say ------------------------------------------------------


def _access_line(captured, request_id: str) -> dict:
    return captured.for_request(request_id).access


@pytest.mark.parametrize(
    ("context", "door", "client_ip"),
    [
        (FUNCTION_URL_CONTEXT, "function_url", "203.0.113.7"),
        (rest_api_context("/gateway/anthropic/v1/messages"), "rest_api", "198.51.100.23"),
        (None, "direct", "127.0.0.1"),
    ],
)
def test_access_line_names_the_door_and_the_client(gateway, captured, virtual_key, context, door, client_ip):
    headers = {"x-api-key": virtual_key, "anthropic-version": "2023-06-01"}
    if context is not None:
        headers["x-amzn-request-context"] = json.dumps(context)
    body = {"model": "claude-haiku-4-5", "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]}
    response = httpx.post(f"{gateway.url}/anthropic/v1/messages", json=body, headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    line = _access_line(captured, response.headers["x-gateway-request-id"])
    assert (line["door"], line["client_ip"]) == (door, client_ip)
    assert line.get("edge_request_id") == (context or {}).get("requestId")


def test_batch_links_through_a_rest_apis_own_url_keep_its_stage(gateway, virtual_key):
    """A REST API's execute-api URL has the stage before the app's path; a results_url without it would 403."""
    batch = {"requests": [{"custom_id": "a", "params": {"model": "claude-haiku-4-5", "max_tokens": 8,
                                                        "messages": [{"role": "user", "content": "Hi"}]}}]}  # fmt: skip
    context = rest_api_context("/gateway/anthropic/v1/messages/batches")
    headers = {
        "x-api-key": virtual_key,
        "anthropic-version": "2023-06-01",
        "x-amzn-request-context": json.dumps(context),
    }
    response = httpx.post(f"{gateway.url}/anthropic/v1/messages/batches", json=batch, headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["results_url"].startswith(f"{gateway.url}/gateway/anthropic/v1/messages/batches/")
