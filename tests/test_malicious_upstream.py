"""The pass-through against an upstream that breaks HTTP/1.1 on purpose (issue 18): through the gateway, two tenants
(virtual keys) one after the other, a raw-socket upstream over loopback (support/fake_malicious_upstream.py).

Whatever the upstream does with one tenant's exchange, the next tenant gets its own answer, and no byte of one
tenant's request reaches the upstream inside another's. Bodiless answers reach the client without a body and
without breaking its keep-alive connection.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from decimal import Decimal

import httpx
import pytest

from anthropic_gateway import pricing
from anthropic_gateway.usage import Usage
from support.fake_malicious_upstream import MaliciousUpstream, Received, Reply, response
from tests.conftest import UPSTREAM_KEY

# How the gateways price models: UNKNOWN_MODEL_RATE and BEDROCK_MODEL_IDS as they are by default.
UNKNOWN_MODELS = pricing.UnknownModels("max", "")

MESSAGE = {"model": "claude-haiku-4-5", "max_tokens": 16, "messages": [{"role": "user", "content": "Hi"}]}


def answer_for(tenant: bytes) -> bytes:
    return response(200, json.dumps({"type": "message", "for": tenant.decode()}).encode())


def tenant_of(request: Received) -> bytes:
    return request.header(b"x-tenant") or b"?"


@pytest.fixture
def broken() -> Iterator[tuple[MaliciousUpstream, list[Callable[[Received], Reply]]]]:
    """A MaliciousUpstream of the test's own, answering as the last answer `upstream` was given."""
    answers: list[Callable[[Received], Reply]] = []
    with MaliciousUpstream(lambda request: answers[-1](request)) as started:
        yield started, answers


@pytest.fixture
def gateway(gateway_with, broken):
    """A gateway of the test's own, whose Anthropic upstream is the broken one (same table, keys and secrets)."""
    return gateway_with(anthropic_api_base=broken[0].url)


@pytest.fixture
def upstream(broken, gateway) -> Callable[[Callable[[Received], Reply]], MaliciousUpstream]:
    """`upstream(answer)`: the gateway's Anthropic upstream, from now on answering with `answer`."""
    started, answers = broken

    def start(answer: Callable[[Received], Reply]) -> MaliciousUpstream:
        answers.append(answer)
        return started

    return start


@pytest.fixture
def tenants(gateway, make_key) -> Iterator[Callable[[str], httpx.Client]]:
    """An httpx client per tenant, each with a virtual key of its own and `x-tenant: <name>` on its requests."""
    with ExitStack() as stack:

        def tenant(name: str) -> httpx.Client:
            headers = {"x-api-key": make_key(), "x-tenant": name}
            return stack.enter_context(httpx.Client(base_url=gateway.url + "/anthropic", headers=headers, timeout=30))

        yield tenant


@pytest.fixture
def server_errors() -> Iterator[list[logging.LogRecord]]:
    """What uvicorn logs as errors while the test runs (an app exception is logged there with its traceback)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("uvicorn.error")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def test_a_late_second_answer_never_reaches_the_next_tenant(upstream, tenants, server_errors):
    def answer(request: Received) -> Reply:
        if tenant_of(request) == b"a":
            return Reply(answer_for(b"a"), then=answer_for(b"a, late"))
        return Reply(answer_for(tenant_of(request)))

    broken = upstream(answer)
    a, b = tenants("a"), tenants("b")

    for answered in (1, 3):
        assert a.post("/v1/messages", json=MESSAGE).json()["for"] == "a"
        # The late bytes are on their way before b's request is: bytes that come after a request was sent are,
        # to any HTTP/1.1 client, that request's answer.
        broken.until(lambda answered=answered: broken.answered == answered)
        assert b.post("/v1/messages", json=MESSAGE).json()["for"] == "b"
    assert broken.connections == 3  # each late answer closed its connection
    assert server_errors == []


@pytest.mark.parametrize("status", [204, 304])
def test_a_body_sent_after_a_bodiless_answer_never_reaches_the_next_tenant(upstream, tenants, status, server_errors):
    """The upstream announces a body on a 204 or 304 and sends it only once the next request is on the
    connection: a forged answer carrying the first tenant's data, in front of the next tenant's own."""
    forged = answer_for(b"a's data")

    def answer(request: Received) -> Reply:
        if tenant_of(request) == b"a":
            return Reply(b"HTTP/1.1 %d X\r\ncontent-length: %d\r\n\r\n" % (status, len(forged)), on_next=forged)
        return Reply(answer_for(tenant_of(request)))

    upstream(answer)
    a, b = tenants("a"), tenants("b")

    first = a.get("/v1/models")
    assert (first.status_code, first.content) == (status, b"")
    assert b.post("/v1/messages", json=MESSAGE).json()["for"] == "b"
    assert server_errors == []


def test_an_early_refusal_leaves_no_body_for_the_next_tenants_request_to_be_read_into(upstream, tenants):
    """F2: the upstream refuses tenant a's upload after its head (413) and keeps the connection with the body unread.
    Tenant a's body is a request head whose body would swallow the next request on that connection: tenant b's,
    with the gateway's upstream key in it. `Expect: 100-continue` invites such an early answer: it is not forwarded."""
    smuggled = b"POST /v1/files HTTP/1.1\r\nhost: upstream\r\ncontent-length: 1500\r\n\r\n"

    def answer(request: Received) -> Reply:
        if tenant_of(request) == b"a":
            return Reply(response(413, b'{"type":"error"}'), read_body=False)
        return Reply(answer_for(tenant_of(request)))  # b, and whatever a smuggled

    broken = upstream(answer)
    a, b = tenants("a"), tenants("b")

    refused = a.post("/v1/messages", content=smuggled, headers={"expect": "100-continue"})
    assert refused.status_code == 413
    padding = "x" * 4000  # b's request is longer than what the smuggled head would swallow
    assert b.post("/v1/messages", json={**MESSAGE, "metadata": {"user_id": padding}}).json()["for"] == "b"

    assert all(request.header(b"expect") is None for request in broken.received)
    for request in broken.received:
        assert b"x-tenant: b" not in request.body
        assert UPSTREAM_KEY.encode() not in request.body


