"""Amazon Bedrock as a second upstream, end to end: the gateway (uvicorn) between the real SDK and both fakes.

The fake Bedrock verifies real SigV4 signatures made from the credentials botocore's chain finds (moto's `testing`
ones, as under `make dev`) and the mapped model id; it answers with the fake Anthropic's own shapes.
"""

from __future__ import annotations

import json
from decimal import Decimal

import anthropic
import httpx
import pytest

from anthropic_gateway import pricing
from anthropic_gateway.settings import get_settings
from anthropic_gateway.usage import Usage
from support.captured_lines import dimension_sets, metric_values
from support.fake_bedrock import FakeBedrock
from support.gateways import start_gateway
from support.servers import free_port

# How the gateways price models: UNKNOWN_MODEL_RATE and BEDROCK_MODEL_IDS as they are by default.
UNKNOWN_MODELS = pricing.UnknownModels("max", "")

MODEL = "claude-haiku-4-5"
BEDROCK_MODEL = "anthropic.claude-haiku-4-5"
UNMAPPED = "claude-3-haiku-20240307"  # the fake Anthropic serves it; Bedrock's table has no id for it
HELLO = [{"role": "user", "content": "Hello there, how are you today?"}]
MESSAGE = {"model": MODEL, "max_tokens": 64, "messages": HELLO}


@pytest.fixture(scope="module")
def fake_bedrock(aws):
    """A fake Bedrock checking moto's credentials (the environment's, found by botocore's chain) as the signer's."""
    region = get_settings().aws_region
    with FakeBedrock(region=region, access_key="testing", secret_key="testing", token=None) as fake:
        yield fake


@pytest.fixture(scope="module")
def gateway(fake_bedrock):
    """The gateway of these tests: its BEDROCK_BASE_URL is the fake Bedrock."""
    with start_gateway(bedrock_base_url=fake_bedrock.base_url) as server:
        yield server


@pytest.fixture
def bedrock(fake_bedrock):
    fake_bedrock.reset()
    return fake_bedrock


def _sdk(gateway, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url + "/anthropic", api_key=key, max_retries=0)


def _http(gateway, key: str, **headers: str) -> httpx.Client:
    return httpx.Client(base_url=gateway.url + "/anthropic", headers={"x-api-key": key, **headers}, timeout=30)


# -- the same shapes from both upstreams ---------------------------------------------------------------------------


def test_create_has_the_same_shape_from_both_upstreams(gateway, make_key, bedrock, fake_upstream):
    answers = {}
    for upstream in ("anthropic", "bedrock"):
        raw = _sdk(gateway, make_key(upstreams=[upstream])).messages.with_raw_response.create(**MESSAGE)
        assert raw.headers["x-gateway-upstream"] == upstream
        answers[upstream] = raw.parse()

    via_anthropic, via_bedrock = answers["anthropic"], answers["bedrock"]
    assert via_bedrock.content[0].text == via_anthropic.content[0].text
    assert via_bedrock.usage.input_tokens == via_anthropic.usage.input_tokens > 0
    assert via_bedrock.usage.output_tokens == via_anthropic.usage.output_tokens > 0
    [sent] = bedrock.requests
    assert sent.auth == "sigv4" and sent.error is None
    assert sent.json()["model"] == BEDROCK_MODEL
    assert len(fake_upstream.requests) == 1  # the Bedrock key never called Anthropic


def test_a_stream_from_bedrock_is_incremental_and_ends_with_its_usage(gateway, make_key, bedrock):
    client = _sdk(gateway, make_key(upstreams=["bedrock"]))
    with client.messages.stream(**MESSAGE, extra_headers={"x-fake-chunks": "6"}) as stream:
        deltas = [event.delta.text for event in stream if event.type == "content_block_delta"]
        final = stream.get_final_message()

    assert len(deltas) == 6 and "".join(deltas) == final.content[0].text
    assert final.usage.output_tokens > 0 and final.usage.input_tokens > 0
    assert bedrock.requests[-1].json()["stream"] is True


