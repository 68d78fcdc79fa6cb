"""Per-request EMF metrics and the access log, read from what the gateway writes to stdout."""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import httpx
import pytest

from anthropic_gateway import keys, metrics, pricing
from anthropic_gateway.auth import Principal
from anthropic_gateway.exchange import Exchange
from anthropic_gateway.metrics import Metrics
from anthropic_gateway.settings import get_settings
from anthropic_gateway.storage.key_records import KeyRecord
from anthropic_gateway.storage.tags import TagRegistry
from anthropic_gateway.storage.teams import TeamRegistry
from anthropic_gateway.usage import Usage, UsageTap
from support.captured_lines import Output, dimension_sets, metric_values, stored_key
from support.gateways import start_gateway
from tests.conftest import MASTER_KEY, UPSTREAM_KEY

# How the gateways price models: UNKNOWN_MODEL_RATE and BEDROCK_MODEL_IDS as they are by default.
UNKNOWN_MODELS = pricing.UnknownModels("max", "")

MODEL = "claude-sonnet-4-5"
USAGE = {"input_tokens": 1234, "output_tokens": 56, "cache_creation_input_tokens": 789, "cache_read_input_tokens": 4321}


# The tags these tests send get Tag values of their own; test_unlisted_tags_* covers everything else.
LISTED_TAGS = ("team:m", "app:json", "stream:full", "stream:cut", "e:up", "s:json", "conc:*", "t*")
SERVICE = Metrics(get_settings(), Output(), None, None).service  # POWERTOOLS_SERVICE_NAME, as the gateway reads it


@pytest.fixture(scope="module")
def listed_gateway(gateway):
    """A gateway with METRIC_TAGS set as a stack would set it."""
    with start_gateway(metric_tags=LISTED_TAGS) as server:
        yield server


def writer(**changes) -> Metrics:
    """A runtime's metrics writer, its settings changed by `changes` (METRIC_TAGS, the namespace)."""
    settings = replace(get_settings(), **changes)
    return Metrics(settings, Output(), TeamRegistry(settings), TagRegistry(settings))


@pytest.fixture
def alias() -> str:
    return f"metrics-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def key(gateway, alias) -> str:
    return stored_key(key_alias=alias)


@pytest.fixture
def gw(listed_gateway, key):
    with httpx.Client(base_url=listed_gateway.url + "/anthropic", headers={"x-api-key": key}, timeout=30) as client:
        yield client


def message(stream: bool = False, text: str = "Hello, world") -> dict:
    return {"model": MODEL, "max_tokens": 64, "stream": stream, "messages": [{"role": "user", "content": text}]}


def expected_cost(usage: dict) -> float:
    # The fake reports cache writes as 5-minute ones.
    return float(
        pricing.cost_usd(
            MODEL, Usage(**usage, cache_creation_5m_input_tokens=usage["cache_creation_input_tokens"]), UNKNOWN_MODELS
        )
    )


def token_values(usage: dict) -> dict:
    return {
        "InputTokens": usage["input_tokens"],
        "OutputTokens": usage["output_tokens"],
        "CacheCreationInputTokens": usage["cache_creation_input_tokens"],
        "CacheReadInputTokens": usage["cache_read_input_tokens"],
    }


def assert_valid_emf(blob: dict) -> None:
    """The shape CloudWatch needs to extract metrics (EMF specification), within its limits."""
    aws = blob["_aws"]
    assert isinstance(aws["Timestamp"], int)
    for directive in aws["CloudWatchMetrics"]:
        assert directive["Namespace"] == get_settings().metrics_namespace
        assert 0 < len(directive["Metrics"]) <= 100
        for dimensions in directive["Dimensions"]:
            assert tuple(dimensions) in metrics.DIMENSION_SETS
            assert len(dimensions) <= 30
            assert all(isinstance(blob[name], str) and blob[name] for name in dimensions)
        for metric in directive["Metrics"]:
            assert metric["Name"] in metrics.METRIC_NAMES
            assert metric["Unit"] in ("Count", "Milliseconds", "None")
            assert all(isinstance(v, float) for v in blob[metric["Name"]])