def test_an_unknown_interim_answers_body_never_reaches_the_client(upstream, tenants, server_errors):
    interim = b"HTTP/1.1 199 Unknown\r\ncontent-length: 6\r\n\r\nHIDDEN"
    upstream(lambda request: Reply(interim + answer_for(tenant_of(request))))
    a, b = tenants("a"), tenants("b")

    first = a.post("/v1/messages", json=MESSAGE)
    assert (first.status_code, first.json()) == (200, {"type": "message", "for": "a"})
    assert b.post("/v1/messages", json=MESSAGE).json()["for"] == "b"
    assert server_errors == []


@pytest.mark.parametrize(
    ("method", "status", "head"),
    [
        ("GET", 304, b'content-length: 1234\r\netag: "v1"'),  # 304 may name its representation's length
        ("GET", 204, b"content-length: 99"),  # 204 may not, but a broken upstream does
        ("GET", 204, b"transfer-encoding: chunked"),
        ("HEAD", 200, b"content-type: application/json\r\ncontent-length: 4096"),
    ],
)
def test_bodiless_answers_keep_the_clients_connection(
    gateway, upstream, virtual_key, method, status, head, server_errors
):
    def answer(request: Received) -> Reply:
        if request.head.startswith(b"GET /v1/models/next"):
            return Reply(answer_for(b"next"))
        return Reply(b"HTTP/1.1 %d X\r\n%s\r\n\r\n" % (status, head))

    upstream(answer)
    client = http.client.HTTPConnection(gateway.url.removeprefix("http://"), timeout=30)
    headers = {"x-api-key": virtual_key}

    client.request(method, "/anthropic/v1/models", headers=headers)
    first = client.getresponse()
    assert (first.status, first.read()) == (status, b"")
    if method == "HEAD":
        assert first.getheader("content-length") == "4096"  # what a GET would have had, as HEAD answers say
    else:
        assert first.getheader("content-length") is None
    connection = client.sock
    client.request("GET", "/anthropic/v1/models/next", headers=headers)
    second = client.getresponse()
    assert (second.status, json.loads(second.read())["for"]) == (200, "next")
    assert client.sock is connection  # the same keep-alive connection
    client.close()
    assert server_errors == []


# -- billing: never $0 by accident ---------------------------------------------------------------------------------


def message_json(text_bytes: int, usage: dict[str, int] | None) -> bytes:
    """A Message as Anthropic lays it out (usage last), whose content holds decoys: a tool input with a "usage"
    member of its own, and text that spells one."""
    decoy = {"input_tokens": 0, "output_tokens": 0}
    message: dict[str, object] = {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": [
            {"type": "text", "text": "x" * text_bytes + '","usage":' + json.dumps(decoy) + "}"},
            {"type": "tool_use", "id": "toolu_01", "name": "record", "input": {"usage": decoy}},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
    }
    if usage is not None:
        message["usage"] = usage
    return json.dumps(message).encode()


def relay(gateway, key: str, request: bytes) -> tuple[str, bool]:
    """POST `request` to /v1/messages as a client reading the answer as it comes: the gateway's request id, and
    whether the whole answer arrived (False: the gateway ended it where the upstream broke off)."""
    client = httpx.Client(base_url=gateway.url + "/anthropic", headers={"x-api-key": key}, timeout=60)
    with client, client.stream("POST", "/v1/messages", content=request) as answer:
        assert answer.status_code == 200
        try:
            answer.read()
        except httpx.RemoteProtocolError:
            return answer.headers["x-gateway-request-id"], False
    return answer.headers["x-gateway-request-id"], True


USAGE = {"input_tokens": 1200, "output_tokens": 3400, "cache_read_input_tokens": 100}
BILLED = {**MESSAGE, "model": "claude-sonnet-4-5", "max_tokens": 5000}