def test_count_tokens_goes_to_bedrock(gateway, make_key, bedrock, fake_upstream):
    client = _sdk(gateway, make_key(upstreams=["bedrock"]))
    raw = client.messages.with_raw_response.count_tokens(model=MODEL, messages=HELLO)
    assert raw.headers["x-gateway-upstream"] == "bedrock"
    assert raw.parse().input_tokens > 0
    assert bedrock.requests[-1].request.path == "/anthropic/v1/messages/count_tokens"
    assert fake_upstream.requests == []


@pytest.mark.parametrize(
    ("bedrock_error", "exception", "status", "error_type"),
    [
        ("ValidationException", anthropic.BadRequestError, 400, "invalid_request_error"),
        ("ThrottlingException", anthropic.RateLimitError, 429, "rate_limit_error"),
        ("AccessDeniedException", anthropic.PermissionDeniedError, 403, "permission_error"),
    ],
)
def test_bedrock_errors_reach_the_sdk_in_anthropics_shape(
    gateway, make_key, bedrock, bedrock_error, exception, status, error_type
):
    client = _sdk(gateway, make_key(upstreams=["bedrock"]))
    with pytest.raises(exception) as raised:
        client.messages.create(**MESSAGE, extra_headers={"x-fake-bedrock-error": bedrock_error})

    assert raised.value.status_code == status
    assert raised.value.body == {"type": "error", "error": {"type": error_type, "message": f"Injected {bedrock_error}"}}
    assert raised.value.response.headers["x-gateway-upstream"] == "bedrock"
    assert int(raised.value.response.headers["content-length"]) == len(raised.value.response.content)


def test_client_amazon_headers_never_reach_bedrock(gateway, make_key, bedrock):
    """Bedrock reads request options from x-amzn-bedrock-* headers (a priority service tier is billed at another
    price; a guardrail is billed too): they are the operator's to choose, so a client's never go there."""
    amazon = {
        "x-amzn-bedrock-service-tier": "priority",
        "x-amzn-bedrock-guardrailidentifier": "gr-123",
        "x-amzn-bedrock-guardrailversion": "1",
        "x-amzn-bedrock-performanceconfig-latency": "optimized",
        "X-Amzn-Trace-Id": "Root=1-00000000-000000000000000000000000",
        "x-amz-security-token": "a client's",
    }
    with _http(gateway, make_key(upstreams=["bedrock"]), **amazon, **{"x-custom-trace": "kept"}) as http:
        response = http.post("/v1/messages", json=MESSAGE)

    assert response.status_code == 200, response.text
    [sent] = bedrock.requests
    assert sent.auth == "sigv4" and sent.error is None
    names = {name for name, _ in sent.request.headers}
    assert "x-custom-trace" in names
    assert not {name for name in names if name.startswith("x-amzn")}
    assert sent.request.header("x-amz-security-token") is None  # moto's credentials have none


def test_claude_code_style_requests_work_on_bedrock(gateway, make_key, bedrock):
    key = make_key(upstreams=["bedrock"])
    betas = "claude-code-20250219,interleaved-thinking-2025-05-14,fine-grained-tool-streaming-2025-05-14"
    with _http(gateway, key, **{"anthropic-beta": betas, "anthropic-version": "2023-06-01"}) as http:
        response = http.post("/v1/messages", params={"beta": "true"}, json={**MESSAGE, "stream": True})

    assert response.status_code == 200, response.text
    assert b"message_stop" in response.content
    [sent] = bedrock.requests
    assert sent.auth == "sigv4"
    assert sent.request.query == "beta=true"
    assert sent.request.header("anthropic-beta") == betas


# -- routing -------------------------------------------------------------------------------------------------------


def test_paths_bedrock_lacks_are_a_clear_4xx_for_a_bedrock_only_key(gateway, make_key, bedrock, fake_upstream):
    with _http(gateway, make_key(upstreams=["bedrock"])) as http:
        response = http.get("/v1/models")

    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found_error"
    assert "Bedrock does not serve GET /v1/models" in response.json()["error"]["message"]
    assert fake_upstream.requests == [] and bedrock.requests == []