def test_json_response_metrics_equal_the_upstream_usage(gw, captured, key, alias):
    response = gw.post(
        "/v1/messages", json=message(), headers={"x-fake-usage": json.dumps(USAGE), "x-litellm-tags": "team:m,app:json"}
    )
    assert response.status_code == 200
    lines = captured.for_request(response.headers["x-gateway-request-id"])

    overall = lines.overall()
    values = metric_values(overall)
    assert {name: values[name] for name in token_values(USAGE)} == token_values(USAGE)
    assert values["Requests"] == 1 and values["UpstreamErrors"] == 0 and values["GatewayErrors"] == 0
    assert values["CostUSD"] == pytest.approx(expected_cost(USAGE), rel=1e-12) and values["CostUSD"] > 0
    assert values["Latency"] > 0
    assert "TimeToFirstByte" not in values  # JSON: first byte and last byte arrive together
    assert dimension_sets(overall) == [["service"], ["service", "Model"], ["service", "Upstream"]]
    assert overall["Model"] == MODEL and overall["Upstream"] == "anthropic" and overall["service"] == SERVICE
    assert overall["key_alias"] == alias

    by_tag = lines.by_tag()
    assert set(by_tag) == {"team:m", "app:json"}
    for blob in by_tag.values():
        assert dimension_sets(blob) == [["service", "Tag"]]
        assert metric_values(blob) == values
    status = lines.by_status()
    assert status["StatusClass"] == "2xx"
    assert metric_values(status) == {"Requests": 1, "UpstreamErrors": 0, "GatewayErrors": 0}
    # overall (by model and by upstream), two tags, status class (no failover: no Failovers blob)
    assert len(lines.blobs) == 4 and len({blob["_aws"]["Timestamp"] for blob in lines.blobs}) == 1
    for blob in lines.blobs:
        assert_valid_emf(blob)

    access = lines.access
    assert access["level"] == "INFO" and access["service"] == SERVICE
    assert (access["method"], access["route"], access["status"]) == ("POST", "/v1/messages", 200)
    assert access["model"] == MODEL
    assert {name: access[name] for name in USAGE} == USAGE
    assert access["cost_usd"] == values["CostUSD"]
    assert access["latency_ms"] == round(values["Latency"], 1)
    assert access["tags"] == ["team:m", "app:json"]
    assert access["key_alias"] == alias and access["key_hash_prefix"] == keys.hash_key(key)[:12]
    assert access["auth"] == "virtual_key" and access["stream"] is False and access["completed"] is True


def test_complete_stream_metrics(gw, captured):
    with gw.stream(
        "POST",
        "/v1/messages",
        json=message(stream=True),
        headers={"x-fake-usage": json.dumps(USAGE), "x-fake-chunks": "8", "x-litellm-tags": "stream:full"},
    ) as response:
        body = response.read()
    assert b"message_stop" in body
    lines = captured.for_request(response.headers["x-gateway-request-id"])

    values = metric_values(lines.overall())
    assert {name: values[name] for name in token_values(USAGE)} == token_values(USAGE)
    assert values["CostUSD"] == pytest.approx(expected_cost(USAGE), rel=1e-12)
    assert 0 < values["TimeToFirstByte"] <= values["Latency"]
    # a stream emits every metric the dashboard can plot, but Failovers (only when it failed over: test_bedrock_routing)
    assert set(values) == set(metrics.METRIC_NAMES) - {"Failovers"}
    assert metric_values(lines.by_tag()["stream:full"]) == values
    assert lines.access["stream"] is True and lines.access["completed"] is True
    assert lines.access["time_to_first_byte_ms"] == round(values["TimeToFirstByte"], 1)


