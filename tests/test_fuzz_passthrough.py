"""The pass-through under property-based fuzzing (issue 9), as raw HTTP from a hostile client.

Written against the principles, not today's exact status codes (path canonicalisation and body parsing are
being reworked): with a healthy upstream,
  - the gateway itself never answers with a 5xx, and what it answers itself has Anthropic's error shape;
  - a request the gateway refuses never reaches the upstream (the fake records every request it gets);
  - no hold is left behind: with max_parallel_requests=1, once the gateway has drained the next request is
    admitted.
"""

from __future__ import annotations

import json
import socket
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import MASTER_KEY

HELLO = {"model": "claude-haiku-4-5", "max_tokens": 8, "messages": [{"role": "user", "content": "Hello"}]}

segments = st.sampled_from(
    ["v1", "messages", "%6dessages", "count_tokens", "batches", "models", "complete", "files", "..", ".", "",
     "%2e%2e", "%2F", "%00", "%", "%zz", "é", "%C3%A9", "messages%3F", "v1%2Fmessages", "msgbatch_x", ";x", "~"]
) | st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.~%!$&'()*+,;=:@", max_size=12)  # fmt: skip
paths = st.lists(segments, min_size=0, max_size=5).map("/".join)
queries = st.sampled_from(["", "?", "?#", "?beta=true", "?a=%zz", "?limit=1&limit=2", "?%00=1", "?x=" + "a" * 3000])
methods = st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"])

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=10,
)


def deep(depth: int) -> str:
    return "[" * depth + "]" * depth


message_bodies = st.fixed_dictionaries(
    {"model": st.sampled_from(["claude-haiku-4-5", "claude-opus-4-1", "x" * 300, ""]) | json_values},
    optional={
        "max_tokens": st.integers(min_value=-1, max_value=10**12) | json_values,
        "messages": st.just(HELLO["messages"]) | json_values,
        "stream": st.booleans(),
        "litellm_metadata": st.fixed_dictionaries({}, optional={"tags": json_values}) | json_values,
        "metadata": json_values,
    },
).map(lambda body: json.dumps(body).encode())
# Nesting far past Python's recursion limit: once it was a RecursionError -> 500 with no access-log line.
MAX_DEPTH = 100_000
# Such bodies have a large repr, which Hypothesis warns about when it prints an example: fine here.
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr:hypothesis.errors.HypothesisWarning")
raw_bodies = (
    message_bodies
    | st.binary(max_size=200)
    | st.integers(min_value=1, max_value=MAX_DEPTH).map(
        lambda depth: b'{"model":"claude-haiku-4-5","x":' + deep(depth).encode() + b"}"
    )
    | st.integers(min_value=1, max_value=MAX_DEPTH).map(
        lambda depth: b'{"litellm_metadata":{"tags":' + deep(depth).encode() + b'},"model":"claude-haiku-4-5"}'
    )
    | st.sampled_from(
        [
            b"",
            b'{"model":"claude-haiku-4-5","model":"claude-opus-4-1","max_tokens":8,"messages":[]}',
            b'{"litellm_metadata":{"tags":["a"]},"litellm_metadata":{"tags":["b"]},"model":"claude-haiku-4-5"}',
            b'{"model":"claude-haiku-4-5","max_tokens":1e400}',
            b'{"model": NaN}',
            b'\xef\xbb\xbf{"model":"claude-haiku-4-5"}',
            b'{"model":"\\ud800"}',
        ]
    )
)
# Header names and values a client can send (HTTP/1.1 forbids CR/LF in them; anything else goes).
header_values = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=60
)
extra_headers = st.dictionaries(
    st.sampled_from(
        ["x-litellm-tags", "anthropic-version", "anthropic-beta", "content-type", "content-encoding",
         "transfer-encoding-x", "x-api-key-2", "accept-encoding", "host-x", "x-forwarded-for", "cookie", "expect-x"]
    ),
    header_values,
    max_size=4,
)  # fmt: skip


