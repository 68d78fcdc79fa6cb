"""No request path can make the gateway contact another host, leave the upstream prefix, or reach admin routes."""

from __future__ import annotations

import socket

import pytest

ESCAPES = [
    "/anthropic/../key/generate",
    "/anthropic/..%2Fkey%2Fgenerate",
    "/anthropic/%2e%2e/key/generate",
    "/anthropic/%2E%2E%2Fkey/generate",
    "/anthropic/v1/../../health",
    "/anthropic/./v1/messages",
    "/anthropic//evil.example/v1/messages",
    "/anthropic/@evil.example/v1/messages",
    "/anthropic/v1%2Fmessages",
    "/anthropic/v1%5cmessages",
    "/anthropic/v1\\messages",
    "/anthropic/http://evil.example/v1/messages",
    "/anthropic/https:%2F%2Fevil.example/v1/messages",
    "/anthropic/v1/messages%00",
    "/anthropic/",
]


def _raw_request(port: int, request_line: bytes, headers: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request_line + b"\r\n" + headers + b"Content-Length: 2\r\nConnection: close\r\n\r\n{}")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


@pytest.mark.parametrize("path", ESCAPES)
def test_escape_attempts_are_rejected(gateway, virtual_key, fake_upstream, path):
    reply = _raw_request(
        gateway.port, f"POST {path} HTTP/1.1".encode(), f"Host: 127.0.0.1\r\nx-api-key: {virtual_key}\r\n".encode()
    )

    status = int(reply.split(b" ", 2)[1])
    assert status in (400, 404), reply[:200]
    assert b'"type":"error"' in reply
    assert fake_upstream.requests == []


def test_absolute_form_request_and_host_header_cannot_redirect(gateway, virtual_key, fake_upstream):
    reply = _raw_request(
        gateway.port,
        b"POST http://evil.example/anthropic/v1/messages/count_tokens HTTP/1.1",
        f"Host: evil.example\r\nx-api-key: {virtual_key}\r\nx-forwarded-host: evil.example\r\n".encode(),
    )

    # Either refused, or forwarded to the configured upstream and nowhere else.
    assert b'"type":"error"' in reply or b"input_tokens" in reply
    for received in fake_upstream.requests:
        assert received.path == "/v1/messages/count_tokens"
        assert received.header("host") == fake_upstream.url.removeprefix("http://")


def test_admin_routes_are_not_reachable_with_a_virtual_key(gateway, virtual_key):
    reply = _raw_request(
        gateway.port,
        b"POST /anthropic/../key/generate HTTP/1.1",
        f"Host: x\r\nAuthorization: Bearer {virtual_key}\r\n".encode(),
    )
    assert b'"key"' not in reply