def test_paths_bedrock_lacks_go_to_anthropic_for_a_key_that_lists_both(gateway, make_key, bedrock, fake_upstream):
    with _http(gateway, make_key(upstreams=["bedrock", "anthropic"])) as http:
        response = http.get("/v1/models")

    assert response.status_code == 200
    assert response.headers["x-gateway-upstream"] == "anthropic"
    assert bedrock.requests == []


def test_a_model_without_a_bedrock_id_is_a_400_for_a_bedrock_only_key(gateway, make_key, bedrock):
    with _http(gateway, make_key(upstreams=["bedrock"])) as http:
        response = http.post("/v1/messages", json={**MESSAGE, "model": UNMAPPED})

    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert UNMAPPED in response.json()["error"]["message"]
    assert bedrock.requests == []


# -- failover ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "cause"), [(529, "status_529"), (500, "status_5xx"), (503, "status_5xx")])
def test_an_anthropic_outage_status_fails_over_to_bedrock(
    gateway, make_key, bedrock, fake_upstream, captured, status, cause
):
    fake_upstream.fail_next(status)
    client = _sdk(gateway, make_key(upstreams=["anthropic", "bedrock"]))
    raw = client.messages.with_raw_response.create(**MESSAGE)

    assert raw.status_code == 200 and raw.headers["x-gateway-upstream"] == "bedrock"
    assert raw.parse().content[0].text
    assert len(fake_upstream.requests) == 1 and len(bedrock.requests) == 1
    as_anthropic_got_it = fake_upstream.requests[0].body  # byte for byte, but the model's string
    assert bedrock.requests[0].request.body == as_anthropic_got_it.replace(
        b'"%s"' % MODEL.encode(), b'"%s"' % BEDROCK_MODEL.encode()
    )
    lines = captured.for_request(raw.headers["x-gateway-request-id"])
    assert lines.access["upstream"] == "bedrock" and lines.access["failover_cause"] == cause
    failovers = [blob for blob in lines.blobs if "Cause" in blob]
    assert [(blob["Cause"], metric_values(blob)) for blob in failovers] == [(cause, {"Failovers": 1})]
    [by_upstream] = [blob for blob in lines.blobs if "Upstream" in blob]
    assert by_upstream["Upstream"] == "bedrock" and metric_values(by_upstream)["Requests"] == 1
    assert ["service", "Upstream"] in dimension_sets(by_upstream)


def test_an_unreachable_anthropic_fails_over_to_bedrock(gateway_with, make_key, bedrock, captured):
    gateway = gateway_with(bedrock_base_url=bedrock.base_url, anthropic_api_base=f"http://127.0.0.1:{free_port()}")
    with _http(gateway, make_key(upstreams=["anthropic", "bedrock"])) as http:
        response = http.post("/v1/messages", json=MESSAGE)

    assert response.status_code == 200 and response.headers["x-gateway-upstream"] == "bedrock"
    assert len(bedrock.requests) == 1
    access = captured.for_request(response.headers["x-gateway-request-id"]).access
    assert access["failover_cause"] == "unreachable"


def test_an_anthropic_that_does_not_answer_in_time_fails_over_to_bedrock(
    gateway_with, make_key, bedrock, fake_upstream, captured
):
    # Bedrock's answer has this read timeout too: 2 s, not less, so a busy machine's fake Bedrock is not cut off.
    gateway = gateway_with(bedrock_base_url=bedrock.base_url, upstream_read_timeout=2)
    with _http(gateway, make_key(upstreams=["anthropic", "bedrock"]), **{"x-fake-header-delay-ms": "60000"}) as http:
        response = http.post("/v1/messages", json=MESSAGE)

    assert response.status_code == 200 and response.headers["x-gateway-upstream"] == "bedrock"
    assert len(fake_upstream.requests) == 1 and len(bedrock.requests) == 1
    access = captured.for_request(response.headers["x-gateway-request-id"]).access
    assert access["failover_cause"] == "timeout"


