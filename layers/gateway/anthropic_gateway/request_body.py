"""The pass-through request body: read once, and the same bytes checked and forwarded.

Every check (the models allowlist, the budget estimate, tags from `litellm_metadata`) reads `RequestBody.parsed`,
which is the JSON of `RequestBody.raw`: the bytes that go upstream. Routing to Amazon Bedrock reads the same parse
for the byte span of the `model` string (`RequestBody.model_span`: only those bytes change for Bedrock), and the
model the request names (`RequestBody.model`: what accounting knows it by) is that same member. A body is parsed at
most once between them, and only when one must (a check needs it, it may carry `litellm_metadata`, or Bedrock may
serve it); otherwise it goes through untouched, however deep or odd. One reader scans the same bytes again: a batch
create, for its cost estimate (`batches.estimate_batch`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import anyio.to_thread
from starlette.datastructures import Headers
from starlette.requests import Request

from .errors import GatewayError

# A body up to this size is parsed on the event loop; larger ones in a worker thread.
_INLINE_PARSE_BYTES = 64 * 1024
_WS = re.compile(r"[ \t\n\r]*")
_NOT_PARSED = object()
_MODEL_KEPT = 200  # characters of a model name kept for accounting and logs

# (model, start, end): the request's top-level "model" string and the byte span of its JSON value, quotes included.
ModelSpan = tuple[str, int, int]


@dataclass
class RequestBody:
    """The body that is forwarded (`raw`) and, once someone asked, its top-level JSON object (`parsed`)."""

    raw: bytes
    litellm_metadata: dict[str, Any] | None = None
    _parsed: object = field(default=_NOT_PARSED, repr=False)
    _members: list[tuple[str, int, int, object]] | None = field(default=None, repr=False)
    _too_deep: bool = field(default=False, repr=False)
    _duplicate: str | None = field(default=None, repr=False)  # a top-level member named twice

    async def parsed(self, *, strict: bool) -> object:
        """The JSON the checks read: a dict for a JSON object body, else None (not JSON, or nesting too deep).

        strict: the caller cannot decide without the JSON (a key restricted to some models): a body that is not
        JSON is a 400 here rather than a request the gateway could not check.
        """
        if self._parsed is _NOT_PARSED:
            await self._parse()
        if self._too_deep:
            raise GatewayError(
                400, "The request body nests JSON too deeply for the gateway to read it, and it must read this one."
            )
        if self._duplicate is not None:
            shown = self._duplicate if len(self._duplicate) <= 64 else self._duplicate[:64] + "..."
            raise GatewayError(400, f"The request body names the member {shown!r} more than once.")
        if self._parsed is None and strict:
            raise GatewayError(
                400, "The request body is not valid JSON; this key may only use some models, so it must name one."
            )
        return self._parsed

    @property
    def model(self) -> str | None:
        """The model the request names (its first 200 characters), once the body has been parsed (by a check, for
        `litellm_metadata`, or for Bedrock): its one top-level "model" string. None when nothing parsed it, or it
        names none (or more than one)."""
        found = self._model_member()
        return found[2][:_MODEL_KEPT] if found else None

    async def model_span(self) -> ModelSpan | None:
        """(model, start, end): the top-level "model" string and the byte span of its JSON value in `raw`, quotes
        included; from the one parse of the body (made now if none was).

        None when the body is not a JSON object with exactly one top-level "model" string: duplicates are refused
        because JSON parsers disagree on which one wins.
        """
        if self._parsed is _NOT_PARSED:
            await self._parse()
        found = self._model_member()
        if found is None:
            return None
        name_start, end, model = found
        text = self.raw.decode()
        _, pos = json.decoder.scanstring(text, name_start + 1)  # type: ignore[attr-defined]
        value_start = _skip_ws(text, _skip_ws(text, pos) + 1)  # past the name, ':' and blanks
        head = len(text[:value_start].encode())  # char offsets to byte offsets
        return model, head, head + len(text[value_start:end].encode())

    def _model_member(self) -> tuple[int, int, str] | None:
        """(start, end, value) of the one top-level "model" string in the parse of `raw`, if there is one."""
        if self._members is None:
            return None
        found = [(start, end, value) for name, start, end, value in self._members if name == "model"]
        if len(found) != 1:
            return None
        start, end, value = found[0]
        return (start, end, value) if isinstance(value, str) else None

    async def _parse(self) -> None:
        try:
            if len(self.raw) <= _INLINE_PARSE_BYTES:
                members = top_level_members(self.raw)
            else:
                members = await anyio.to_thread.run_sync(top_level_members, self.raw)
        except RecursionError:  # C json's guard against exhausting the stack
            members, self._too_deep = None, True
        except (UnicodeDecodeError, ValueError):
            members = None
        self._members = members
        self._parsed = None if members is None else {name: value for name, _, _, value in members}
        if members is not None:
            self._duplicate = _first_duplicate([name for name, _, _, _ in members])


async def read(request: Request, max_bytes: int) -> RequestBody:
    """The client's body with `litellm_metadata` cut out (its tags are the gateway's, not Anthropic's); past
    `max_bytes` (MAX_REQUEST_BYTES) a 413.

    Parsed here only when it may carry `litellm_metadata` (its name, or a `\\u` escape that could spell it);
    a body the gateway cannot read goes through untouched for the upstream to judge, unless it names
    `litellm_metadata` (then it must be read: too deep is a 400). Checks that need the JSON parse it later, once.
    A body with a Content-Encoding is refused: the upstream would decode it into something no check read.
    """
    _refuse_encoded(request.headers)
    return await prepare(await _read_bytes(request, max_bytes))


def _refuse_encoded(headers: Headers) -> None:
    """400 for a body sent compressed (Content-Encoding: gzip, br, ...). The checks read the bytes as they are; an
    upstream that decodes them would read a model, a max_tokens and a litellm_metadata the gateway never saw."""
    codings = [token.strip().lower() for value in headers.getlist("content-encoding") for token in value.split(",")]
    if any(coding not in ("", "identity") for coding in codings):
        raise GatewayError(400, "The gateway takes no compressed request bodies (Content-Encoding): send it plain.")


async def prepare(raw: bytes) -> RequestBody:
    """`read`, for a body already in hand."""
    body = RequestBody(raw)
    might_carry_metadata = b"litellm_metadata" in body.raw or b"\\u" in body.raw
    if not might_carry_metadata or not body.raw.lstrip(b" \t\r\n").startswith(b"{"):
        return body
    try:
        await body.parsed(strict=False)
    except GatewayError:
        if body._duplicate is not None or b"litellm_metadata" in body.raw:
            raise
        return body  # too deep, and nothing here needs it read: forwarded untouched unless a check needs it
    _cut_litellm_metadata(body)
    return body


def _cut_litellm_metadata(body: RequestBody) -> None:
    """Remove the top-level `litellm_metadata` member, leaving every other byte as sent."""
    members = body._members
    index = next((i for i, member in enumerate(members or []) if member[0] == "litellm_metadata"), None)
    if members is None or index is None:
        return
    text = body.raw.decode()
    _, start, end, value = members[index]
    if index + 1 < len(members):  # cut "name": value, up to the next member
        cut_start, cut_end = start, members[index + 1][1]
    elif index > 0:  # last member: cut from the end of the previous value
        cut_start, cut_end = members[index - 1][2], end
    else:
        cut_start, cut_end = start, end
    body.raw = (text[:cut_start] + text[cut_end:]).encode()
    body.litellm_metadata = value if isinstance(value, dict) else None
    assert isinstance(body._parsed, dict)
    del body._parsed["litellm_metadata"]  # what the checks read stays what is forwarded
    # The other members' offsets, into the new text: those after the cut move back by its length.
    cut = cut_end - cut_start
    body._members = [
        (name, start - cut, end - cut, value) if start >= cut_end else (name, start, end, value)
        for name, start, end, value in members[:index] + members[index + 1 :]
    ]


def _first_duplicate(names: list[str]) -> str | None:
    """A member named twice would be read one way here and maybe another way upstream: refused, whatever its name
    (names are compared decoded, so `"mod\\u0065l"` is `model`)."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            return name
        seen.add(name)
    return None


