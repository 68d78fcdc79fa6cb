"""A faithful fake of api.anthropic.com, served by uvicorn over loopback for tests and benchmarks.

    with FakeAnthropic() as fake:
        client = anthropic.Anthropic(base_url=fake.url, api_key=fake.api_key)
        client.messages.create(...)
        assert fake.requests[-1].json()["model"] == ...

Credentials: `x-api-key: KEY` and/or `authorization: Bearer KEY` (SDK 2.x sends the latter); every one presented must
equal `api_key`, else Anthropic's 401. Requests also need `anthropic-version` (unless require_version=False), and
/v1/files* need `anthropic-beta: files-api-2025-04-14`, exactly as Anthropic requires.

Once per pytest session (with ``fake.reset()`` between tests)::

    @pytest.fixture(scope="session")
    def fake_anthropic():
        with FakeAnthropic() as fake:
            yield fake

Test-control request headers (a gateway forwards unknown headers, so they work end to end too):
    x-fake-usage: {"input_tokens":10,...}  exact usage numbers (any of input_tokens, output_tokens,
                  cache_creation_input_tokens, cache_read_input_tokens)
    x-fake-delay-ms: N      gap between SSE events (default: the constructor's stream_delay_ms)
    x-fake-header-delay-ms: N  wait N ms before sending the response's headers (a slow or silent upstream)
    x-fake-final-delay-ms: N   wait N ms before a stream's message_delta (its final usage)
    x-fake-chunks: N        number of text_delta events (text is padded with "." if shorter than N)
    x-fake-hold: NAME       a stream stops after message_start until the test calls `fake.release(NAME)`
    x-fake-unknown-event: 1 emit an ``event: future_event`` after the ping
    x-fake-error: 400|403|404|413|429|500|529  answer with that Anthropic error (any status works);
                  ``midstream`` (streaming requests only): some deltas, then an SSE overloaded_error
    x-fake-batch-status: in_progress  a created batch stays in progress (until cancelled)
Fault injection from the test side: `fake.fail_next(status, headers=..., body=..., times=...)`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import logging
import random
import re
import secrets
import string
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any
from urllib.parse import parse_qs

from starlette.responses import JSONResponse, Response, StreamingResponse

from support.servers import ThreadedUvicorn

Json = dict[str, Any]  # a JSON object as the API sends and takes it

FILES_BETA = "files-api-2025-04-14"
BIG_FILE_CHUNK = 64 * 1024
MAX_MESSAGE_BODY = 32 * 1024 * 1024  # Anthropic rejects larger Messages requests with 413
DEFAULT_CHUNKS = 5
MODEL_IDS = (
    # anthropic.types.ModelParam's Literal (SDK 2.14.0), then older dated snapshots.
    *("claude-fable-5-2", "claude-mythos-5-2", "claude-haiku-5-5", "claude-sonnet-5-5", "claude-fable-5-1"),
    *("claude-opus-5-5", "claude-mythos-5-1", "claude-sonnet-5", "claude-fable-5", "claude-mythos-5"),
    *("claude-opus-5", "claude-opus-4-8", "claude-opus-4-7", "claude-mythos-preview", "claude-opus-4-6"),
    *("claude-sonnet-4-6", "claude-haiku-4-5", "claude-haiku-4-5-20251001", "claude-opus-4-5"),
    *("claude-opus-4-5-20251101", "claude-sonnet-4-5", "claude-sonnet-4-5-20250929", "claude-opus-4-1-20250805"),
    *("claude-opus-4-20250514", "claude-sonnet-4-20250514", "claude-3-7-sonnet-20250219"),
    *("claude-3-5-haiku-20241022", "claude-3-5-sonnet-20241022", "claude-3-haiku-20240307", "claude-3-opus-20240229"),
)
ERROR_TYPES = {
    400: ("invalid_request_error", "Invalid request"),
    401: ("authentication_error", "invalid x-api-key"),
    403: ("permission_error", "Your API key does not have permission to use the specified resource."),
    404: ("not_found_error", "Not found"),
    405: ("invalid_request_error", "Method Not Allowed"),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "This request would exceed the rate limit for your organization."),
    500: ("api_error", "Internal server error"),
    529: ("overloaded_error", "Overloaded"),
}
_BASE62 = string.ascii_letters + string.digits
_BIG_PATTERN = random.Random(0x5EED).randbytes(BIG_FILE_CHUNK)
log = logging.getLogger(__name__)


# --- Deterministic helpers tests use to predict the fake's answers ---------------------------------------------


def _texts(value: Any) -> Iterator[str]:
    """Every string content and nested "text" field (tool_result content included)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _texts(item)
    elif isinstance(value, dict):
        if isinstance(value.get("text"), str):
            yield value["text"]
        if "content" in value:
            yield from _texts(value["content"])