def test_stream_cut_off_by_the_client_counts_what_was_reported(gw, captured, fake_upstream):
    # 50 events 100 ms apart: the upstream is still sending when the client goes away after message_start.
    headers = {
        "x-fake-usage": json.dumps(USAGE),
        "x-fake-delay-ms": "100",
        "x-fake-chunks": "50",
        "x-litellm-tags": "stream:cut",
    }
    with gw.stream("POST", "/v1/messages", json=message(stream=True), headers=headers) as response:
        for line in response.iter_lines():
            if line.startswith("data:") and "message_start" in line:
                break
    lines = captured.for_request(response.headers["x-gateway-request-id"])

    assert lines.access["completed"] is False and lines.access["status"] == 200
    values = metric_values(lines.overall())
    # message_start carries the input side in full and output_tokens=1; the final count never came.
    assert values["InputTokens"] == USAGE["input_tokens"]
    assert values["CacheCreationInputTokens"] == USAGE["cache_creation_input_tokens"]
    assert values["CacheReadInputTokens"] == USAGE["cache_read_input_tokens"]
    assert values["OutputTokens"] == 1
    assert values["CostUSD"] == pytest.approx(expected_cost({**USAGE, "output_tokens": 1}), rel=1e-12)
    assert values["UpstreamErrors"] == 0 and values["GatewayErrors"] == 0
    assert "TimeToFirstByte" in values
    assert metric_values(lines.by_tag()["stream:cut"]) == values


@pytest.mark.parametrize(("status", "status_class"), [(529, "5xx"), (429, "4xx")])
def test_upstream_errors_by_status_class(gw, captured, status, status_class):
    response = gw.post("/v1/messages", json=message(), headers={"x-fake-error": str(status), "x-litellm-tags": "e:up"})
    assert response.status_code == status
    lines = captured.for_request(response.headers["x-gateway-request-id"])

    values = metric_values(lines.overall())
    assert (values["UpstreamErrors"], values["GatewayErrors"], values["InputTokens"], values["CostUSD"]) == (1, 0, 0, 0)
    assert metric_values(lines.by_tag()["e:up"])["UpstreamErrors"] == 1
    assert lines.by_status()["StatusClass"] == status_class
    assert metric_values(lines.by_status()) == {"Requests": 1, "UpstreamErrors": 1, "GatewayErrors": 0}
    assert lines.access["status"] == status and lines.access["error_source"] == "upstream"


def test_gateway_errors_are_counted_and_carry_no_tags(gateway, captured, fake_upstream):
    bad_key = "sk-" + "q" * 43
    with httpx.Client(base_url=gateway.url + "/anthropic", headers={"x-api-key": bad_key}) as client:
        response = client.post("/v1/messages", json=message(), headers={"x-litellm-tags": "would:be:dropped"})
    assert response.status_code == 401
    lines = captured.for_request(response.headers["x-gateway-request-id"])

    values = metric_values(lines.overall())
    assert (values["GatewayErrors"], values["UpstreamErrors"], values["Requests"]) == (1, 0, 1)
    assert lines.overall()["Model"] == metrics.UNKNOWN_MODEL
    assert lines.by_tag() == {}  # tags are only read from an authenticated request
    assert lines.by_status()["StatusClass"] == "4xx"
    assert lines.access["status"] == 401 and lines.access["error_source"] == "gateway"
    assert "key_alias" not in lines.access and "auth" not in lines.access  # nobody authenticated
    assert fake_upstream.requests == []


def test_rejected_tag_never_reaches_a_dimension(gw, captured, fake_upstream):
    response = gw.post("/v1/messages", json=message(), headers={"x-litellm-tags": "ok,bad<tag>"})
    assert response.status_code == 400
    lines = captured.for_request(response.headers["x-gateway-request-id"])

    assert lines.by_tag() == {}
    assert metric_values(lines.overall())["GatewayErrors"] == 1
    assert "bad<tag>" not in captured.text()
    assert fake_upstream.requests == []


