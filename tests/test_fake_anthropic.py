"""Fidelity check: the real anthropic SDK, strictly validating responses, talks to the fake directly."""

from __future__ import annotations

import hashlib
import json
import time

import anthropic
import httpx
import pytest

from support.fake_anthropic import FILES_BETA, FakeAnthropic, expected_input_tokens, iter_big_file, reply_text

KEY = "sk-ant-upstream-test-key"
PARAMS = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "Hello there, fake"}],
}
USAGE = {"input_tokens": 10, "output_tokens": 20, "cache_creation_input_tokens": 3, "cache_read_input_tokens": 4}


@pytest.fixture(scope="module")
def fake():
    with FakeAnthropic(public_base=None) as server:
        yield server


@pytest.fixture
def client(fake):
    fake.reset()
    return anthropic.Anthropic(base_url=fake.url, api_key=KEY, max_retries=0, _strict_response_validation=True)


def test_create_message_records_raw_request(client, fake):
    raw = client.messages.with_raw_response.create(**PARAMS)
    message = raw.parse()
    assert message.id.startswith("msg_") and message.model == PARAMS["model"] and message.stop_reason == "end_turn"
    assert message.content[0].text == reply_text(PARAMS) == "Echo: Hello there, fake"
    assert message.usage.input_tokens == expected_input_tokens(PARAMS) == 4
    assert message.usage.cache_creation.ephemeral_5m_input_tokens == 0 and message.usage.service_tier == "standard"
    assert raw.headers["request-id"].startswith("req_") and raw.headers["anthropic-ratelimit-requests-limit"]
    (recorded,) = fake.requests
    assert (recorded.method, recorded.path) == ("POST", "/v1/messages")
    assert recorded.header("authorization") == f"Bearer {KEY}"  # SDK 2.x sends the key as a bearer token
    assert recorded.json() == PARAMS and recorded.header("anthropic-version")

    body = b'{"model": "m",   "max_tokens": 5, "messages": [{"role": "user", "content": "caf\\u00e9"}]}'
    httpx.post(f"{fake.url}/v1/messages?beta=true", content=body, headers={"x-api-key": KEY, "anthropic-version": "1"})
    assert fake.requests[-1].body == body and fake.requests[-1].query == "beta=true"


def test_usage_override_and_count_tokens(client):
    message = client.messages.create(**PARAMS, extra_headers={"x-fake-usage": json.dumps(USAGE)})
    assert message.usage.model_dump(include=set(USAGE)) == USAGE
    assert message.usage.cache_creation.ephemeral_5m_input_tokens == 3
    assert client.messages.count_tokens(model="m", messages=PARAMS["messages"]).input_tokens == 4


def test_stream(client):
    headers = {"x-fake-usage": json.dumps(USAGE), "x-fake-chunks": "7"}
    with client.messages.stream(**PARAMS, extra_headers=headers) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) == 7 and "".join(pieces) == final.content[0].text == reply_text(PARAMS)
    assert final.usage.model_dump(include=set(USAGE)) == USAGE


def test_stream_wire_format_is_incremental(fake):
    headers = {
        "x-api-key": KEY,
        "anthropic-version": "2023-06-01",
        "x-fake-delay-ms": "60",
        "x-fake-chunks": "3",
        "x-fake-unknown-event": "1",
    }
    arrivals = []
    with httpx.stream("POST", f"{fake.url}/v1/messages", json={**PARAMS, "stream": True}, headers=headers) as reply:
        assert reply.headers["content-type"].startswith("text/event-stream")
        for line in reply.iter_lines():
            if line.startswith("event: "):
                arrivals.append((line.removeprefix("event: "), time.monotonic()))
    names = [name for name, _ in arrivals]
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        "future_event",
        *["content_block_delta"] * 3,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert arrivals[-1][1] - arrivals[0][1] > 0.25  # five 60 ms gaps: events were not buffered up


def test_unknown_event_does_not_break_the_sdk(fake):
    lenient = anthropic.Anthropic(base_url=fake.url, api_key=KEY, max_retries=0)
    with lenient.messages.stream(**PARAMS, extra_headers={"x-fake-unknown-event": "1"}) as stream:
        assert stream.get_final_text() == reply_text(PARAMS)


def test_midstream_error(client):
    with pytest.raises(anthropic.APIStatusError) as caught:  # noqa: SIM117
        with client.messages.stream(**PARAMS, extra_headers={"x-fake-error": "midstream"}) as stream:
            for _ in stream.text_stream:
                pass
    assert caught.value.body["error"]["type"] == "overloaded_error"


