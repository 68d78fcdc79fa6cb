"""Token usage as Anthropic reports it, read from JSON bodies and from SSE streams on the fly.

The stream reader sees every chunk the client gets but keeps only the current unfinished line, so a long
stream or a large download never accumulates in memory. A JSON body is kept whole up to 4 MiB and parsed at its
end; past that, only its last 64 KiB are kept, which is where Anthropic's Message has its `usage`.

Nothing is billed $0 by accident: an answer that ends without its usage is billed an upper-bound estimate and
flagged `usage_estimated`. A stream, for the output it relayed (and, cut before its message_start told the input
tokens, its request's body bytes as input tokens); a Messages JSON answer (cut off, or without usage), for the whole
request it answers: its body's bytes as input tokens and its max_tokens as output tokens.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

_JSON_WHOLE_LIMIT = 4 * 1024 * 1024  # a Message JSON up to this size is parsed whole, at its end
_JSON_TAIL = 64 * 1024  # past it, the bytes kept from its end: its usage is the Message's last member
# An answer that ends without its final usage (client gone, upstream cut) is billed an upper bound: for a stream,
# the UTF-8 bytes of the text, thinking and tool-input deltas it relayed at this many bytes per token; for a JSON
# answer, the request's body bytes as input. Claude's tokens are never shorter than one byte, so 1 is an upper
# bound (English runs ~4 bytes a token: about 4x the real count).
ESTIMATE_BYTES_PER_TOKEN = 1
_DELTA_TEXT_FIELDS = ("text", "thinking", "partial_json")
_USAGE_KEY = re.compile(r'(?<!\\)"usage"\s*:\s*')
_DECODER = json.JSONDecoder()


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


def _fields(request: bytes) -> dict[str, Any]:
    """A Messages request's top-level members; none if it is not a JSON object."""
    try:
        parsed = json.loads(request)
    except (ValueError, RecursionError):
        return {}
    return parsed if isinstance(parsed, dict) else {}


@dataclass
class UsageTap:
    """Watches a response body go by and collects the model and usage it reports.

    request: the body of the Messages request a successful answer is for (held, parsed only if needed): a JSON
    answer that ends without its usage is then billed the request's upper bound rather than nothing. None for any
    other answer (an error, a list, a file), which reports no usage and costs nothing.
    """

    content_type: str
    request: bytes | None = None
    usage: Usage = field(default_factory=Usage)
    model: str | None = None
    seen_usage: bool = False
    final_usage: bool = False  # a message_delta (or a whole Message) reported the output tokens
    usage_estimated: bool = False  # the tokens are an upper-bound estimate: the answer ended without its usage
    complete: bool = False  # the body ended normally (the relay says so before close), not cut off
    delta_bytes: int = 0  # UTF-8 bytes of the output deltas relayed so far
    body_bytes: int = 0  # bytes of a JSON body relayed so far
    _pending: bytearray = field(default_factory=bytearray)
    _json: bytearray | None = None  # a JSON body so far, while it is small enough to parse whole
    _tail: bytearray | None = None  # else its last bytes

    def __post_init__(self) -> None:
        media = self.content_type.split(";", 1)[0].strip().lower()
        self._mode = "sse" if media == "text/event-stream" else "json" if media == "application/json" else None
        if self._mode == "json":
            self._json = bytearray()

    def feed(self, chunk: bytes) -> None:
        if self._mode == "sse":
            self._feed_sse(chunk)
        elif self._json is not None:
            self.body_bytes += len(chunk)
            self._json += chunk
            if len(self._json) > _JSON_WHOLE_LIMIT:
                self._tail, self._json = self._json[-_JSON_TAIL:], None
        elif self._tail is not None:
            self.body_bytes += len(chunk)
            self._tail += chunk
            if len(self._tail) > 2 * _JSON_TAIL:  # trimmed now and then, not at every chunk
                del self._tail[:-_JSON_TAIL]

    def close(self) -> None:
        """Call once the body has ended (or was cut off); parses whatever was collected."""
        if self._mode == "sse" and self._pending:
            self._sse_line(bytes(self._pending))
            self._pending.clear()
        if self._mode == "sse" and not self.final_usage and (self.seen_usage or self.delta_bytes):
            self._estimate_output()
        if self._mode == "sse" and not self.seen_usage and not self.complete and self.request is not None:
            # Cut before message_start: the upstream read the request's input, by how much is unknown.
            self._estimate_input(self.request, _fields(self.request))
        if self._mode == "json":
            self._close_json()
        elif self._mode is None and self.request is not None:
            self._estimate_request(self.request)  # a Messages answer in no shape usage can be read from

    def _close_json(self) -> None:
        if self._json:
            try:
                message = json.loads(self._json.decode())  # str: json.loads would first guess the bytes' encoding
            except ValueError:  # UnicodeDecodeError too
                message = None
            if isinstance(message, dict):
                self._message(message)
        elif self._tail is not None and self.complete and (usage := usage_at_end(bytes(self._tail))) is not None:
            self.usage.update(usage)
            self.seen_usage = self.final_usage = True
        self._json = self._tail = None
        if not self.final_usage and self.request is not None:
            self._estimate_request(self.request)

    def _estimate_request(self, request: bytes) -> None:
        """The most a Messages request can have cost: one input token per byte of its body (an image's base64
        included) and its max_tokens of output (thinking included); the relayed bytes if it names none."""
        fields = _fields(request)
        max_tokens = fields.get("max_tokens")
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 0:
            max_tokens = -(-self.body_bytes // ESTIMATE_BYTES_PER_TOKEN)
        self.usage.output_tokens = max(self.usage.output_tokens, max_tokens)
        self._estimate_input(request, fields)

    def _estimate_input(self, request: bytes, fields: dict[str, Any]) -> None:
        """One input token per byte of the request's body (an image's base64 included): never fewer than it had."""
        self.usage.input_tokens = max(self.usage.input_tokens, -(-len(request) // ESTIMATE_BYTES_PER_TOKEN))
        if self.model is None and isinstance(fields.get("model"), str):
            self.model = fields["model"][:200]
        self.seen_usage = self.usage_estimated = True

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


def usage_at_end(tail: bytes) -> dict[str, Any] | None:
    """The `usage` object of a JSON document that ends with it as the last member of its outermost object: the
    end of an Anthropic Message. `tail` is the document's end (its start may be cut anywhere).

    Only a member of the outermost object is followed by nothing but that object's closing brace, so a "usage"
    anywhere inside the content (a tool's input, text) is never taken for it. None when the end is not that shape.
    """
    text = tail.decode("utf-8", "ignore").rstrip()
    if not text.endswith("}"):
        return None
    *_, last = [None, *_USAGE_KEY.finditer(text)]  # only the last can be the last member
    if last is None:
        return None
    try:
        value, end = _DECODER.raw_decode(text, last.end())
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) and not text[end : len(text) - 1].strip() else None
