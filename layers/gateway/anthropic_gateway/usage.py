"""Token usage as Anthropic reports it, read from JSON bodies and from SSE streams on the fly.

The stream reader sees every chunk the client gets but keeps only the current unfinished line, so a long
stream or a large download never accumulates in memory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

_JSON_TAP_LIMIT = 4 * 1024 * 1024  # a Message JSON is far smaller; anything larger is not a Message
# A stream that ends without its final usage (client gone, upstream cut) is billed for the output it relayed:
# the UTF-8 bytes of its text, thinking and tool-input deltas at this many bytes per token. Claude's tokens are
# never shorter than one byte, so 1 is an upper bound (English runs ~4 bytes a token: about 4x the real count).
ESTIMATE_BYTES_PER_TOKEN = 1
_DELTA_TEXT_FIELDS = ("text", "thinking", "partial_json")


@dataclass
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    # Split of cache_creation_input_tokens by TTL, when Anthropic reports it (priced differently).
    cache_creation_5m_input_tokens: int = 0
    cache_creation_1h_input_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens + self.cache_creation_input_tokens + self.cache_read_input_tokens

    def update(self, usage: dict[str, Any]) -> None:
        """Merge a `usage` object; values present replace earlier ones (message_delta usage is cumulative)."""
        for name in ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"):
            value = usage.get(name)
            if isinstance(value, int):
                setattr(self, name, value)
        split = usage.get("cache_creation")
        if isinstance(split, dict):
            five, hour = split.get("ephemeral_5m_input_tokens"), split.get("ephemeral_1h_input_tokens")
            if isinstance(five, int):
                self.cache_creation_5m_input_tokens = five
            if isinstance(hour, int):
                self.cache_creation_1h_input_tokens = hour


@dataclass
class UsageTap:
    """Watches a response body go by and collects the model and usage it reports."""

    content_type: str
    usage: Usage = field(default_factory=Usage)
    model: str | None = None
    seen_usage: bool = False
    final_usage: bool = False  # a message_delta (or a whole Message) reported the output tokens
    usage_estimated: bool = False  # output_tokens is an upper-bound estimate: the stream ended without them
    delta_bytes: int = 0  # UTF-8 bytes of the output deltas relayed so far
    _pending: bytearray = field(default_factory=bytearray)
    _json: bytearray | None = None

    def __post_init__(self) -> None:
        media = self.content_type.split(";", 1)[0].strip().lower()
        self._mode = "sse" if media == "text/event-stream" else "json" if media == "application/json" else None
        if self._mode == "json":
            self._json = bytearray()

    def feed(self, chunk: bytes) -> None:
        if self._mode == "sse":
            self._feed_sse(chunk)
        elif self._json is not None:
            if len(self._json) + len(chunk) > _JSON_TAP_LIMIT:
                self._json = None
            else:
                self._json += chunk

    def close(self) -> None:
        """Call once the body has ended (or was cut off); parses whatever was collected."""
        if self._mode == "sse" and self._pending:
            self._sse_line(bytes(self._pending))
            self._pending.clear()
        if self._mode == "sse" and not self.final_usage and (self.seen_usage or self.delta_bytes):
            self._estimate_output()
        if self._json:
            try:
                message = json.loads(self._json.decode())  # str: json.loads would first guess the bytes' encoding
            except ValueError:  # UnicodeDecodeError too
                message = None
            self._json = None
            if isinstance(message, dict):
                self._message(message)

    def _feed_sse(self, chunk: bytes) -> None:
        self._pending += chunk
        if b"\n" not in chunk:
            return
        *lines, rest = bytes(self._pending).split(b"\n")
        self._pending = bytearray(rest)
        for line in lines:
            self._sse_line(line)

    def _estimate_output(self) -> None:
        """Never less than the tokens the stream reported so far (message_start's), nor than the deltas' bound."""
        relayed = -(-self.delta_bytes // ESTIMATE_BYTES_PER_TOKEN)
        self.usage.output_tokens = max(self.usage.output_tokens, relayed)
        self.seen_usage = self.usage_estimated = True

    def _sse_line(self, line: bytes) -> None:
        if line.startswith(b"data:") and b'"content_block_delta"' in line:
            self._count_delta(line)
            return
        # Only message_start and message_delta carry usage; skip everything else without parsing it.
        if not line.startswith(b"data:") or b'"usage"' not in line:
            return
        try:
            event = json.loads(line[5:])
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        if event.get("type") == "message_start" and isinstance(event.get("message"), dict):
            self._message(event["message"])
        elif event.get("type") == "message_delta" and isinstance(event.get("usage"), dict):
            self.usage.update(event["usage"])
            self.seen_usage = self.final_usage = True

    def _count_delta(self, line: bytes) -> None:
        try:
            event = json.loads(line[5:])
        except ValueError:
            return
        delta = event.get("delta") if isinstance(event, dict) else None
        if isinstance(delta, dict):
            for name in _DELTA_TEXT_FIELDS:
                value = delta.get(name)
                if isinstance(value, str):
                    self.delta_bytes += len(value.encode())

    def _message(self, message: dict[str, Any]) -> None:
        if isinstance(message.get("model"), str):
            self.model = message["model"]
        if isinstance(message.get("usage"), dict):
            self.usage.update(message["usage"])
            self.seen_usage = True
            self.final_usage = self._mode == "json"  # a stream's message_start reports output tokens so far