def test_nothing_is_retried_once_bytes_have_gone_to_the_client(gateway, make_key, bedrock, fake_upstream, captured):
    client = _sdk(gateway, make_key(upstreams=["anthropic", "bedrock"]))
    received: list[str] = []
    midstream = {"x-fake-error": "midstream"}
    with (
        pytest.raises(anthropic.APIStatusError) as raised,
        client.messages.stream(**MESSAGE, extra_headers=midstream) as stream,
    ):
        received.extend(event.type for event in stream)

    assert "content_block_delta" in received  # Anthropic's answer had begun: the client saw its deltas
    assert "overloaded_error" in str(raised.value.body)
    assert raised.value.response.headers["x-gateway-upstream"] == "anthropic"
    assert bedrock.requests == []
    access = captured.for_request(raised.value.response.headers["x-gateway-request-id"]).access
    assert access["upstream"] == "anthropic" and access.get("failover_cause") is None


def test_an_anthropic_4xx_is_the_clients_answer(gateway, make_key, bedrock, fake_upstream):
    fake_upstream.fail_next(400)
    client = _sdk(gateway, make_key(upstreams=["anthropic", "bedrock"]))
    with pytest.raises(anthropic.BadRequestError) as raised:
        client.messages.create(**MESSAGE)

    assert raised.value.response.headers["x-gateway-upstream"] == "anthropic"
    assert bedrock.requests == []


def test_a_429_fails_over_only_when_the_operator_turns_it_on(gateway, gateway_with, make_key, bedrock, fake_upstream):
    key = make_key(upstreams=["anthropic", "bedrock"])
    fake_upstream.fail_next(429)
    with pytest.raises(anthropic.RateLimitError):
        _sdk(gateway, key).messages.create(**MESSAGE)
    assert bedrock.requests == []

    turned_on = gateway_with(bedrock_base_url=bedrock.base_url, bedrock_failover_on_429=True)  # BEDROCK_FAILOVER_ON_429
    fake_upstream.fail_next(429)
    raw = _sdk(turned_on, key).messages.with_raw_response.create(**MESSAGE)
    assert raw.headers["x-gateway-upstream"] == "bedrock" and len(bedrock.requests) == 1


def test_a_model_without_a_bedrock_id_is_never_failed_over(gateway, make_key, bedrock, fake_upstream):
    fake_upstream.fail_next(529)
    with _http(gateway, make_key(upstreams=["anthropic", "bedrock"])) as http:
        response = http.post("/v1/messages", json={**MESSAGE, "model": UNMAPPED})

    assert response.status_code == 529
    assert response.headers["x-gateway-upstream"] == "anthropic"
    assert bedrock.requests == []


def test_bedrock_first_fails_over_to_anthropic_on_its_translated_overload(
    gateway, make_key, bedrock, fake_upstream, captured
):
    bedrock.fail_next("ServiceUnavailableException")  # Bedrock's 503, translated to 529 overloaded
    with _http(gateway, make_key(upstreams=["bedrock", "anthropic"])) as http:
        response = http.post("/v1/messages", json=MESSAGE)

    assert response.status_code == 200 and response.headers["x-gateway-upstream"] == "anthropic"
    assert len(bedrock.requests) == 1 and len(fake_upstream.requests) == 1
    access = captured.for_request(response.headers["x-gateway-request-id"]).access
    assert access["upstream"] == "anthropic" and access["failover_cause"] == "status_529"


# -- accounting ----------------------------------------------------------------------------------------------------


def test_a_bedrock_answer_is_priced_and_logged_as_the_clients_model(gateway, make_key, admin, bedrock, captured):
    key = make_key(upstreams=["bedrock"], max_budget=100)
    usage = {"input_tokens": 1200, "output_tokens": 300}
    with _http(gateway, key, **{"x-fake-usage": json.dumps(usage)}) as http:
        response = http.post("/v1/messages", json=MESSAGE)
    assert response.status_code == 200
    assert response.json()["model"] == BEDROCK_MODEL  # Bedrock's answer is relayed as Bedrock sent it

    access = captured.for_request(response.headers["x-gateway-request-id"]).access
    expected = pricing.cost_usd(MODEL, Usage(**usage), UNKNOWN_MODELS)
    assert expected > 0
    assert access["upstream"] == "bedrock" and access["model"] == MODEL
    assert Decimal(str(access["cost_usd"])) == expected
    info = admin.get("/key/info", params={"key": key}).json()["info"]
    assert Decimal(str(info["spend"])) == expected