def test_concurrent_requests_get_separate_correct_blobs(gw, captured):
    def send(index: int) -> str:
        usage = {
            "input_tokens": 1000 + index,
            "output_tokens": 10 + index,
            "cache_creation_input_tokens": index,
            "cache_read_input_tokens": 2 * index,
        }
        headers = {"x-fake-usage": json.dumps(usage), "x-litellm-tags": f"conc:{index}", "x-fake-delay-ms": "5"}
        response = gw.post("/v1/messages", json=message(stream=index % 2 == 0), headers=headers)
        assert response.status_code == 200
        return response.headers["x-gateway-request-id"]

    with ThreadPoolExecutor(max_workers=12) as pool:
        request_ids = list(pool.map(send, range(12)))

    for index, request_id in enumerate(request_ids):
        lines = captured.for_request(request_id)
        expected = {
            "InputTokens": 1000 + index,
            "OutputTokens": 10 + index,
            "CacheCreationInputTokens": index,
            "CacheReadInputTokens": 2 * index,
        }
        assert list(lines.by_tag()) == [f"conc:{index}"]
        for blob in (lines.overall(), lines.by_tag()[f"conc:{index}"]):
            values = metric_values(blob)
            assert {name: values[name] for name in expected} == expected
            assert values["Requests"] == 1
    tagged = [record for record in captured.records() if str(record.get("Tag", "")).startswith("conc:")]
    assert len(tagged) == 12  # one blob per request and tag, none duplicated or merged


def test_ten_tags_stay_within_emf_limits(gw, captured):
    tags = [f"t{index}" for index in range(10)]
    response = gw.post("/v1/messages", json={**message(), "litellm_metadata": {"tags": tags}})
    assert response.status_code == 200
    lines = captured.for_request(response.headers["x-gateway-request-id"])

    assert list(lines.by_tag()) == tags
    assert len(lines.blobs) == 12  # overall (by model and by upstream), ten tags, status class
    for blob in lines.blobs:
        assert_valid_emf(blob)
        assert len(json.dumps(blob)) < 256 * 1024  # CloudWatch Logs' event size limit


def test_no_secret_or_body_in_any_line(listed_gateway, gw, captured, key):
    marker = f"PROMPT-{uuid.uuid4().hex}"
    bad_key = "sk-" + "z" * 43
    responses = [
        gw.post("/v1/messages", json=message(text=marker), headers={"x-litellm-tags": "s:json"}),
        gw.post("/v1/messages", json=message(stream=True, text=marker)),
        gw.post("/v1/messages", json=message(text=marker), headers={"x-fake-error": "500"}),
    ]
    with httpx.Client(base_url=listed_gateway.url + "/anthropic", timeout=30) as anonymous:
        responses.append(anonymous.post("/v1/messages", json=message(text=marker), headers={"x-api-key": MASTER_KEY}))
        responses.append(anonymous.post("/v1/messages", json=message(text=marker), headers={"x-api-key": bad_key}))
        responses.append(anonymous.post("/v1/messages", json=message(), headers={"authorization": f"Bearer {bad_key}"}))
    for response in responses:
        captured.for_request(response.headers["x-gateway-request-id"])

    text = captured.text()
    assert text.count('"message":"gateway request"') >= 6
    for secret in (key, MASTER_KEY, UPSTREAM_KEY, bad_key, marker):
        assert secret not in text


def test_namespace_comes_from_settings():
    exchange = Exchange(method="GET", path="/v1/models")
    exchange.answered(200, None)
    blobs = [json.loads(line) for line in writer(metrics_namespace="TeamGateway").emf_blobs(exchange, 0.0)]
    assert {d["Namespace"] for b in blobs for d in b["_aws"]["CloudWatchMetrics"]} == {"TeamGateway"}


def test_model_dimension_never_takes_arbitrary_client_input():
    exchange = Exchange(method="POST", path="/v1/messages", model="x" * 300)
    assert metrics.model_dimension(exchange, "") == metrics.OTHER
    exchange = Exchange(method="POST", path="/v1/messages", model="claude-sonnet-4-5-20250929")
    assert metrics.model_dimension(exchange, "") == pricing.resolve_model("claude-sonnet-4-5-20250929", "")
    assert metrics.model_dimension(Exchange(method="GET", path="/v1/models"), "") == metrics.UNKNOWN_MODEL


# -- issue 9: one key holder must not be able to grow the operator's CloudWatch bill -------------------------------


