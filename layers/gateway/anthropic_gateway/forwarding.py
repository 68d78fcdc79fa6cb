"""The pass-through: build the upstream request from the client's, stream the upstream response back.

Bodies go through byte for byte. The only edits are the ones Anthropic clients need from a gateway: the
credentials (the client's key out, the upstream key in), `litellm_metadata` out of JSON bodies, and batch
`results_url`s pointed back at the gateway so `batches.results()` keeps using the virtual key.
"""

from __future__ import annotations

import http.cookiejar
import json
import re
import time
import urllib.request
from typing import Any
from urllib.parse import unquote

import httpx
from starlette.requests import ClientDisconnect, Request
from starlette.types import Scope

from . import batches
from .errors import GatewayError
from .exchange import Exchange
from .responses import BufferedResponse, RelayResponse
from .settings import get_settings
from .usage import UsageTap

PREFIX = "/anthropic"

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Never sent upstream: the client's credentials, what the HTTP client sets itself, the gateway's own headers,
# and the invocation context the Lambda Web Adapter adds (it names the AWS account, function and caller).
_DROP_REQUEST = _HOP_BY_HOP | {
    "host",
    "content-length",
    "x-api-key",
    "authorization",
    "x-litellm-api-key",
    "x-litellm-tags",
    "accept-encoding",
    "x-amzn-request-context",
    "x-amzn-lambda-context",
}
_DROP_RESPONSE = _HOP_BY_HOP
# Only unreserved characters or percent-escapes: Anthropic's paths need nothing more.
_SEGMENT = re.compile(r"(?:[A-Za-z0-9._~-]|%[0-9A-Fa-f]{2})+")
_RESULTS_URL = re.compile(rb'("results_url"\s*:\s*")([^"]+)(")')
_BATCH_PATH = re.compile(r"/v1/messages/batches(?:/[^/]+(?:/cancel)?)?")


# -- request side -------------------------------------------------------------------------------------------------


def upstream_path(scope: Scope) -> str:
    """The path below /anthropic, checked so that no request can leave the configured upstream.

    The upstream URL is always the configured base plus this path; nothing from the request can name a host.
    On top of that, dot segments, empty segments, encoded slashes and anything outside plain URL characters
    are refused, so no path can climb out of the upstream's path prefix either.
    """
    raw: bytes = scope.get("raw_path") or scope["path"].encode()
    path = raw.decode("latin-1").split("?", 1)[0]
    if not path.startswith(PREFIX + "/"):
        raise GatewayError(404, f"Not found: pass-through paths start with {PREFIX}/.")
    rest = path[len(PREFIX) :]
    for segment in rest[1:].split("/"):
        decoded = unquote(segment) if _SEGMENT.fullmatch(segment) else None
        if decoded is None or decoded in (".", "..") or any(c in decoded for c in "/\\") or not decoded.isprintable():
            raise GatewayError(400, "Invalid path: only plain path segments can be forwarded to Anthropic.")
    return rest


async def read_body(request: Request) -> bytes:
    """The whole request body, refused with 413 once it passes the Lambda payload limit."""
    limit = get_settings().max_request_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise _too_large(limit)
    except ClientDisconnect:
        raise GatewayError(400, "The client disconnected while sending the request body.") from None
    return bytes(body)


def _too_large(limit: int) -> GatewayError:
    return GatewayError(
        413,
        f"Request body exceeds the gateway's limit of {limit} bytes ({limit / 1048576:g} MB, AWS Lambda's payload "
        "limit). Upload large files with the Files API in smaller parts or send them directly.",
    )


def strip_litellm_metadata(body: bytes) -> tuple[bytes, dict[str, Any] | None]:
    """Remove a top-level `litellm_metadata` member from a JSON object body, leaving every other byte as sent."""
    if b'"litellm_metadata"' not in body:
        return body, None
    try:
        text = body.decode()
        decoder = json.JSONDecoder()
        members = _top_level_members(text, decoder)
    except (UnicodeDecodeError, ValueError):
        return body, None  # not JSON we understand: forward untouched, upstream will judge it
    for index, (name, start, end, value) in enumerate(members):
        if name != "litellm_metadata":
            continue
        if index + 1 < len(members):  # cut "name": value, up to the next member
            cut_start, cut_end = start, members[index + 1][1]
        elif index > 0:  # last member: cut from the end of the previous value
            cut_start, cut_end = members[index - 1][2], end
        else:
            cut_start, cut_end = start, end
        return (text[:cut_start] + text[cut_end:]).encode(), value if isinstance(value, dict) else None
    return body, None


_WS = re.compile(r"[ \t\n\r]*")


def _top_level_members(text: str, decoder: json.JSONDecoder) -> list[tuple[str, int, int, object]]:
    """(name, start, end-of-value, value) of each member of the top-level object; ValueError if not one."""
    pos = _skip_ws(text, 0)
    if text[pos : pos + 1] != "{":
        raise ValueError("not an object")
    pos = _skip_ws(text, pos + 1)
    members: list[tuple[str, int, int, object]] = []
    if text[pos : pos + 1] == "}":
        return members
    while True:
        start = pos
        if text[pos : pos + 1] != '"':
            raise ValueError("expected a name")
        name, pos = decoder.raw_decode(text, pos)  # a JSON string: a str
        pos = _skip_ws(text, pos)
        if text[pos : pos + 1] != ":":
            raise ValueError("expected ':'")
        value, pos = decoder.raw_decode(text, _skip_ws(text, pos + 1))
        members.append((name, start, pos, value))
        pos = _skip_ws(text, pos)
        if text[pos : pos + 1] == "}":
            if text[pos + 1 :].strip(" \t\n\r"):
                raise ValueError("trailing data")
            return members
        if text[pos : pos + 1] != ",":
            raise ValueError("expected ','")
        pos = _skip_ws(text, pos + 1)