def expected_input_tokens(body: Json) -> int:
    """input_tokens the fake reports: characters of all text in `system` and `messages` // 4, at least 1."""
    chars = sum(len(text) for text in _texts(body.get("system"))) + sum(len(t) for t in _texts(body.get("messages")))
    return max(1, chars // 4)


def reply_text(body: Json) -> str:
    """The assistant text: "Echo: " + the text of the last user message (first 1000 characters)."""
    users = [m for m in body.get("messages") or [] if isinstance(m, dict) and m.get("role") == "user"]
    said = " ".join(_texts(users[-1].get("content"))) if users else ""
    return "Echo: " + (said[:1000] or "(no text)")


def expected_output_tokens(body: Json) -> int:
    """output_tokens the fake reports unless overridden: len(reply_text(body)) // 4, at least 1."""
    return max(1, len(reply_text(body)) // 4)


def iter_big_file(size: int) -> Iterator[bytes]:
    """The deterministic content of `file_big_<size>`: 64 KiB pseudo-random blocks, each starting with its counter."""
    for index, offset in enumerate(range(0, size, BIG_FILE_CHUNK)):
        block = index.to_bytes(8, "big") + _BIG_PATTERN[8:]
        yield block[: min(BIG_FILE_CHUNK, size - offset)]


# --- Records and errors -----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str  # raw (still percent-encoded) path, without the query
    query: str  # raw query string
    headers: list[tuple[str, str]]  # as received, names lower-cased
    body: bytes  # raw bytes, never re-serialized

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((value for key, value in self.headers if key == name), None)

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def params(self) -> dict[str, str]:
        """Query parameters (first value of each)."""
        return {name: values[0] for name, values in parse_qs(self.query).items()}


class ApiError(Exception):
    def __init__(self, status: int, message: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message or ERROR_TYPES.get(status, ("api_error", "Error"))[1]
        self.headers = headers or {}


async def _disconnected_within(receive: Any, seconds: float) -> bool:
    """Wait `seconds`, or less if the client (the gateway) closes the connection meanwhile."""
    try:
        async with asyncio.timeout(seconds):
            while (await receive())["type"] != "http.disconnect":
                pass
    except TimeoutError:
        return False
    return True


def _new_id(prefix: str) -> str:
    return prefix + "01" + "".join(secrets.choice(_BASE62) for _ in range(22))


def _timestamp(moment: dt.datetime) -> str:
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _error_body(status: int, message: str, request_id: str) -> Json:
    error_type = ERROR_TYPES.get(status, ("api_error", ""))[0]
    return {"type": "error", "error": {"type": error_type, "message": message}, "request_id": request_id}


def _error_headers(status: int) -> dict[str, str]:
    headers = {"x-should-retry": "true" if status in (408, 409, 429) or status >= 500 else "false"}
    if status == 429:
        headers |= {**_ratelimit_headers(remaining=0), "retry-after": "1"}
    return headers


def _ratelimit_headers(remaining: int = 3999) -> dict[str, str]:
    reset = _now().replace(microsecond=0) + dt.timedelta(seconds=1)
    return {
        "anthropic-ratelimit-requests-limit": "4000",
        "anthropic-ratelimit-requests-remaining": str(remaining),
        "anthropic-ratelimit-requests-reset": reset.isoformat().replace("+00:00", "Z"),
    }


def _sse(event: str, data: Json) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _split(text: str, count: int) -> list[str]:
    text = text.ljust(count, ".")
    size, extra = divmod(len(text), count)
    bounds = [i * size + min(i, extra) for i in range(count + 1)]
    return [text[bounds[i] : bounds[i + 1]] for i in range(count)]


def _json_body(record: RecordedRequest) -> Json:
    try:
        body = json.loads(record.body)
    except ValueError:
        raise ApiError(400, "There was an error parsing the body.") from None
    if not isinstance(body, dict):
        raise ApiError(400, "Input should be an object")
    return body


def _require_message_params(params: Any, where: str = "") -> None:
    for field in ("model", "max_tokens", "messages"):
        if not isinstance(params, dict) or field not in params:
            raise ApiError(400, f"{where}{field}: Field required")
    if not isinstance(params["max_tokens"], int) or params["max_tokens"] < 1:
        raise ApiError(400, f"{where}max_tokens: Input should be greater than or equal to 1")
    if not isinstance(params["messages"], list) or not params["messages"]:
        raise ApiError(400, f"{where}messages: at least one message is required")


def _number_header(record: RecordedRequest, name: str, default: float) -> float:
    raw = record.header(name)
    try:
        return default if raw is None else float(raw)
    except ValueError:
        raise ApiError(400, f"{name}: not a number") from None


def _model_info(index: int, model_id: str) -> Json:
    stem, _, date = model_id.rpartition("-")
    if not (date.isdigit() and len(date) == 8):
        stem, date = model_id, (dt.date(2026, 6, 1) - dt.timedelta(days=10 * index)).strftime("%Y%m%d")
    words: list[str] = []
    for token in stem.split("-"):
        if token.isdigit() and words and words[-1][-1].isdigit():
            words[-1] += "." + token
        else:
            words.append(token if token.isdigit() else token.capitalize())
    created = dt.datetime.strptime(date, "%Y%m%d").replace(tzinfo=dt.UTC)
    return {
        "type": "model",
        "id": model_id,
        "display_name": " ".join(words),
        "created_at": created.isoformat().replace("+00:00", "Z"),
        "lifecycle": "active",
    }


MODELS = [_model_info(i, model_id) for i, model_id in enumerate(MODEL_IDS)]


def _paginate(items: list[Json], query: dict[str, str]) -> tuple[list[Json], int, bool]:
    """Anthropic's cursor pagination: `limit` (1-1000, default 20), `after_id` xor `before_id`."""
    try:
        limit = int(query.get("limit", 20))
    except ValueError:
        raise ApiError(400, "limit: Input should be a valid integer") from None
    if not 1 <= limit <= 1000:
        raise ApiError(400, "limit: Input should be between 1 and 1000")
    after, before = query.get("after_id"), query.get("before_id")
    if after and before:
        raise ApiError(400, "Cannot specify both after_id and before_id")
    ids = [item["id"] for item in items]
    for cursor in (after, before):
        if cursor and cursor not in ids:
            raise ApiError(400, f"Invalid pagination cursor: {cursor}")
    if before:
        end = ids.index(before)
        start = max(0, end - limit)
        return items[start:end], start, start > 0
    start = ids.index(after) + 1 if after else int(query.get("page", "page_0").removeprefix("page_") or 0)
    return items[start : start + limit], start, start + limit < len(items)


def _page_body(page: list[Json], has_more: bool) -> Json:
    first, last = (page[0]["id"], page[-1]["id"]) if page else (None, None)
    return {"data": page, "has_more": has_more, "first_id": first, "last_id": last}


def _multipart_file(record: RecordedRequest) -> tuple[str, str, bytes]:
    """(filename, content type, bytes) of the `file` field; parsed by hand to keep raw bytes intact."""
    match = re.search(r'boundary="?([^";]+)"?', record.header("content-type") or "")
    if not match or not (record.header("content-type") or "").startswith("multipart/form-data"):
        raise ApiError(400, "Content-Type must be multipart/form-data")
    for part in record.body.split(b"--" + match.group(1).encode())[1:-1]:
        head, _, content = part.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        head_text = head.decode("utf-8", "replace")
        if re.search(r'name="file"', head_text):
            filename = re.search(r'filename="([^"]*)"', head_text)
            mime = re.search(r"(?im)^content-type:\s*(\S+)", head_text)
            return (
                filename.group(1) if filename else "file",
                mime.group(1) if mime else "application/octet-stream",
                content.removesuffix(b"\r\n"),
            )
    raise ApiError(400, "file: Field required")


# --- The fake ---------------------------------------------------------------------------------------------------


class FakeAnthropic:
    def __init__(
        self,
        api_key: str = "sk-ant-upstream-test-key",
        *,
        public_base: str | None = "https://api.anthropic.com",
        output_tokens: int | None = None,
        stream_delay_ms: float = 1.0,
        require_version: bool = True,
        port: int = 0,
        tls: tuple[str, str] | None = None,
    ) -> None:
        self.api_key = api_key
        self.output_tokens = output_tokens  # None: expected_output_tokens(body)
        self.stream_delay_ms = stream_delay_ms
        self.require_version = require_version  # Anthropic 400s without an anthropic-version header
        self.url = ""
        self._port = port
        self._tls = tls  # (certificate chain PEM file, private key PEM file): served over HTTPS
        # request-id -> "streaming" | "completed" | "cancelled": how each SSE stream ended on this side.
        self.streams: dict[str, str] = {}
        self._public_base = public_base  # host in results_url; None means this fake's own url
        self._lock = threading.Lock()
        self._records: list[RecordedRequest] = []
        self._faults: list[list[Any]] = []  # [remaining times, status, headers, body]
        self._batches: dict[str, Json] = {}
        self._files: dict[str, Json] = {}
        self._server: ThreadedUvicorn | None = None
        self._stopping = False
        self._gates: dict[str, asyncio.Event] = {}  # x-fake-hold: streams wait here; touched on the server's loop only
        # (method, path pattern, handler): a handler takes the request and the pattern's named groups.
        self._routes: list[tuple[str, str, Callable[..., Awaitable[Response]]]] = [
            ("POST", r"/v1/messages", self._create_message),
            ("POST", r"/v1/messages/count_tokens", self._count_tokens),
            ("POST", r"/v1/messages/batches", self._create_batch),
            ("GET", r"/v1/messages/batches", self._list_batches),
            ("GET", r"/v1/messages/batches/(?P<batch_id>[^/]+)", self._get_batch),
            ("DELETE", r"/v1/messages/batches/(?P<batch_id>[^/]+)", self._delete_batch),
            ("POST", r"/v1/messages/batches/(?P<batch_id>[^/]+)/cancel", self._cancel_batch),
            ("GET", r"/v1/messages/batches/(?P<batch_id>[^/]+)/results", self._batch_results),
            ("GET", r"/v1/models", self._list_models),
            ("GET", r"/v1/models/(?P<model_id>[^/]+)", self._get_model),
            ("POST", r"/v1/files", self._upload_file),
            ("GET", r"/v1/files", self._list_files),
            ("GET", r"/v1/files/(?P<file_id>[^/]+)", self._get_file),
            ("DELETE", r"/v1/files/(?P<file_id>[^/]+)", self._delete_file),
            ("GET", r"/v1/files/(?P<file_id>[^/]+)/content", self._file_content),
        ]

    # Lifecycle ----------------------------------------------------------------------------------------------------

    def start(self) -> FakeAnthropic:
        self._stopping = False
        tls: dict[str, Any] = {"ssl_certfile": self._tls[0], "ssl_keyfile": self._tls[1]} if self._tls else {}
        self._server = ThreadedUvicorn(
            self._asgi,
            port=self._port,
            lifespan="off",
            ws="none",
            interface="asgi3",
            http="h11",
            proxy_headers=False,
            date_header=True,
            timeout_graceful_shutdown=2,
            **tls,
        ).__enter__()
        self.url = self._server.url.replace("http://", "https://") if self._tls else self._server.url
        return self

    def stop(self) -> None:
        # Open streams end at their next event (see _stopping), so shutdown is quick and does not log errors.
        self._stopping = True
        if self._server:
            self._server.__exit__()
        self._server = None

    def drain(self, timeout: float = 15.0) -> None:
        """Return once the requests in flight now have finished (a closed stream has seen its client go)."""
        assert self._server is not None, "not started"
        self._server.drain(timeout)

    def __enter__(self) -> FakeAnthropic:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # Test API -----------------------------------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """Snapshot of every request received, in arrival order."""
        with self._lock:
            return list(self._records)

    def reset(self) -> None:
        """Forget recorded requests, pending faults, batches and files."""
        with self._lock:
            self._records.clear()
            self.streams.clear()
            self._faults.clear()
            self._batches.clear()
            self._files.clear()

    def release(self, gate: str) -> None:
        """Let every stream held at `gate` (x-fake-hold) go on, and the ones that reach it later pass."""
        assert self._server is not None and self._server._loop is not None, "not started"
        self._server._loop.call_soon_threadsafe(lambda: self._gate(gate).set())

    def _gate(self, name: str) -> asyncio.Event:
        return self._gates.setdefault(name, asyncio.Event())

    def fail_next(
        self,
        status: int = 429,
        *,
        headers: dict[str, str] | None = None,
        body: bytes | str | Json | None = None,
        times: int = 1,
    ) -> None:
        """Answer the next `times` authenticated requests with `status` (Anthropic-shaped body unless given)."""
        with self._lock:
            self._faults.append([times, status, headers or {}, body])

    @property
    def public_base(self) -> str:
        return self._public_base or self.url

    # ASGI plumbing --------------------------------------------------------------------------------------------

    async def _asgi(self, scope: Json, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if message["type"] == "http.disconnect" or not message.get("more_body"):
                break
        record = RecordedRequest(
            method=scope["method"],
            path=(scope.get("raw_path") or scope["path"].encode()).decode("latin-1"),
            query=scope["query_string"].decode("latin-1"),
            headers=[(name.decode("latin-1").lower(), value.decode("latin-1")) for name, value in scope["headers"]],
            body=b"".join(chunks),
        )
        with self._lock:
            self._records.append(record)
        request_id = "req_011C" + "".join(secrets.choice(_BASE62) for _ in range(20))
        try:
            response = await self._dispatch(record, scope["path"])
        except ApiError as error:
            headers = {**_error_headers(error.status), **error.headers}
            response = JSONResponse(_error_body(error.status, error.message, request_id), error.status, headers)
        except Exception:
            log.exception("fake Anthropic handler crashed")
            response = JSONResponse(_error_body(500, "Internal server error", request_id), 500, _error_headers(500))
        response.headers["request-id"] = request_id
        header_delay = _number_header(record, "x-fake-header-delay-ms", 0) / 1000
        if header_delay <= 0 or not await _disconnected_within(receive, header_delay):
            await response(scope, receive, send)

    async def _dispatch(self, record: RecordedRequest, path: str) -> Response:
        # SDK 2.x sends the API key as "authorization: Bearer"; older clients use x-api-key. Every credential
        # presented must be valid, so a gateway that leaks the caller's own credential upstream is caught.
        bearer = record.header("authorization")
        keys = [key for key in (record.header("x-api-key"), bearer and bearer.removeprefix("Bearer ")) if key]
        if not keys:
            raise ApiError(401, "x-api-key header is required")
        if any(key != self.api_key for key in keys):
            raise ApiError(401, "invalid x-api-key")
        if self.require_version and not record.header("anthropic-version"):
            raise ApiError(400, "anthropic-version: header is required")
        with self._lock:
            fault = self._faults[0] if self._faults else None
            if fault:
                fault[0] -= 1
                if fault[0] <= 0:
                    self._faults.pop(0)
        if fault:
            _, status, headers, body = fault
            if body is None:
                raise ApiError(status, headers=headers)
            content = json.dumps(body).encode() if isinstance(body, dict) else body
            return Response(content, status, {**_error_headers(status), **headers}, media_type="application/json")
        injected = record.header("x-fake-error")
        if injected and injected != "midstream":
            if not injected.isdigit():
                raise ApiError(400, f"x-fake-error: unsupported value {injected!r}")
            raise ApiError(int(injected))
        path_matched = False
        for method, pattern, handler in self._routes:
            match = re.fullmatch(pattern, path)
            if match:
                path_matched = True
                if method == record.method:
                    return await handler(record, **match.groupdict())
        raise ApiError(405) if path_matched else ApiError(404)

    # Messages -----------------------------------------------------------------------------------------------------

    def _usage(self, body: Json, override: str | None) -> dict[str, int]:
        """Predictable usage for `body`, with the fields an x-fake-usage header gives replaced."""
        usage = {
            "input_tokens": expected_input_tokens(body),
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": self.output_tokens or expected_output_tokens(body),
        }
        if override:
            try:
                usage.update({key: int(value) for key, value in json.loads(override).items() if key in usage})
            except (ValueError, TypeError, AttributeError):
                raise ApiError(400, "x-fake-usage: expected a JSON object of integers") from None
        return usage

    @staticmethod
    def _message(model: str, text: str, usage: dict[str, int], service_tier: str = "standard") -> Json:
        return {
            "id": _new_id("msg_"),
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {
                "input_tokens": usage["input_tokens"],
                "cache_creation_input_tokens": usage["cache_creation_input_tokens"],
                "cache_read_input_tokens": usage["cache_read_input_tokens"],
                "cache_creation": {
                    "ephemeral_5m_input_tokens": usage["cache_creation_input_tokens"],
                    "ephemeral_1h_input_tokens": 0,
                },
                "output_tokens": usage["output_tokens"],
                "service_tier": service_tier,
            },
        }

    async def _create_message(self, record: RecordedRequest) -> Response:
        if len(record.body) > MAX_MESSAGE_BODY:
            raise ApiError(413)
        body = _json_body(record)
        _require_message_params(body)
        usage, text = self._usage(body, record.header("x-fake-usage")), reply_text(body)
        if body.get("stream"):
            return self._stream(record, body["model"], text, usage)
        return JSONResponse(self._message(body["model"], text, usage), headers=_ratelimit_headers())

    def _stream(self, record: RecordedRequest, model: str, text: str, usage: dict[str, int]) -> Response:
        delay = _number_header(record, "x-fake-delay-ms", self.stream_delay_ms) / 1000
        pieces = _split(text, max(1, min(10_000, int(_number_header(record, "x-fake-chunks", DEFAULT_CHUNKS)))))
        fail_after = max(1, len(pieces) // 2) if record.header("x-fake-error") == "midstream" else None
        start = self._message(model, "", {**usage, "output_tokens": 1})
        start.update(content=[], stop_reason=None)  # message_start carries an empty, unfinished message
        final_usage = {
            key: usage[key]
            for key in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "output_tokens")
        }

        stream_id = record.header("x-stream-id") or start["id"]

        async def events() -> Any:
            self.streams[stream_id] = "streaming"
            try:
                async for event in message_events():
                    yield event
                self.streams[stream_id] = "completed"
            except (asyncio.CancelledError, GeneratorExit):
                self.streams[stream_id] = "cancelled"  # the client (the gateway) closed the connection
                raise

        async def message_events() -> Any:
            yield _sse("message_start", {"type": "message_start", "message": start})
            if hold := record.header("x-fake-hold"):
                await self._gate(hold).wait()
            await asyncio.sleep(delay)
            yield _sse(
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            )
            yield b'event: ping\ndata: {"type": "ping"}\n\n'  # Anthropic's ping really has that space
            if record.header("x-fake-unknown-event"):
                yield _sse("future_event", {"type": "future_event", "detail": "not yet known to clients"})
            for index, piece in enumerate(pieces):
                await asyncio.sleep(delay)
                if self._stopping:
                    return
                if index == fail_after:
                    yield _sse(
                        "error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
                    )
                    return
                yield _sse(
                    "content_block_delta",
                    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}},
                )
            yield _sse("content_block_stop", {"type": "content_block_stop", "index": 0})
            await asyncio.sleep(_number_header(record, "x-fake-final-delay-ms", delay * 1000) / 1000)
            yield _sse(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": final_usage,
                },
            )
            yield _sse("message_stop", {"type": "message_stop"})

        headers = {"cache-control": "no-cache", **_ratelimit_headers()}
        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

    async def _count_tokens(self, record: RecordedRequest) -> Response:
        body = _json_body(record)
        for field in ("model", "messages"):
            if field not in body:
                raise ApiError(400, f"{field}: Field required")
        return JSONResponse({"input_tokens": self._usage(body, record.header("x-fake-usage"))["input_tokens"]})

    # Message batches: they end as soon as they are created, unless x-fake-batch-status asks otherwise -------------

    def _batch_view(self, batch: Json) -> Json:
        view = dict(batch["object"])
        if view["processing_status"] == "ended":
            view["results_url"] = f"{self.public_base}/v1/messages/batches/{view['id']}/results"
        return view

    def _find_batch(self, batch_id: str) -> Json:
        batch = self._batches.get(batch_id)
        if batch is None:
            raise ApiError(404, f"message_batch: {batch_id}")
        return batch

    async def _create_batch(self, record: RecordedRequest) -> Response:
        requests = _json_body(record).get("requests")
        if not isinstance(requests, list) or not requests:
            raise ApiError(400, "requests: Field required")
        for index, item in enumerate(requests):
            if not isinstance(item, dict) or not isinstance(item.get("custom_id"), str):
                raise ApiError(400, f"requests.{index}.custom_id: Field required")
            _require_message_params(item.get("params"), f"requests.{index}.params.")
        if len({item["custom_id"] for item in requests}) != len(requests):
            raise ApiError(400, "requests: custom_id values must be unique")
        now, pending = _now(), record.header("x-fake-batch-status") == "in_progress"
        counts = {
            "processing": len(requests) if pending else 0,
            "succeeded": 0 if pending else len(requests),
            "errored": 0,
            "canceled": 0,
            "expired": 0,
        }
        batch_id = _new_id("msgbatch_")
        batch_object = {
            "id": batch_id,
            "type": "message_batch",
            "processing_status": "in_progress" if pending else "ended",
            "request_counts": counts,
            "ended_at": None if pending else _timestamp(now),
            "created_at": _timestamp(now),
            "expires_at": _timestamp(now + dt.timedelta(hours=24)),
            "archived_at": None,
            "cancel_initiated_at": None,
            "results_url": None,
        }
        with self._lock:
            self._batches[batch_id] = {
                "object": batch_object,
                "requests": requests,
                "usage_override": record.header("x-fake-usage"),  # applies to every result
            }
        return JSONResponse(self._batch_view(self._batches[batch_id]))

    async def _list_batches(self, record: RecordedRequest) -> Response:
        newest_first = [self._batch_view(batch) for batch in reversed(list(self._batches.values()))]
        page, _, has_more = _paginate(newest_first, record.params)
        return JSONResponse(_page_body(page, has_more))

    async def _get_batch(self, record: RecordedRequest, batch_id: str) -> Response:
        return JSONResponse(self._batch_view(self._find_batch(batch_id)))

    async def _cancel_batch(self, record: RecordedRequest, batch_id: str) -> Response:
        batch = self._find_batch(batch_id)
        batch_object = batch["object"]
        if batch_object["processing_status"] != "in_progress":
            return JSONResponse(self._batch_view(batch))  # nothing left to cancel
        now = _timestamp(_now())
        total = len(batch["requests"])
        # The cancel answer says "canceling"; the fake then finishes the cancellation at once.
        answer = {**batch_object, "processing_status": "canceling", "cancel_initiated_at": now}
        batch_object.update(
            processing_status="ended",
            cancel_initiated_at=now,
            ended_at=now,
            request_counts={**batch_object["request_counts"], "processing": 0, "canceled": total},
        )
        batch["canceled"] = True
        return JSONResponse(answer)

    async def _delete_batch(self, record: RecordedRequest, batch_id: str) -> Response:
        if self._find_batch(batch_id)["object"]["processing_status"] != "ended":
            raise ApiError(400, "Message Batches that are still in progress cannot be deleted; cancel them first.")
        with self._lock:
            self._batches.pop(batch_id, None)
        return JSONResponse({"id": batch_id, "type": "message_batch_deleted"})

    async def _batch_results(self, record: RecordedRequest, batch_id: str) -> Response:
        batch = self._find_batch(batch_id)
        if batch["object"]["processing_status"] != "ended":
            raise ApiError(400, f"Message Batch {batch_id} has not finished processing yet.")
        lines = []
        for item in batch["requests"]:
            params = item["params"]
            if batch.get("canceled"):
                result: Json = {"type": "canceled"}
            else:
                usage = self._usage(params, batch["usage_override"])
                message = self._message(params["model"], reply_text(params), usage, service_tier="batch")
                result = {"type": "succeeded", "message": message}
            lines.append(json.dumps({"custom_id": item["custom_id"], "result": result}, separators=(",", ":")))
        return Response(("\n".join(lines) + "\n").encode(), media_type="application/x-jsonl")

    # Models -------------------------------------------------------------------------------------------------------

    async def _list_models(self, record: RecordedRequest) -> Response:
        page, _, has_more = _paginate(MODELS, record.params)
        return JSONResponse(_page_body(page, has_more))

    async def _get_model(self, record: RecordedRequest, model_id: str) -> Response:
        model = next((model for model in MODELS if model["id"] == model_id), None)
        if model is None:
            raise ApiError(404, f"model: {model_id}")
        return JSONResponse(model)

    # Files (beta) -------------------------------------------------------------------------------------------------

    def _file(self, record: RecordedRequest, file_id: str | None = None) -> Json:
        """Checks the beta header like Anthropic does; returns the stored file (synthesizes file_big_<N>)."""
        betas = [beta.strip() for beta in (record.header("anthropic-beta") or "").split(",")]
        if FILES_BETA not in betas:
            raise ApiError(400, f"The Files API is in beta; add the `anthropic-beta: {FILES_BETA}` header.")
        if file_id is None:
            return {}
        if (big := re.fullmatch(r"file_big_(\d+)", file_id)) is not None:
            size = int(big.group(1))
            return {
                "meta": {
                    "id": file_id,
                    "type": "file",
                    "filename": f"big-{size}.bin",
                    "mime_type": "application/octet-stream",
                    "size_bytes": size,
                    "created_at": "2025-01-01T00:00:00.000000Z",
                    "downloadable": True,
                }
            }
        stored = self._files.get(file_id)
        if stored is None:
            raise ApiError(404, f"File not found: {file_id}")
        return stored

    async def _upload_file(self, record: RecordedRequest) -> Response:
        self._file(record)
        filename, mime_type, content = _multipart_file(record)
        file_id = _new_id("file_")
        meta = {
            "id": file_id,
            "type": "file",
            "filename": filename,
            "mime_type": mime_type,
            "size_bytes": len(content),
            "created_at": _timestamp(_now()),
            "downloadable": True,
        }
        with self._lock:
            self._files[file_id] = {"meta": meta, "content": content}
        return JSONResponse(meta)

    async def _list_files(self, record: RecordedRequest) -> Response:
        self._file(record)
        newest_first = [stored["meta"] for stored in reversed(list(self._files.values()))]
        page, start, has_more = _paginate(newest_first, record.params)
        # This SDK pages files with an opaque `next_page` cursor; older ones used after_id like the other lists.
        return JSONResponse(
            {**_page_body(page, has_more), "next_page": f"page_{start + len(page)}" if has_more else None}
        )

    async def _get_file(self, record: RecordedRequest, file_id: str) -> Response:
        return JSONResponse(self._file(record, file_id)["meta"])

    async def _delete_file(self, record: RecordedRequest, file_id: str) -> Response:
        self._file(record, file_id)
        with self._lock:
            self._files.pop(file_id, None)
        return JSONResponse({"id": file_id, "type": "file_deleted"})

    async def _file_content(self, record: RecordedRequest, file_id: str) -> Response:
        stored = self._file(record, file_id)
        size = stored["meta"]["size_bytes"]
        headers = {
            "content-length": str(size),
            "content-disposition": f'attachment; filename="{stored["meta"]["filename"]}"',
        }
        if "content" in stored:
            return Response(stored["content"], media_type="application/octet-stream", headers=headers)

        async def generate() -> Any:  # never holds more than one 64 KiB block
            for block in iter_big_file(size):
                if self._stopping:
                    return
                yield block

        return StreamingResponse(generate(), media_type="application/octet-stream", headers=headers)