def test_invented_models_all_count_as_other(gw, captured):
    """A model name per request (each would have been a new Model value, 10 custom metrics) is one value."""
    seen = set()
    for index in range(5):
        invented = f"claude-made-up-{uuid.uuid4().hex[:8]}-{index}"
        response = gw.post("/v1/messages", json={**message(), "model": invented})
        assert response.status_code == 200  # the fake answers any model, echoing it
        lines = captured.for_request(response.headers["x-gateway-request-id"])
        assert lines.access["model"] == invented  # the access log keeps what happened
        seen.add(lines.overall()["Model"])
    assert seen == {metrics.OTHER}


def test_the_model_the_upstream_answered_with_is_a_dimension_value_only_when_known():
    """The upstream's answer wins over the request, but an unknown answered id is `other` too (a hostile or
    misconfigured upstream could otherwise echo any string into a dimension)."""
    exchange = Exchange(method="POST", path="/v1/messages", model=MODEL)
    tap = UsageTap(content_type="application/json", model="evil-model-" + uuid.uuid4().hex)
    exchange.answered(200, tap)
    assert metrics.model_dimension(exchange, "") == metrics.OTHER
    tap.model = "claude-opus-4-1-20250805"
    assert metrics.model_dimension(exchange, "") == pricing.resolve_model("claude-opus-4-1-20250805", "") != MODEL
    tap.model = "claude-opus-4-1-" + "x" * 5000  # a known prefix: billed, and shown, as that model
    assert metrics.model_dimension(exchange, "") == pricing.resolve_model("claude-opus-4-1", "")


def test_unlisted_tags_count_once_under_other_but_are_logged_and_spent(gateway_with, captured, admin):
    gateway = gateway_with(metric_tags=("team:*", "app:listed"))
    key = stored_key(tags=["dept:default"])
    invented = [f"u{uuid.uuid4().hex[:12]}" for _ in range(3)]
    with httpx.Client(base_url=gateway.url + "/anthropic", headers={"x-api-key": key}, timeout=30) as client:
        response = client.post(
            "/v1/messages", json=message(), headers={"x-litellm-tags": ",".join([*invented, "app:listed", "team:x"])}
        )
    assert response.status_code == 200
    lines = captured.for_request(response.headers["x-gateway-request-id"])

    assert list(lines.by_tag()) == [metrics.OTHER, "app:listed", "team:x", "dept:default"]
    assert metric_values(lines.by_tag()[metrics.OTHER])["Requests"] == 1  # one request, however many tags
    assert lines.access["tags"] == [*invented, "app:listed", "team:x", "dept:default"]
    spend = admin.get("/spend/tags").json()
    assert set(invented) <= {row["individual_request_tag"] for row in spend}


def test_pattern_tags_are_capped_per_runtime():
    tags = writer(metric_tags=("team:*",))
    tags.max_pattern_tags = 3
    values = [tags.tag_dimension(f"team:{index}", []) for index in range(6)]
    assert values == ["team:0", "team:1", "team:2", metrics.OTHER, metrics.OTHER, metrics.OTHER]
    assert tags.tag_dimension("team:1", []) == "team:1"  # one seen before keeps its value
    assert tags.tag_dimension("app:x", ["app:x"]) == "app:x"  # the key's default tags need no pattern
    assert tags.tag_dimension("app:x", []) == metrics.OTHER
    assert writer().max_pattern_tags == metrics.MAX_PATTERN_TAG_VALUES == 100  # the bound a runtime starts with