@pytest.mark.parametrize(
    "raw",
    [
        b'{"litellm_metadata": {"tags": ["a"]}, "model": "MODEL", "max_tokens": 64, "messages": HELLO}',
        b'{"max_tokens":64,"litellm_metadata":{"tags":["a"]} , "model" :\t"MODEL","messages":HELLO}',
        b'{"max_tokens": 64, "messages": HELLO, "model": "MODEL", "litellm_metadata": {"tags": ["a"]}}',
    ],
)
def test_a_failed_over_request_reaches_bedrock_byte_exact_and_is_priced_as_the_clients_model(
    gateway, make_key, bedrock, fake_upstream, captured, raw
):
    """The model is read once, from the bytes that go upstream (here with `litellm_metadata` cut out before, between
    and after the other members): Bedrock gets Anthropic's bytes but the model's string, and the answer is priced
    as the model the client named."""
    body = raw.replace(b"MODEL", MODEL.encode()).replace(b"HELLO", json.dumps(HELLO).encode())
    usage = {"input_tokens": 1200, "output_tokens": 300}
    fake_upstream.fail_next(529)
    headers = {"content-type": "application/json", "x-fake-usage": json.dumps(usage)}
    with _http(gateway, make_key(upstreams=["anthropic", "bedrock"]), **headers) as http:
        response = http.post("/v1/messages", content=body)

    assert response.status_code == 200 and response.headers["x-gateway-upstream"] == "bedrock"
    as_anthropic_got_it = fake_upstream.requests[0].body
    assert b"litellm_metadata" not in as_anthropic_got_it
    assert bedrock.requests[0].request.body == as_anthropic_got_it.replace(
        b'"%s"' % MODEL.encode(), b'"%s"' % BEDROCK_MODEL.encode()
    )
    access = captured.for_request(response.headers["x-gateway-request-id"]).access
    assert access["model"] == MODEL and access["failover_cause"] == "status_529"
    assert Decimal(str(access["cost_usd"])) == pricing.cost_usd(MODEL, Usage(**usage), UNKNOWN_MODELS) > 0


@pytest.mark.parametrize("upstream", ["bedrock", "anthropic"])
def test_a_model_named_by_its_bedrock_id_is_allowed_priced_and_counted_as_the_anthropic_model(
    gateway, make_key, admin, bedrock, fake_upstream, captured, upstream
):
    """One table, both ways: `anthropic.claude-haiku-4-5` is Claude Haiku 4.5 for the allowlist, the price and the
    Model dimension, whichever upstream answers (the fake Anthropic answers with the model it was asked for)."""
    key = make_key(upstreams=[upstream], max_budget=100, models=[MODEL])
    usage = {"input_tokens": 1000, "output_tokens": 200}
    with _http(gateway, key, **{"x-fake-usage": json.dumps(usage)}) as http:
        response = http.post("/v1/messages", json={**MESSAGE, "model": BEDROCK_MODEL})
    assert response.status_code == 200, response.text
    assert response.headers["x-gateway-upstream"] == upstream

    lines = captured.for_request(response.headers["x-gateway-request-id"])
    expected = pricing.cost_usd(MODEL, Usage(**usage), UNKNOWN_MODELS)
    assert (
        pricing.rates_for(BEDROCK_MODEL, UNKNOWN_MODELS)
        == pricing.rates_for(MODEL, UNKNOWN_MODELS)
        != pricing.rates_for("unknown-model", UNKNOWN_MODELS)
    )
    assert Decimal(str(lines.access["cost_usd"])) == expected
    assert {blob["Model"] for blob in lines.blobs if "Model" in blob} == {MODEL}
    info = admin.get("/key/info", params={"key": key}).json()["info"]
    assert Decimal(str(info["spend"])) == expected