def _skip_ws(text: str, pos: int) -> int:
    match = _WS.match(text, pos)
    return match.end() if match else pos  # `*`: it always matches


def upstream_headers(scope: Scope, upstream_key: str) -> list[tuple[bytes, bytes]]:
    """The client's headers minus credentials and hop-by-hop ones, plus the upstream key."""
    raw: list[tuple[bytes, bytes]] = scope["headers"]
    named_in_connection = {
        token.strip().lower()
        for name, value in raw
        if name.lower() == b"connection"
        for token in value.decode("latin-1").split(",")
    }
    headers = []
    has_version = False
    for name, value in raw:
        lower = name.decode("latin-1").lower()
        if lower in _DROP_REQUEST or lower in named_in_connection:
            continue
        has_version = has_version or lower == "anthropic-version"
        headers.append((name, value))
    if not has_version:
        headers.append((b"anthropic-version", get_settings().default_anthropic_version.encode()))
    # Ask for the body as-is: it is streamed through untouched and read for usage on the way.
    headers.append((b"accept-encoding", b"identity"))
    headers.append((b"x-api-key", upstream_key.encode()))
    return headers


# -- the shared upstream client ------------------------------------------------------------------------------------

_client: httpx.AsyncClient | None = None


class _NoCookies(http.cookiejar.DefaultCookiePolicy):
    """A shared client must carry nothing from one user's response into another user's request: its jar keeps
    no cookie. (httpx copies a `Cookies` object into a plain jar, so the policy lives on the jar itself.)"""

    def set_ok(self, cookie: http.cookiejar.Cookie, request: urllib.request.Request) -> bool:
        return False

    def return_ok(self, cookie: http.cookiejar.Cookie, request: urllib.request.Request) -> bool:
        return False


def client() -> httpx.AsyncClient:
    """One connection pool per process, created on first use (both the uvicorn and the Mangum doors)."""
    global _client
    if _client is None or _client.is_closed:
        settings = get_settings()
        _client = httpx.AsyncClient(
            timeout=httpx.Timeout(
                connect=settings.upstream_connect_timeout, read=settings.upstream_read_timeout, write=60.0, pool=30.0
            ),
            limits=httpx.Limits(max_connections=1000, max_keepalive_connections=100, keepalive_expiry=30.0),
            follow_redirects=False,
            trust_env=False,
            cookies=http.cookiejar.CookieJar(policy=_NoCookies()),
        )
        # Send only what the client sent: no default User-Agent or Accept of httpx's own.
        for name in ("user-agent", "accept"):
            _client.headers.pop(name, None)
    return _client


async def close_client() -> None:
    global _client
    if _client is not None:
        await _client.aclose()
        _client = None


# -- response side -------------------------------------------------------------------------------------------------


async def forward(
    request: Request, body: bytes, exchange: Exchange, upstream_key: str
) -> RelayResponse | BufferedResponse:
    """Send the request upstream; the response relays its answer back and ends the exchange (`responses.py`)."""
    scope = request.scope
    base = httpx.URL(get_settings().anthropic_api_base)
    target = base.copy_with(
        raw_path=(
            base.raw_path.rstrip(b"/")
            + exchange.path.encode("latin-1")
            + (b"?" + scope["query_string"] if scope["query_string"] else b"")
        )
    )
    upstream_request = client().build_request(
        request.method, target, headers=upstream_headers(scope, upstream_key), content=body or None
    )
    try:
        upstream = await client().send(upstream_request, stream=True)
    except httpx.TransportError as exc:
        raise _upstream_failure(exc, "could not be reached") from None

    exchange.status = upstream.status_code
    if upstream.status_code >= 400:
        exchange.error_source = "upstream"
    content_type = upstream.headers.get("content-type", "")
    exchange.tap = tap = batches.results_tap(exchange, upstream.status_code, content_type) or UsageTap(content_type)
    headers = [(n, v) for n, v in upstream.headers.raw if n.decode("latin-1").lower() not in _DROP_RESPONSE]

    if _BATCH_PATH.fullmatch(exchange.path) and content_type.startswith("application/json"):
        # Small JSON: read it whole so results_url can point at the gateway.
        try:
            content = _rewrite_results_url(await upstream.aread(), _gateway_base(request))
        except httpx.TransportError as exc:
            raise _upstream_failure(exc, "broke off its answer") from None
        finally:
            await upstream.aclose()
        await batches.observe(exchange, content)  # remembers a created batch, notes ended ones
        exchange.first_byte_at = time.perf_counter()
        exchange.completed = True
        return BufferedResponse(exchange, content, upstream.status_code, headers)

    return RelayResponse(exchange, upstream, tap, headers)


def _upstream_failure(exc: httpx.TransportError, what: str) -> GatewayError:
    if isinstance(exc, httpx.TimeoutException):
        return GatewayError(504, "The upstream Anthropic API did not answer in time.")
    return GatewayError(502, f"The upstream Anthropic API {what} ({type(exc).__name__}).")


def _gateway_base(request: Request) -> str:
    configured = get_settings().public_base_url
    base = configured.rstrip("/") if configured else str(request.base_url).rstrip("/")
    return base + PREFIX


def _rewrite_results_url(content: bytes, gateway_base: str) -> bytes:
    upstream_base = get_settings().anthropic_api_base.encode()
    api_host = b"https://api.anthropic.com"

    def replace(match: re.Match[bytes]) -> bytes:
        url = match.group(2)
        for origin in (upstream_base, api_host):
            if url.startswith(origin + b"/"):
                return match.group(1) + gateway_base.encode() + url[len(origin) :] + match.group(3)
        return match.group(0)

    return _RESULTS_URL.sub(replace, content)