def top_level_members(raw: bytes) -> list[tuple[str, int, int, object]] | None:
    """(name, start, end-of-value, value) of each member of the top-level object, offsets into the decoded text;
    None if the body is not one JSON object. RecursionError for absurd nesting."""
    text = raw.decode()
    decoder = json.JSONDecoder()
    pos = _skip_ws(text, 0)
    if text[pos : pos + 1] != "{":
        return None
    pos = _skip_ws(text, pos + 1)
    members: list[tuple[str, int, int, object]] = []
    if text[pos : pos + 1] == "}":
        return members if not text[pos + 1 :].strip(" \t\n\r") else None
    while True:
        start = pos
        if text[pos : pos + 1] != '"':
            return None
        name, pos = decoder.raw_decode(text, pos)  # a JSON string: a str
        pos = _skip_ws(text, pos)
        if text[pos : pos + 1] != ":":
            return None
        value, pos = decoder.raw_decode(text, _skip_ws(text, pos + 1))
        members.append((name, start, pos, value))
        pos = _skip_ws(text, pos)
        if text[pos : pos + 1] == "}":
            return members if not text[pos + 1 :].strip(" \t\n\r") else None
        if text[pos : pos + 1] != ",":
            return None
        pos = _skip_ws(text, pos + 1)


def _skip_ws(text: str, pos: int) -> int:
    match = _WS.match(text, pos)
    return match.end() if match else pos  # `*`: it always matches


async def _read_bytes(request: Request, limit: int) -> bytes:
    """The whole request body, refused with 413 once it passes `limit` (by default Lambda's payload limit)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    while True:  # what Request.stream() does, without an async generator per request (issue 11)
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise GatewayError(400, "The client disconnected while sending the request body.")
        if chunk := message.get("body", b""):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _too_large(limit: int) -> GatewayError:
    return GatewayError(
        413,
        f"Request body exceeds the gateway's limit of {limit} bytes ({limit / 1048576:g} MB, AWS Lambda's payload "
        "limit). Upload large files with the Files API in smaller parts or send them directly.",
    )