def test_errors(client, fake):
    fake.fail_next(429, headers={"retry-after": "7"})
    with pytest.raises(anthropic.RateLimitError) as caught:
        client.messages.create(**PARAMS)
    assert caught.value.response.headers["retry-after"] == "7"
    assert caught.value.response.headers["x-should-retry"] == "true"
    assert caught.value.body["error"]["type"] == "rate_limit_error"
    assert caught.value.body["request_id"] == caught.value.response.headers["request-id"]
    with pytest.raises(anthropic.InternalServerError) as caught:
        client.messages.create(**PARAMS, extra_headers={"x-fake-error": "529"})
    assert caught.value.status_code == 529 and caught.value.body["error"]["type"] == "overloaded_error"
    with pytest.raises(anthropic.AuthenticationError):
        client.with_options(api_key="wrong").models.list()
    with pytest.raises(anthropic.BadRequestError, match="max_tokens: Field required"):
        client.post("/v1/messages", body={"model": "m", "messages": PARAMS["messages"]}, cast_to=object)
    with pytest.raises(anthropic.NotFoundError):
        client.get("/v1/nope", cast_to=object)


def test_batches(client, fake):
    requests = [{"custom_id": f"r{i}", "params": {**PARAMS, "max_tokens": 10 + i}} for i in range(3)]
    batch = client.messages.batches.create(requests=requests)
    assert batch.id.startswith("msgbatch_") and batch.processing_status == "ended"
    assert batch.request_counts.succeeded == 3
    assert (
        client.messages.batches.retrieve(batch.id).results_url == f"{fake.url}/v1/messages/batches/{batch.id}/results"
    )
    second = client.messages.batches.create(requests=requests[:1])
    assert [b.id for b in client.messages.batches.list(limit=1)] == [second.id, batch.id]
    results = list(client.messages.batches.results(batch.id))
    assert [r.custom_id for r in results] == ["r0", "r1", "r2"]
    assert results[0].result.type == "succeeded" and results[0].result.message.usage.service_tier == "batch"
    assert client.messages.batches.delete(second.id).type == "message_batch_deleted"

    pending = client.messages.batches.create(requests=requests, extra_headers={"x-fake-batch-status": "in_progress"})
    assert pending.results_url is None
    assert client.messages.batches.cancel(pending.id).processing_status == "canceling"
    assert {r.result.type for r in client.messages.batches.results(pending.id)} == {"canceled"}

    with FakeAnthropic() as public:  # default: results_url names api.anthropic.com, as the real API does
        other = anthropic.Anthropic(base_url=public.url, api_key=KEY, _strict_response_validation=True)
        created = other.messages.batches.create(requests=requests)
        assert created.results_url == f"https://api.anthropic.com/v1/messages/batches/{created.id}/results"


def test_models(client, fake):
    models = list(client.models.list(limit=7))
    assert len(models) == len({m.id for m in models}) == 30 and len(fake.requests) == 5
    assert client.models.retrieve("claude-opus-4-5-20251101").display_name == "Claude Opus 4.5"
    with pytest.raises(anthropic.NotFoundError):
        client.models.retrieve("claude-nope")


def test_files(client, fake):
    files = client.beta.files
    uploaded = files.upload(file=("a.txt", b"hello\r\nfiles\x00\xff", "text/plain"), betas=[FILES_BETA])
    assert (uploaded.filename, uploaded.mime_type, uploaded.size_bytes) == ("a.txt", "text/plain", 14)
    assert files.download(uploaded.id, betas=[FILES_BETA]).read() == b"hello\r\nfiles\x00\xff"
    assert [f.id for f in files.list(betas=[FILES_BETA])] == [uploaded.id]
    assert files.retrieve_metadata(uploaded.id, betas=[FILES_BETA]).id == uploaded.id
    files.delete(uploaded.id, betas=[FILES_BETA])
    with pytest.raises(anthropic.NotFoundError):
        files.retrieve_metadata(uploaded.id, betas=[FILES_BETA])
    with pytest.raises(anthropic.BadRequestError):
        files.list()

    size = 3 * 65536 + 123
    big = files.download(f"file_big_{size}", betas=[FILES_BETA])
    assert int(big.headers["content-length"]) == size
    assert hashlib.sha256(big.read()).digest() == hashlib.sha256(b"".join(iter_big_file(size))).digest()
