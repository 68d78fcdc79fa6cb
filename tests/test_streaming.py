"""Streams go through as the upstream produces them: unbuffered, unreordered, intact under concurrency."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import anthropic
import httpx

STREAM = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 64,
    "stream": True,
    "messages": [{"role": "user", "content": "Tell me a story"}],
}


def test_first_event_arrives_while_the_upstream_is_still_sending(http, fake_upstream):
    stream_id = uuid.uuid4().hex
    headers = {"x-fake-delay-ms": "200", "x-fake-chunks": "5", "x-stream-id": stream_id}
    with http.stream("POST", "/v1/messages", json=STREAM, headers=headers) as response:
        chunks = response.iter_raw()
        first = next(chunks)
        assert first.startswith(b"event: message_start")
        assert fake_upstream.streams[stream_id] == "streaming"  # the upstream has not finished yet
        rest = b"".join(chunks)
    assert fake_upstream.streams[stream_id] == "completed"
    assert rest.rstrip().endswith(b'data: {"type":"message_stop"}')


def test_events_pass_through_in_order_and_untouched(http, fake_upstream):
    direct = httpx.post(
        fake_upstream.url + "/v1/messages",
        json=STREAM,
        headers={"x-api-key": fake_upstream.api_key, "anthropic-version": "2023-06-01", "x-fake-unknown-event": "1"},
    )
    through = http.post("/v1/messages", json=STREAM, headers={"x-fake-unknown-event": "1"})

    assert through.headers["content-type"].startswith("text/event-stream")
    names = [line for line in through.text.splitlines() if line.startswith("event:")]
    assert names == [line for line in direct.text.splitlines() if line.startswith("event:")]
    assert "event: ping" in names and "event: future_event" in names
    assert b'data: {"type": "ping"}' in through.content  # byte-exact, not re-serialized


def test_thirty_concurrent_streams_arrive_intact(gateway, virtual_key):
    client = anthropic.Anthropic(base_url=gateway.url + "/anthropic", api_key=virtual_key, max_retries=0)

    def one(index: int) -> tuple[str, str]:
        prompt = f"stream number {index} " + "x" * index
        with client.messages.stream(
            model="claude-sonnet-4-5",
            max_tokens=64,
            messages=[{"role": "user", "content": prompt}],
            extra_headers={"x-fake-delay-ms": "5", "x-fake-chunks": "8"},
        ) as stream:
            return prompt, "".join(stream.text_stream)

    with ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(one, range(32)))

    for prompt, text in results:
        assert text.startswith("Echo: " + prompt[:20]), text


def test_client_disconnect_cancels_the_upstream_stream(gateway, http, fake_upstream):
    stream_id = uuid.uuid4().hex
    headers = {"x-fake-delay-ms": "100", "x-fake-chunks": "200", "x-stream-id": stream_id}
    with http.stream("POST", "/v1/messages", json=STREAM, headers=headers) as response:
        next(response.iter_raw())
    # 200 events x 100 ms would take 20 s; a cancelled stream ends right away: the gateway's relay (closing its
    # upstream connection), then the upstream's handler, which saw the disconnect.
    gateway.drain(timeout=5)
    fake_upstream.drain(timeout=5)
    assert fake_upstream.streams.get(stream_id) == "cancelled"


def test_error_event_mid_stream_reaches_the_client_as_sent(http):
    response = http.post("/v1/messages", json=STREAM, headers={"x-fake-error": "midstream"})

    assert response.status_code == 200
    assert 'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}' in (
        response.text
    )
