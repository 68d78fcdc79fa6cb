"""Bedrock as an upstream: the model table, the byte-exact model rewrite, SigV4 checked by a fake Bedrock over real
HTTP, and Bedrock's errors in Anthropic's shape."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import httpx
import pytest

from anthropic_gateway.bedrock import Bedrock, sign, signing_scope
from anthropic_gateway.bedrock_errors import anthropic_error
from anthropic_gateway.bedrock_models import BedrockConfigError, ModelTable, load_model_ids, model_table
from anthropic_gateway.errors import GatewayError
from anthropic_gateway.request_body import RequestBody
from support.fake_bedrock import FakeBedrock, prepare

PACKAGE = Path(__file__).parents[1] / "layers/gateway/anthropic_gateway"
HEADERS = [
    (b"content-type", b"application/json"),
    (b"anthropic-version", b"2023-06-01"),
    (b"anthropic-beta", b"interleaved-thinking-2025-05-14,fine-grained-tool-streaming-2025-05-14"),
    (b"x-custom-trace", b"abc123"),
    (b"x-api-key", b"sk-ant-upstream-must-not-reach-bedrock"),
    (b"x-amz-content-sha256", b"UNSIGNED-PAYLOAD"),  # only the signer sets x-amz-* headers
    (b"X-Amzn-Bedrock-Service-Tier", b"priority"),  # Bedrock's options are the operator's, not a client's
]
MESSAGE = b'{"model": "claude-haiku-4-5", "max_tokens": 64, "messages": [{"role": "user", "content": "Hi there"}]}'


@pytest.fixture(scope="module")
def fake_bedrock():
    with FakeBedrock() as fake:
        yield fake


@pytest.fixture
def fake(fake_bedrock):
    fake_bedrock.reset()
    return fake_bedrock


@pytest.fixture
def upstream(fake) -> Bedrock:
    return Bedrock(region=fake.region, base_url=fake.base_url, credentials=fake.credentials)


def _send(url: str, headers: list[tuple[bytes, bytes]], body: bytes) -> httpx.Response:
    with httpx.Client(timeout=10) as client:
        return client.post(url, headers=headers, content=body)


def _through(upstream: Bedrock, body: bytes, path: str = "/v1/messages", query: bytes = b"") -> httpx.Response:
    url, headers, content = asyncio.run(prepare(upstream, "POST", path, query, HEADERS, body))
    return _send(url, headers, content)


def _signed(fake: FakeBedrock, body: bytes, **overrides) -> tuple[str, list[tuple[bytes, bytes]]]:
    """A request signed with botocore directly, bypassing prepare (no model rewrite)."""
    url = fake.base_url + "/v1/messages"
    scope = {"credentials": fake.credentials.get_frozen_credentials(), "service": "bedrock-mantle"}
    scope |= {"region": fake.region} | overrides
    return url, sign("POST", url, HEADERS[:3], body, **scope)


# -- the model table ------------------------------------------------------------------------------------------------


def test_the_shipped_table_maps_only_models_pricing_knows_each_with_a_source():
    shipped = json.loads((PACKAGE / "bedrock_models.json").read_text())["models"]
    priced = json.loads((PACKAGE / "pricing.json").read_text())["models"]

    assert set(shipped) <= set(priced)
    assert all(entry["id"].startswith("anthropic.claude-") and entry["source"] for entry in shipped.values())
    assert load_model_ids(None) == {name: entry["id"] for name, entry in shipped.items()}


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("claude-haiku-4-5", "anthropic.claude-haiku-4-5"),
        ("claude-sonnet-4-5", "anthropic.claude-sonnet-4-5"),
        ("claude-haiku-4-5-20251001", "anthropic.claude-haiku-4-5"),  # dated snapshot: through its base id
        ("claude-sonnet-4-5-20250929", "anthropic.claude-sonnet-4-5"),
        ("claude-opus-4-7-latest", "anthropic.claude-opus-4-7"),
        ("anthropic.claude-haiku-4-5", "anthropic.claude-haiku-4-5"),  # already Bedrock's id
        ("claude-3-haiku-20240307", None),  # only an ARN-versioned InvokeModel id on Bedrock
        ("claude-haiku-4-5-extra", None),
        ("gpt-4o", None),
    ],
)
def test_models_map_to_bedrock_ids(model, expected):
    assert model_table(None).bedrock_id(model) == expected


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("anthropic.claude-haiku-4-5", "claude-haiku-4-5"),  # the table, read backwards
        ("ANTHROPIC.Claude-Sonnet-4-5", "claude-sonnet-4-5"),
        ("us.anthropic.claude-opus-4-8", "claude-opus-4-8"),  # a cross-region inference profile
        ("global.anthropic.claude-sonnet-4-5", "claude-sonnet-4-5"),
        ("anthropic.claude-sonnet-4-5-20250929-v1:0", "claude-sonnet-4-5-20250929"),  # bedrock-runtime's spelling
        ("eu.anthropic.claude-3-haiku-20240307-v1:0", "claude-3-haiku-20240307"),  # not served, still Anthropic's
        ("claude-haiku-4-5", None),  # Anthropic's own id is no Bedrock id
        ("anthropic.", None),
        ("meta.llama3-70b-instruct-v1:0", None),
    ],
)
def test_bedrock_ids_map_back_to_the_anthropic_model_they_serve(model, expected):
    assert model_table(None).anthropic_model(model) == expected


def test_one_table_both_ways_an_operator_id_maps_back():
    table = ModelTable(load_model_ids(json.dumps({"claude-opus-5": "arn:aws:bedrock:us-east-1:1:inference-profile/x"})))

    assert table.bedrock_id("claude-opus-5") == "arn:aws:bedrock:us-east-1:1:inference-profile/x"
    assert table.anthropic_model("arn:aws:bedrock:us-east-1:1:inference-profile/x") == "claude-opus-5"
    for name, bedrock_id in table.to_bedrock.items():
        assert table.anthropic_model(bedrock_id) == name


def test_the_operator_override_is_merged_over_the_shipped_table():
    override = json.dumps(
        {
            "claude-opus-5": "anthropic.claude-opus-5",  # added
            "claude-haiku-4-5": "us.anthropic.claude-haiku-4-5",  # replaced (a geo inference profile)
            "claude-sonnet-4-6": None,  # taken off Bedrock
            "claude-sonnet-4-5-20250929": "anthropic.claude-sonnet-4-5-pinned",  # a snapshot of its own
        }
    )
    table = model_table(override)

    assert table.bedrock_id("claude-opus-5") == "anthropic.claude-opus-5"
    assert table.bedrock_id("claude-haiku-4-5-20251001") == "us.anthropic.claude-haiku-4-5"
    assert table.bedrock_id("claude-sonnet-4-6") is None
    assert table.bedrock_id("claude-sonnet-4-5-20250929") == "anthropic.claude-sonnet-4-5-pinned"
    assert table.bedrock_id("claude-sonnet-4-5") == "anthropic.claude-sonnet-4-5"
    assert table.bedrock_id("claude-opus-4-7") == "anthropic.claude-opus-4-7"  # the rest stays


@pytest.mark.parametrize(
    "override", ["{not json", '["anthropic.claude-x"]', '{"claude-x": 5}', '{"claude-x": "has space"}', '{"x": ""}']
)
def test_an_invalid_override_is_a_clear_startup_error(override):
    with pytest.raises(BedrockConfigError, match="BEDROCK_MODEL_IDS"):
        Bedrock(region="us-east-1", model_ids=override)


def test_an_empty_override_is_the_shipped_table():
    assert load_model_ids("  ") == load_model_ids(None)


# -- the body -------------------------------------------------------------------------------------------------------


_UNICODE = '{"system":"caf\u00e9 \\u00e9 \U0001f600",'.encode()


@pytest.mark.parametrize(
    ("body", "model", "expected"),
    [
        (MESSAGE, "claude-haiku-4-5", MESSAGE.replace(b'"claude-haiku-4-5"', b'"anthropic.claude-haiku-4-5"')),
        (  # odd whitespace everywhere, model last, numbers in odd forms
            b'\n{ "max_tokens" :1.0e1,\t"messages":[] ,\r\n  "model"\n :\t "claude-haiku-4-5"  }\n',
            "claude-haiku-4-5",
            b'\n{ "max_tokens" :1.0e1,\t"messages":[] ,\r\n  "model"\n :\t "anthropic.claude-haiku-4-5"  }\n',
        ),
        (  # an escaped model value, escaped member name, raw and escaped unicode elsewhere
            _UNICODE + '"mod\\u0065l":"claude\\u002dhaiku-4-5","x":"\u65e5"}'.encode(),
            "claude-haiku-4-5",
            _UNICODE + '"mod\\u0065l":"anthropic.claude-haiku-4-5","x":"\u65e5"}'.encode(),
        ),
        (  # "model" inside nested objects is not the request's model
            b'{"tools":[{"input_schema":{"properties":{"model":{"type":"string"}}}}],"metadata":{"model":"x"},'
            b'"model":"claude-haiku-4-5"}',
            "claude-haiku-4-5",
            b'{"tools":[{"input_schema":{"properties":{"model":{"type":"string"}}}}],"metadata":{"model":"x"},'
            b'"model":"anthropic.claude-haiku-4-5"}',
        ),
    ],
)
def test_only_the_bytes_of_the_model_string_change(body, model, expected, upstream):
    assert asyncio.run(RequestBody(body).model_span())[0] == model
    assert asyncio.run(prepare(upstream, "POST", "/v1/messages", b"", HEADERS, body))[2] == expected


@pytest.mark.parametrize(
    "body",
    [
        b'{"model":"claude-haiku-4-5","max_tokens":1,"model":"claude-opus-4-7"}',
        b'{"model":"claude-haiku-4-5","mod\\u0065l":"claude-opus-4-7"}',  # the same name, spelled differently
        b'{"model":["claude-haiku-4-5"]}',
        b'{"max_tokens":1}',
        b'["model","claude-haiku-4-5"]',
        b'{"model":"claude-haiku-4-5"} trailing',
        b'{"model":"claude-haiku-4-5","x":"\xff"}',  # not UTF-8
    ],
)
def test_bodies_without_exactly_one_model_string_are_refused(body, upstream):
    assert asyncio.run(RequestBody(body).model_span()) is None
    with pytest.raises(GatewayError) as refused:
        asyncio.run(prepare(upstream, "POST", "/v1/messages", b"", HEADERS, body))
    assert refused.value.status == 400


def test_a_model_bedrock_does_not_offer_is_refused_before_sending(upstream):
    with pytest.raises(GatewayError) as refused:
        asyncio.run(prepare(upstream, "POST", "/v1/messages", b"", HEADERS, MESSAGE.replace(b"haiku-4-5", b"3-opus")))
    assert (refused.value.status, refused.value.error_type) == (400, "invalid_request_error")


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/v1/models"), ("POST", "/v1/messages/batches"), ("GET", "/v1/messages")]
)
def test_paths_bedrock_lacks_are_refused(method, path, upstream):
    assert not upstream.serves(method, path)
    with pytest.raises(GatewayError) as refused:
        asyncio.run(prepare(upstream, method, path, b"", HEADERS, MESSAGE))
    assert refused.value.status == 404


# -- signing, checked by the fake over real HTTP ---------------------------------------------------------------------


def test_a_signed_message_is_accepted_with_the_bedrock_model_and_the_clients_bytes(upstream, fake):
    response = _through(upstream, MESSAGE, query=b"beta=true")

    assert response.status_code == 200, response.text
    assert response.json()["type"] == "message" and response.json()["content"][0]["text"] == "Echo: Hi there"
    arrived = fake.requests[-1]
    assert arrived.auth == "sigv4" and arrived.error is None
    assert arrived.request.body == MESSAGE.replace(b'"claude-haiku-4-5"', b'"anthropic.claude-haiku-4-5"')
    assert arrived.payload_hash == hashlib.sha256(arrived.request.body).hexdigest()
    assert arrived.request.query == "beta=true"
    assert {"host", "x-amz-date", "x-amz-security-token", "anthropic-beta", "anthropic-version"} <= set(
        arrived.signed_headers
    )
    # Other headers go unsigned, as sent; the Anthropic key never reaches Bedrock.
    assert arrived.request.header("x-custom-trace") == "abc123"
    assert arrived.request.header("x-api-key") is None
    assert arrived.request.header("x-amz-content-sha256") is None
    assert arrived.request.header("x-amzn-bedrock-service-tier") is None


def test_a_signed_stream_answers_with_anthropics_events_and_final_usage(upstream, fake):
    body = MESSAGE[:-1] + b', "stream": true}'
    url, headers, content = asyncio.run(prepare(upstream, "POST", "/v1/messages", b"", HEADERS, body))
    with httpx.Client(timeout=10) as client, client.stream("POST", url, headers=headers, content=content) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]

    kinds = [event["type"] for event in events]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert "content_block_delta" in kinds
    assert events[0]["message"]["model"] == "anthropic.claude-haiku-4-5"
    final = next(event for event in events if event["type"] == "message_delta")
    assert final["usage"]["output_tokens"] > 0 and final["usage"]["input_tokens"] > 0
    assert fake.requests[-1].auth == "sigv4"


def test_count_tokens_is_signed_too(upstream, fake):
    body = b'{"model":"claude-sonnet-4-5-20250929","messages":[{"role":"user","content":"count these words"}]}'
    response = _through(upstream, body, path="/v1/messages/count_tokens")

    assert response.status_code == 200, response.text
    assert response.json()["input_tokens"] > 0
    assert fake.requests[-1].request.json()["model"] == "anthropic.claude-sonnet-4-5"


def test_the_default_credential_chain_is_resolved_once_until_forgotten(fake, monkeypatch):
    frozen = fake.credentials.get_frozen_credentials()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", frozen.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", frozen.secret_key)
    monkeypatch.setenv("AWS_SESSION_TOKEN", frozen.token)
    monkeypatch.delenv("AWS_PROFILE", raising=False)

    upstream = Bedrock(region=fake.region, base_url=fake.base_url)
    assert _through(upstream, MESSAGE).status_code == 200
    resolved = upstream._credentials
    assert _through(upstream, MESSAGE).status_code == 200
    assert resolved is not None and upstream._credentials is resolved

    upstream.forget_credentials()  # a restored SnapStart snapshot: the chain is asked again
    assert _through(upstream, MESSAGE).status_code == 200
    assert upstream._credentials is not None and upstream._credentials is not resolved
    assert [r.auth for r in fake.requests] == ["sigv4", "sigv4", "sigv4"]


def test_a_bedrock_api_key_from_secrets_manager_is_sent_as_a_bearer_token(aws, fake, monkeypatch, test_runtime):
    import boto3

    boto3.client("secretsmanager").create_secret(Name="bedrock-api-key-test", SecretString="bedrock-api-key-123")
    monkeypatch.setattr(fake, "api_key", "bedrock-api-key-123")
    secrets = test_runtime.secrets
    upstream = Bedrock(
        region=fake.region, base_url=fake.base_url, api_key_secret="bedrock-api-key-test", secrets=secrets
    )

    response = _through(upstream, MESSAGE)

    assert response.status_code == 200, response.text
    arrived = fake.requests[-1].request
    assert fake.requests[-1].auth == "bearer"
    assert arrived.header("x-amz-date") is None and arrived.header("x-api-key") is None


@pytest.mark.parametrize(
    ("tamper", "error_type"),
    [
        ("body", "InvalidSignatureException"),  # the body sent is not the body signed
        ("signed header", "InvalidSignatureException"),
        ("secret", "InvalidSignatureException"),
        ("service", "InvalidSignatureException"),
        ("region", "InvalidSignatureException"),
        ("token", "UnrecognizedClientException"),
        ("unsigned", None),  # a header added after signing is not signed: still valid
    ],
)
def test_the_fake_refuses_what_was_not_signed(tamper, error_type, fake):
    body = MESSAGE.replace(b'"claude-haiku-4-5"', b'"anthropic.claude-haiku-4-5"')
    overrides: dict = {}
    if tamper == "secret":
        overrides["credentials"] = fake.credentials.get_frozen_credentials()._replace(secret_key="wrong")
    if tamper == "token":
        overrides["credentials"] = fake.credentials.get_frozen_credentials()._replace(token="stolen")
    if tamper in ("service", "region"):
        overrides |= {"service": "bedrock"} if tamper == "service" else {"region": "eu-west-1"}
    url, headers = _signed(fake, body, **overrides)
    if tamper == "body":
        body = body.replace(b"Hi there", b"Hi THERE")
    if tamper == "signed header":
        headers = [(n, b"2099-01-01" if n == b"anthropic-version" else v) for n, v in headers]
    if tamper == "unsigned":
        headers.append((b"x-added-later", b"1"))

    response = _send(url, headers, body)

    assert fake.requests[-1].error == error_type
    if error_type is None:
        assert response.status_code == 200
        return
    assert response.status_code in (400, 403)
    assert response.headers["x-amzn-ErrorType"].startswith(error_type + ":")
    translated = anthropic_error(response.status_code, response.headers, response.content)
    assert translated is not None and translated.status == 502
    assert b"session-token" not in translated.body and b"Canonical" not in translated.body


def test_the_fake_refuses_a_model_that_is_not_a_bedrock_id(fake):
    url, headers = _signed(fake, MESSAGE)  # signed correctly, but "claude-haiku-4-5" was not mapped

    response = _send(url, headers, MESSAGE)

    assert response.status_code == 400
    assert fake.requests[-1].error == "ValidationException"
    translated = anthropic_error(response.status_code, response.headers, response.content)
    assert translated.status == 400
    assert json.loads(translated.body)["error"] == {
        "type": "invalid_request_error",
        "message": "The provided model identifier is invalid.",
    }


# -- errors ---------------------------------------------------------------------------------------------------------

_AMZN = ":http://internal.amazon.com/coral/com.amazon.bedrock/"


@pytest.mark.parametrize(
    ("status", "error_type", "expected_status", "expected_type"),
    [
        (429, "ThrottlingException", 429, "rate_limit_error"),
        (400, "ServiceQuotaExceededException", 429, "rate_limit_error"),
        (400, "ValidationException", 400, "invalid_request_error"),
        (403, "AccessDeniedException", 403, "permission_error"),
        (404, "FTUFormNotFilled", 403, "permission_error"),  # model use not yet enabled for the account
        (404, "ResourceNotFoundException", 404, "not_found_error"),
        (408, "ModelTimeoutException", 504, "timeout_error"),
        (424, "ModelErrorException", 500, "api_error"),
        (429, "ModelNotReadyException", 529, "overloaded_error"),
        (500, "InternalServerException", 500, "api_error"),
        (503, "ServiceUnavailableException", 529, "overloaded_error"),
        (403, "UnrecognizedClientException", 502, "api_error"),  # the gateway's credentials, not the client's
        (418, "SomethingNewException", 418, "api_error"),  # unknown types keep their status
        (413, "", 413, "request_too_large"),
    ],
)
def test_bedrock_errors_get_anthropics_shape_and_status(status, error_type, expected_status, expected_type):
    headers = {"X-Amzn-ErrorType": error_type + _AMZN} if error_type else {}
    translated = anthropic_error(status, headers, b'{"message":"Bedrock says no"}')

    assert translated is not None
    body = json.loads(translated.body)
    assert (translated.status, body["type"], body["error"]["type"]) == (expected_status, "error", expected_type)
    if expected_status != 502:
        assert body["error"]["message"] == "Bedrock says no"


def test_the_error_type_is_also_read_from_the_body():
    translated = anthropic_error(400, {}, b'{"__type":"com.amazon.coral.service#ThrottlingException","Message":"slow"}')
    assert translated.status == 429
    assert json.loads(translated.body)["error"] == {"type": "rate_limit_error", "message": "slow"}


def test_an_unreadable_error_body_still_gets_anthropics_shape():
    translated = anthropic_error(503, {}, b"<html>Service Unavailable</html>")
    assert translated.status == 503
    assert json.loads(translated.body)["error"]["type"] == "api_error"


def test_anthropic_shaped_errors_pass_through_untouched():
    body = b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'
    assert anthropic_error(529, {"content-type": "application/json"}, body) is None


@pytest.mark.parametrize(
    ("inject", "expected_status", "expected_type"),
    [("ThrottlingException", 429, "rate_limit_error"), ("ServiceUnavailableException", 529, "overloaded_error")],
)
def test_errors_from_the_fake_translate_over_http(inject, expected_status, expected_type, upstream, fake):
    fake.fail_next(inject, message="try later")

    failed = _through(upstream, MESSAGE)
    after = _through(upstream, MESSAGE)

    translated = anthropic_error(failed.status_code, failed.headers, failed.content)
    assert (translated.status, json.loads(translated.body)["error"]["type"]) == (expected_status, expected_type)
    assert after.status_code == 200  # one failure only


def test_a_malformed_request_gets_anthropics_own_error_from_the_native_endpoint(upstream):
    response = _through(upstream, b'{"model":"claude-haiku-4-5","messages":[{"role":"user","content":"x"}]}')

    assert response.status_code == 400
    assert anthropic_error(response.status_code, response.headers, response.content) is None


# -- configuration ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base_url", "expected"),
    [
        ("https://bedrock-mantle.eu-central-1.api.aws/anthropic", ("bedrock-mantle", "eu-central-1")),
        ("https://bedrock-runtime.us-west-2.amazonaws.com/anthropic", ("bedrock", "us-west-2")),
        ("http://127.0.0.1:9999/anthropic", ("bedrock-mantle", "ap-south-1")),  # a fake: the configured region
    ],
)
def test_the_signing_scope_comes_from_the_base_url(base_url, expected):
    assert signing_scope(base_url, "ap-south-1") == expected


def test_the_default_base_url_is_the_regions_mantle_endpoint():
    upstream = Bedrock(region="eu-west-3")
    assert upstream.base_url == "https://bedrock-mantle.eu-west-3.api.aws/anthropic"
    assert (upstream.service, upstream.region) == ("bedrock-mantle", "eu-west-3")