@pytest.fixture(scope="module")
def limited_key(gateway):
    with httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {MASTER_KEY}"}, timeout=30) as admin:
        created = admin.post("/key/generate", json={"max_parallel_requests": 1, "key_alias": "fuzz-passthrough"})
        assert created.status_code == 200, created.text
        yield created.json()["key"]
        admin.post("/key/delete", json={"keys": [created.json()["token"]]})


def raw_request(port: int, method: str, target: str, headers: dict[str, str], body: bytes) -> tuple[int, dict, bytes]:
    """One HTTP/1.1 request written byte for byte (no client normalises the path or query), and its response."""
    lines = [f"{method} {target} HTTP/1.1", f"host: 127.0.0.1:{port}", "connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines.append(f"content-length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    chunks = []
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        try:
            sock.sendall(head + body)
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            # The server answered without reading a large body and closed: the kernel resets the connection,
            # which can discard the answer before we read it. Status 0: the caller checks what it still can.
            return 0, {}, b""
    raw = b"".join(chunks)
    head_bytes, _, payload = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head_bytes.decode("latin-1").split("\r\n")
    parsed = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        parsed[name.strip().lower()] = value.strip()
    if parsed.get("transfer-encoding") == "chunked":
        payload = _unchunk(payload)
    return int(status_line.split()[1]), parsed, payload


def _unchunk(payload: bytes) -> bytes:
    out = bytearray()
    while payload:
        size_line, _, rest = payload.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        payload = rest[size + 2 :]
    return bytes(out)


def assert_gateway_answer_is_well_formed(method: str, status: int, headers: dict[str, str], payload: bytes) -> None:
    assert status < 500, (status, payload[:300])
    if status >= 400 and method != "HEAD":  # a HEAD response has the headers of the error, never its body
        assert headers.get("content-type", "").startswith("application/json"), headers
        body: Any = json.loads(payload)
        assert body["type"] == "error" and body["error"]["type"].endswith("_error"), body
        assert isinstance(body["error"]["message"], str)


FUZZ = settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)


@FUZZ
@given(method=methods, path=paths, query=queries, headers=extra_headers, body=raw_bodies)
def test_any_request_gets_no_gateway_5xx_leaks_nothing_and_holds_nothing(
    gateway, fake_upstream, limited_key, method, path, query, headers, body
):
    fake_upstream.reset()
    target = "/anthropic/" + path + query
    status, response_headers, payload = raw_request(
        gateway.port, method, target, {**headers, "x-api-key": limited_key}, body
    )
    forwarded = fake_upstream.requests
    if status == 0:  # answered early, the answer lost to the reset (see raw_request): nothing may have gone upstream
        assert forwarded == [], (target, [(r.method, r.path) for r in forwarded])
    elif status == 200 and path == "" and method in ("GET", "HEAD"):  # the base URL: Claude Code's preconnect
        assert forwarded == [] and payload in (b"", b'{"status":"ok"}'), (method, target, payload[:300])
    elif "x-gateway-request-id" not in response_headers:
        # Refused by the HTTP server before the app (uvicorn's "Invalid HTTP request received."; on Lambda the
        # Function URL or API Gateway does the same): a 400 of its own, and nothing reached the gateway's code.
        assert status == 400 and forwarded == [], (status, target, payload[:300])
    elif "request-id" not in response_headers:  # the gateway answered itself: nothing went upstream
        assert forwarded == [], (status, target, [(r.method, r.path) for r in forwarded])
        assert_gateway_answer_is_well_formed(method, status, response_headers, payload)
    else:  # the upstream's answer: the fake is healthy, so only its own 4xx/2xx come back
        assert len(forwarded) == 1 and status < 500, (status, target, payload[:300])

    gateway.drain()
    fake_upstream.reset()
    with httpx.Client(base_url=gateway.url + "/anthropic", headers={"x-api-key": limited_key}, timeout=30) as ok:
        after = ok.post("/v1/messages", json=HELLO)
    assert after.status_code == 200, (after.status_code, after.text[:300], target)  # the parallel slot came back
    gateway.drain()
