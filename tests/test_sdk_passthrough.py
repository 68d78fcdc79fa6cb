"""The real Anthropic SDK through the gateway with a virtual key: every endpoint family works unchanged."""

from __future__ import annotations

import anthropic
import pytest

from support.fake_anthropic import FILES_BETA, expected_input_tokens
from tests.conftest import MASTER_KEY, UPSTREAM_KEY

HELLO = [{"role": "user", "content": "Hello, world"}]


def test_messages_create(client, fake_upstream, virtual_key):
    message = client.messages.create(model="claude-sonnet-4-5", max_tokens=1024, messages=HELLO)

    assert message.type == "message" and message.model == "claude-sonnet-4-5"
    assert message.usage.input_tokens == expected_input_tokens({"messages": HELLO})
    received = fake_upstream.requests[-1]
    assert (received.method, received.path) == ("POST", "/v1/messages")
    assert received.header("x-api-key") == UPSTREAM_KEY
    assert virtual_key.encode() not in b"".join(v.encode() for _, v in received.headers)


def test_messages_stream(client):
    with client.messages.stream(model="claude-sonnet-4-5", max_tokens=64, messages=HELLO) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()

    assert text and final.content[0].text == text
    assert final.usage.output_tokens > 1  # the cumulative count from message_delta


def test_count_tokens(client, fake_upstream):
    counted = client.messages.count_tokens(model="claude-sonnet-4-5", messages=HELLO)

    assert counted.input_tokens == expected_input_tokens({"messages": HELLO})
    assert fake_upstream.requests[-1].path == "/v1/messages/count_tokens"


def test_batches_results_come_through_the_gateway(client, fake_upstream, gateway):
    requests = [
        {"custom_id": f"req-{i}", "params": {"model": "claude-haiku-4-5", "max_tokens": 32, "messages": HELLO}}
        for i in range(3)
    ]
    batch = client.messages.batches.create(requests=requests)
    assert batch.results_url.startswith(gateway.url + "/anthropic/v1/messages/batches/")

    assert client.messages.batches.retrieve(batch.id).results_url == batch.results_url
    listed = client.messages.batches.list(limit=10)
    assert all(b.results_url.startswith(gateway.url) for b in listed.data if b.results_url)

    results = list(client.messages.batches.results(batch.id))

    assert sorted(r.custom_id for r in results) == ["req-0", "req-1", "req-2"]
    assert all(r.result.type == "succeeded" for r in results)
    # The results download went through the gateway (with the upstream key), not to api.anthropic.com.
    fetched = fake_upstream.requests[-1]
    assert fetched.path == f"/v1/messages/batches/{batch.id}/results"
    assert fetched.header("x-api-key") == UPSTREAM_KEY


def test_batch_cancel_rewrites_results_url(client, gateway):
    batch = client.messages.batches.create(
        requests=[{"custom_id": "a", "params": {"model": "claude-haiku-4-5", "max_tokens": 8, "messages": HELLO}}],
        extra_headers={"x-fake-batch-status": "in_progress"},
    )
    cancelled = client.messages.batches.cancel(batch.id)
    assert cancelled.id == batch.id
    assert cancelled.results_url is None or cancelled.results_url.startswith(gateway.url)


def test_models_pagination(client, fake_upstream):
    ids = [model.id for model in client.models.list(limit=7)]

    assert len(ids) == len(set(ids)) > 20
    assert len([r for r in fake_upstream.requests if r.path == "/v1/models"]) >= 3
    assert any("after_id=" in r.query for r in fake_upstream.requests)
    assert client.models.retrieve(ids[0]).id == ids[0]


def test_files_upload_and_download_are_byte_exact(client, fake_upstream):
    payload = bytes(range(256)) * 1000
    files = client.beta.files
    uploaded = files.upload(file=("data.bin", payload, "application/octet-stream"), betas=[FILES_BETA])

    assert uploaded.size_bytes == len(payload)
    assert files.download(uploaded.id, betas=[FILES_BETA]).read() == payload
    assert fake_upstream.requests[-1].header("anthropic-beta") == FILES_BETA
    assert any(payload in r.body for r in fake_upstream.requests if r.method == "POST")


def test_litellm_metadata_tags_via_extra_body(client, fake_upstream):
    client.messages.create(
        model="claude-sonnet-4-5",
        max_tokens=16,
        messages=HELLO,
        extra_body={"litellm_metadata": {"tags": ["team:search", "app:bot"]}},
    )

    forwarded = fake_upstream.requests[-1].json()
    assert "litellm_metadata" not in forwarded
    assert forwarded["messages"] == HELLO


def test_master_key_works_on_the_pass_through(gateway):
    master = anthropic.Anthropic(base_url=gateway.url + "/anthropic", api_key=MASTER_KEY, max_retries=0)
    assert master.messages.create(model="claude-haiku-4-5", max_tokens=8, messages=HELLO).type == "message"


@pytest.mark.parametrize(
    ("status", "exception"),
    [
        (400, anthropic.BadRequestError),
        (403, anthropic.PermissionDeniedError),
        (404, anthropic.NotFoundError),
        (429, anthropic.RateLimitError),
        (500, anthropic.InternalServerError),
        (529, anthropic.InternalServerError),
    ],
)
def test_upstream_errors_raise_the_matching_sdk_exception(client, status, exception):
    with pytest.raises(exception) as raised:
        client.messages.create(
            model="claude-sonnet-4-5", max_tokens=8, messages=HELLO, extra_headers={"x-fake-error": str(status)}
        )
    assert raised.value.status_code == status
    assert raised.value.response.headers.get("request-id", "").startswith("req_")


def test_rate_limit_keeps_retry_after(client):
    with pytest.raises(anthropic.RateLimitError) as raised:
        client.messages.create(
            model="claude-sonnet-4-5", max_tokens=8, messages=HELLO, extra_headers={"x-fake-error": "429"}
        )
    assert raised.value.response.headers["retry-after"]
    assert raised.value.response.headers["x-should-retry"] == "true"


def test_error_event_mid_stream_reaches_the_sdk(client):
    with pytest.raises(anthropic.APIStatusError, match="Overloaded"):  # noqa: SIM117
        with client.messages.stream(
            model="claude-sonnet-4-5", max_tokens=64, messages=HELLO, extra_headers={"x-fake-error": "midstream"}
        ) as stream:
            for _ in stream:
                pass


def test_bad_virtual_key_raises_authentication_error(gateway, fake_upstream):
    bad = anthropic.Anthropic(base_url=gateway.url + "/anthropic", api_key="sk-" + "x" * 40, max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        bad.messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=HELLO)
    assert fake_upstream.requests == []