@pytest.mark.parametrize("text_bytes", [1000, 5 * 1024 * 1024])  # whole, and past the 4 MiB parsed whole
def test_a_non_streaming_answer_of_any_size_is_billed_its_usage(
    upstream, tenants, admin, gateway, captured, text_bytes, make_key
):
    body = message_json(text_bytes, USAGE)
    upstream(lambda request: Reply(response(200, body)))
    key = make_key(max_budget=1000)
    with httpx.Client(base_url=gateway.url + "/anthropic", headers={"x-api-key": key}, timeout=60) as client:
        answer = client.post("/v1/messages", json=BILLED)
    assert answer.status_code == 200
    assert hashlib.sha256(answer.content).digest() == hashlib.sha256(body).digest()  # byte for byte

    access = captured.for_request(answer.headers["x-gateway-request-id"]).access
    expected = pricing.cost_usd("claude-sonnet-4-5-20250929", Usage(**USAGE), UNKNOWN_MODELS)
    assert (access["input_tokens"], access["output_tokens"], access["usage_estimated"]) == (1200, 3400, False)
    assert Decimal(str(access["cost_usd"])) == expected
    assert Decimal(str(admin.get("/key/info", params={"key": key}).json()["info"]["spend"])) == expected


@pytest.mark.parametrize(
    ("text_bytes", "cut"),
    [
        (1000, True),  # cut before its usage
        (5 * 1024 * 1024, True),
        (1000, False),  # whole, but without usage
        (5 * 1024 * 1024, False),
    ],
)
def test_a_messages_answer_that_ends_without_its_usage_is_billed_an_upper_bound(
    upstream, gateway, admin, captured, make_key, text_bytes, cut
):
    whole = message_json(text_bytes, USAGE if cut else None)
    sent = whole[: len(whole) - 300] if cut else whole  # a cut answer loses its end: the usage and more
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(whole)
    upstream(lambda request: Reply(head + sent, close=True))
    key = make_key(max_budget=1000)
    request = json.dumps(BILLED).encode()
    request_id, whole = relay(gateway, key, request)
    assert whole is not cut
    access = captured.for_request(request_id).access
    bound = Usage(input_tokens=len(request), output_tokens=BILLED["max_tokens"])
    assert access["usage_estimated"] is True
    assert (access["input_tokens"], access["output_tokens"]) == (len(request), 5000)
    assert access["input_tokens"] + access["output_tokens"] > USAGE["input_tokens"] + USAGE["output_tokens"]
    expected = pricing.cost_usd("claude-sonnet-4-5", bound, UNKNOWN_MODELS)
    assert Decimal(str(access["cost_usd"])) == expected > 0
    assert Decimal(str(admin.get("/key/info", params={"key": key}).json()["info"]["spend"])) == expected


@pytest.mark.parametrize("cut", [True, False])
def test_a_stream_that_ends_before_its_message_start_is_billed_its_input_only_when_cut(
    upstream, gateway, admin, captured, make_key, cut
):
    """Cut before message_start told the input tokens: the upstream read the request, so its body's bytes are billed
    as input (flagged); a stream that ends cleanly without one (an error event alone) is not billed."""
    error = b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n'
    events = b"event: ping\ndata: {}\n\n" if cut else error
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    chunk = b"%x\r\n%s\r\n" % (len(events), events)
    upstream(lambda request: Reply(head + chunk + (b"" if cut else b"0\r\n\r\n"), close=cut))
    key = make_key(max_budget=1000)
    request = json.dumps({**BILLED, "stream": True}).encode()
    request_id, whole = relay(gateway, key, request)
    assert whole is not cut
    access = captured.for_request(request_id).access
    spend = Decimal(str(admin.get("/key/info", params={"key": key}).json()["info"]["spend"]))
    if cut:
        assert access["usage_estimated"] is True
        assert (access["model"], access["input_tokens"], access["output_tokens"]) == (
            "claude-sonnet-4-5",
            len(request),
            0,
        )
        expected = pricing.cost_usd("claude-sonnet-4-5", Usage(input_tokens=len(request)), UNKNOWN_MODELS)
        assert Decimal(str(access["cost_usd"])) == expected == spend > 0
    else:
        assert (access["usage_estimated"], access["input_tokens"], access["cost_usd"], spend) == (False, 0, 0, 0)


def test_an_error_answer_cut_off_costs_nothing(upstream, gateway, captured, virtual_key):
    error = b'{"type":"error","error":{"type":"invalid_request_error","message":"' + b"x" * 1000 + b'"}}'
    head = b"HTTP/1.1 400 X\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(error)
    upstream(lambda request: Reply(head + error[:500], close=True))
    client = httpx.Client(base_url=gateway.url + "/anthropic", headers={"x-api-key": virtual_key}, timeout=30)
    with client, client.stream("POST", "/v1/messages", json=BILLED) as answer, pytest.raises(httpx.RemoteProtocolError):
        answer.read()

    access = captured.for_request(answer.headers["x-gateway-request-id"]).access
    assert (access["status"], access["usage_estimated"], access["cost_usd"]) == (400, False, 0)