def test_distinct_dimension_values_stay_bounded_under_a_flood(gateway_with, key, captured):
    """200 requests, each with new tags and a new model: at most the listed values plus `other` reach CloudWatch."""
    gateway = gateway_with(metric_tags=("flood:*",))
    gateway.app.runtime.metrics.max_pattern_tags = 5
    flood = set()
    with httpx.Client(base_url=gateway.url + "/anthropic", headers={"x-api-key": key}, timeout=30) as gw:
        for index in range(40):
            tags = f"flood:{index},junk{uuid.uuid4().hex[:8]}"
            body = {**message(), "model": f"m-{index}"}
            response = gw.post("/v1/messages", json=body, headers={"x-litellm-tags": tags})
            assert response.status_code == 200
            flood.add(response.headers["x-gateway-request-id"])
    captured.for_request(response.headers["x-gateway-request-id"])
    # The flood's own: what another test left to settle on the session's gateway may be written meanwhile.
    records = [record for record in captured.records() if record.get("request_id") in flood]
    tag_values = {record["Tag"] for record in records if "Tag" in record}
    model_values = {record["Model"] for record in records if "Model" in record}
    assert tag_values == {*(f"flood:{i}" for i in range(5)), metrics.OTHER}
    assert model_values == {metrics.OTHER}


def test_exported_names_cover_what_is_emitted():
    assert len(set(metrics.METRIC_NAMES)) == len(metrics.METRIC_NAMES) <= 100
    assert {name for dims in metrics.DIMENSION_SETS for name in dims} == set(metrics.DIMENSION_NAMES)
    assert set(metrics.STATUS_METRICS) <= set(metrics.METRIC_NAMES)


def _powertools_blob(blob: dict) -> dict:
    """The same blob built through Powertools' own provider: the reference `metrics._blob` is checked against."""
    from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit

    directive = blob["_aws"]["CloudWatchMetrics"][0]
    primary, *extra = directive["Dimensions"]
    provider = EphemeralMetrics(namespace=directive["Namespace"], service=SERVICE)
    for name in primary:
        provider.add_dimension(name=name, value=blob[name])
    for dimension_set in extra:
        provider.add_dimensions(**{name: blob[name] for name in dimension_set})
    for metric in directive["Metrics"]:
        provider.add_metric(name=metric["Name"], unit=MetricUnit(metric["Unit"]), value=blob[metric["Name"]][0])
    names = {"_aws", *(name for names in directive["Dimensions"] for name in names)}
    names |= {metric["Name"] for metric in directive["Metrics"]}
    for name in [name for name in blob if name not in names]:  # in the blob's order (a set's is arbitrary)
        provider.add_metadata(key=name, value=blob[name])
    provider.set_timestamp(blob["_aws"]["Timestamp"])
    return dict(provider.serialize_metric_set())


def test_blobs_serialise_as_powertools_would():
    record = KeyRecord(token="0" * 64, key_name="sk-...0000", key_alias="m", team_id="search", user_id="ana")
    tags = ["team:m", "app:json", "unlisted"]
    exchange = Exchange(method="POST", path="/v1/messages", principal=Principal(record=record), tags=tags)
    exchange.trying("anthropic")
    exchange.failing_over("status_529")
    exchange.trying("bedrock")
    tap = UsageTap("text/event-stream")
    tap.usage, tap.seen_usage = Usage(input_tokens=123_456_789, output_tokens=7), True
    exchange.answered(429, tap)
    tagged = writer(metric_tags=LISTED_TAGS)
    lines = tagged.emf_blobs(exchange, 0.25)
    assert json.loads(lines[0])["Team"] == metrics.team_dimension(exchange, tagged.teams)  # overall: [service, Team]
    # by model, upstream and team, three tags, status class, failover cause
    assert len(lines) == 6 and all(line.endswith("}\n") and line.count("\n") == 1 for line in lines)
    for line in lines:
        blob = json.loads(line)
        assert json.dumps(blob) == json.dumps(_powertools_blob(blob))  # same members, same order


def test_access_line_has_the_powertools_logger_shape():
    line = writer().access_line({"request_id": "r1", "status": 200, "model": None}, now=1_700_000_000.5)
    assert list(line)[:5] == ["level", "location", "message", "timestamp", "service"]
    assert line["message"] == "gateway request" and line["level"] == "INFO" and line["service"] == SERVICE
    assert line["timestamp"].startswith(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(1_700_000_000)) + ",500")
    assert line["request_id"] == "r1" and "model" not in line  # None left out, as Powertools' formatter does
