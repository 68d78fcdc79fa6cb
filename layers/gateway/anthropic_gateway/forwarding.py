"""The pass-through: build the upstream request from the client's, stream the upstream response back.

Bodies go through byte for byte. The only edits are the ones Anthropic clients need from a gateway: the
credentials (the client's key out, the upstream key in), `litellm_metadata` out of JSON bodies, and batch
`results_url`s pointed back at the gateway so `batches.results()` keeps using the virtual key. Amazon Bedrock
(`bedrock.py`) also gets its model id in place of the client's; `routing.py` picks the upstream and fails over.
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.types import Scope

from . import batches
from .aws import AwsCalls
from .bedrock import Bedrock
from .bedrock_errors import anthropic_error
from .errors import GatewayError
from .exchange import Exchange
from .front_door import Arrival
from .pricing import UnknownModels
from .request_body import RequestBody
from .responses import BufferedResponse, RelayResponse, bodiless
from .secrets import Secrets
from .settings import Settings
from .upstream_http import UpstreamError, UpstreamPool, UpstreamResponse, UpstreamTimeout
from .usage import UsageTap

PREFIX = "/anthropic"
UPSTREAM_HEADER = b"x-gateway-upstream"  # on every pass-through response: which upstream answered
MESSAGES_PATH = "/v1/messages"  # the one path whose answers report what they cost
MAX_ERROR_BODY = 64 * 1024  # bytes of a Bedrock error read for translation; its errors are a short JSON object

_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Never sent upstream: the client's credentials, what the HTTP client sets itself, the gateway's own headers,
# and the invocation context the Lambda Web Adapter adds (it names the AWS account, function and caller).
# `expect` too: the gateway has the whole body before it calls the upstream (uvicorn answered the client's
# 100-continue), and `expect: 100-continue` invites the upstream to answer before it reads the body.
_DROP_REQUEST = _HOP_BY_HOP | {
    b"host",
    b"content-length",
    b"expect",
    b"x-api-key",
    b"authorization",
    b"x-litellm-api-key",
    b"x-litellm-tags",
    b"accept-encoding",
    b"x-amzn-request-context",
    b"x-amzn-lambda-context",
}
_DROP_RESPONSE = _HOP_BY_HOP
# Also dropped from answers that have no body (HTTP's 1xx, 204, 304): a 304 may carry the content-length of the
# representation it stands for, which the server (uvicorn) would then expect a body of.
_DROP_BODILESS = _DROP_RESPONSE | {b"content-length"}
# Only unreserved characters or percent-escapes: Anthropic's paths need nothing more.
_SEGMENT = re.compile(r"(?:[A-Za-z0-9._~-]|%[0-9A-Fa-f]{2})+")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = re.compile(r"[A-Za-z0-9._~-]")
_RESULTS_URL = re.compile(rb'("results_url"\s*:\s*")([^"]+)(")')
_BATCH_PATH = re.compile(r"/v1/messages/batches(?:/[^/]+(?:/cancel)?)?")


# -- request side -------------------------------------------------------------------------------------------------


def canonical_path(scope: Scope) -> str:
    """The path below /anthropic, decided once: every check reads it, and it is the path sent upstream.

    Percent-escapes of unreserved characters are decoded (RFC 3986 2.3: `/v1/%6dessages` is `/v1/messages`), so
    the gateway's checks see the path any server would route. Anything still ambiguous is refused with 400: escapes
    of other characters (an encoded `/`, `\\`, space or control), dot and empty segments, and characters outside
    plain URL ones. So the result is plain unreserved characters and slashes, and no path can leave the
    configured upstream or its path prefix.
    """
    raw: bytes = scope.get("raw_path") or scope["path"].encode()
    if (known := _canonical_paths.get(raw)) is not None:
        return known
    segments = raw.decode("latin-1").split("?", 1)[0].split("/")
    if segments[0] != "":
        raise _invalid_path()
    canonical = "/" + "/".join(_canonical_segment(segment) for segment in segments[1:])
    if not canonical.startswith(PREFIX + "/") or canonical == PREFIX + "/":
        raise GatewayError(404, f"Not found: pass-through paths start with {PREFIX}/.")
    if len(_canonical_paths) >= _CANONICAL_PATHS_KEPT:
        _canonical_paths.clear()  # clients choose paths: what they can fill stays bounded
    path = _canonical_paths[raw] = canonical[len(PREFIX) :]
    return path


# Paths decided lately, raw -> canonical: a few paths serve nearly every request (issue 11).
_canonical_paths: dict[bytes, str] = {}
_CANONICAL_PATHS_KEPT = 1000


def _canonical_segment(segment: str) -> str:
    if not _SEGMENT.fullmatch(segment):
        raise _invalid_path()
    decoded = _ESCAPE.sub(_unescape_unreserved, segment)
    if decoded in (".", ".."):
        raise _invalid_path()
    return decoded


def _unescape_unreserved(match: re.Match[str]) -> str:
    char = chr(int(match.group(1), 16))
    if not _UNRESERVED.fullmatch(char):
        raise _invalid_path()
    return char


def _invalid_path() -> GatewayError:
    return GatewayError(400, "Invalid path: only plain path segments can be forwarded to Anthropic.")


def upstream_headers(scope: Scope, upstream_key: str | None, anthropic_version: str) -> list[tuple[bytes, bytes]]:
    """The client's headers minus credentials and hop-by-hop ones, plus the upstream key (Anthropic's only), and
    `anthropic_version` (DEFAULT_ANTHROPIC_VERSION) when the client named none."""
    raw: list[tuple[bytes, bytes]] = scope["headers"]
    named_in_connection = {
        token.strip().lower() for name, value in raw if name.lower() == b"connection" for token in value.split(b",")
    }
    headers = []
    has_version = False
    for name, value in raw:
        lower = name.lower()
        if lower in _DROP_REQUEST or lower in named_in_connection:
            continue
        has_version = has_version or lower == b"anthropic-version"
        headers.append((name, value))
    if not has_version:
        headers.append((b"anthropic-version", anthropic_version.encode()))
    # Ask for the body as-is: it is streamed through untouched and read for usage on the way.
    headers.append((b"accept-encoding", b"identity"))
    if upstream_key is not None:
        headers.append((b"x-api-key", upstream_key.encode()))
    return headers


# -- the shared upstream clients -----------------------------------------------------------------------------------


class UpstreamPools:
    """One runtime's keep-alive pools, one per upstream origin (Anthropic's, Bedrock's), made on first use.

    A pool carries no per-user state: no cookies, no redirects, no proxy from the environment, no decompression.
    """

    def __init__(self, settings: Settings, bedrock_base_url: str) -> None:
        self._settings = settings
        self._base_urls = {"anthropic": settings.anthropic_api_base, "bedrock": bedrock_base_url}
        self._pools: dict[str, UpstreamPool] = {}

    def get(self, upstream: str = "anthropic") -> UpstreamPool:
        found = self._pools.get(upstream)
        if found is None:
            found = self._pools[upstream] = _new_pool(self._base_urls[upstream], self._settings)
        return found

    async def close(self) -> None:
        """Close every connection; the next request opens new ones (pools are made again on use)."""
        pools, self._pools = list(self._pools.values()), {}
        for upstream_pool in pools:
            await upstream_pool.aclose()


def _new_pool(base_url: str, settings: Settings) -> UpstreamPool:
    context = None
    if settings.upstream_ca_bundle:  # tests: the CA they made; deployments use certifi's trust store
        context = ssl.create_default_context(cafile=settings.upstream_ca_bundle)
        context.set_alpn_protocols(["http/1.1"])
    return UpstreamPool(
        base_url,
        ssl_context=context,
        max_connections=1000,
        max_idle=100,
        connect_timeout=settings.upstream_connect_timeout,
        read_timeout=settings.upstream_read_timeout,
        write_timeout=settings.upstream_write_timeout,
        pool_timeout=settings.upstream_pool_timeout,
    )


@dataclass(frozen=True)
class Upstreams:
    """What one runtime forwards with (runtime.py builds it; the app hands it to `routing.forward`): its settings,
    its pools, its Bedrock upstream and its secrets (the upstream key); and, for the batch answers on their way
    back (batches.py), its AWS calls and its price of models pricing.json does not know."""

    settings: Settings
    pools: UpstreamPools
    bedrock: Bedrock
    secrets: Secrets
    aws: AwsCalls
    unknown_models: UnknownModels


# -- sending ------------------------------------------------------------------------------------------------------


@dataclass
class Answer:
    """An upstream's answer whose head has arrived and of which no byte has gone to the client yet."""

    upstream: str  # "anthropic" or "bedrock"
    response: UpstreamResponse
    status: int  # what the client would get: a Bedrock error's status after translation
    error_body: bytes | None = None  # a Bedrock error, read whole and in Anthropic's shape


async def ask(upstreams: Upstreams, upstream: str, request: Request, body: RequestBody, exchange: Exchange) -> Answer:
    """Send the request to one upstream and wait for its answer's head. Raises UpstreamError when the upstream
    cannot be reached or does not answer in time, GatewayError when the request cannot go there at all."""
    query: bytes = request.scope["query_string"]
    try:
        if upstream == "bedrock":
            return await _ask_bedrock(upstreams, request, body, exchange, query)
        upstream_pool = upstreams.pools.get("anthropic")
        target = upstream_pool.base_path + exchange.path.encode("ascii") + (b"?" + query if query else b"")
        version = upstreams.settings.default_anthropic_version
        headers = upstream_headers(request.scope, await upstreams.secrets.upstream_key(), version)
        response = await upstream_pool.request(request.method, target, headers, body.raw)
        return Answer(upstream, response, response.status)
    except ValueError:  # a query or header the client sent that would break HTTP framing
        raise GatewayError(400, "The request's query string or headers cannot be forwarded.") from None


async def _ask_bedrock(
    upstreams: Upstreams, request: Request, body: RequestBody, exchange: Exchange, query: bytes
) -> Answer:
    """The same request to Amazon Bedrock: its model id and SigV4 (bedrock.py); its errors read and translated."""
    headers = upstream_headers(request.scope, None, upstreams.settings.default_anthropic_version)
    bedrock, method = upstreams.bedrock, request.method
    model = await body.model_span() if bedrock.serves(method, exchange.path) else None
    url, headers, content = await bedrock.prepare(method, exchange.path, query, headers, body.raw, model)
    parts = urlsplit(url)
    target = (parts.path + (f"?{parts.query}" if parts.query else "")).encode("latin-1")
    response = await upstreams.pools.get("bedrock").request(request.method, target, headers, content)
    if response.status < 400:
        return Answer("bedrock", response, response.status)
    raw = await _read_capped(response)
    names = {n.decode("latin-1").lower(): v.decode("latin-1") for n, v in response.headers}
    translated = anthropic_error(response.status, names, raw)
    if translated is None:  # already Anthropic's shape (the native endpoint's own validation errors)
        return Answer("bedrock", response, response.status, raw)
    return Answer("bedrock", response, translated.status, translated.body)


async def _read_capped(response: UpstreamResponse) -> bytes:
    """At most MAX_ERROR_BODY bytes of an error body; what a broken-off body left is translated by status."""
    chunks, size = [], 0
    try:
        async for chunk in response.aiter_raw():
            chunks.append(chunk)
            size += len(chunk)
            if size >= MAX_ERROR_BODY:
                break
    except UpstreamError:
        pass
    finally:
        await response.aclose()
    return b"".join(chunks)[:MAX_ERROR_BODY]


# -- response side -------------------------------------------------------------------------------------------------


async def respond(
    upstreams: Upstreams, request: Request, exchange: Exchange, answer: Answer, body: RequestBody
) -> RelayResponse | BufferedResponse:
    """The response that relays the chosen answer back and ends the exchange (`responses.py`). `body` is the
    request's: a Messages answer that ends without its usage is billed the most that request can cost."""
    upstream = answer.response
    content_type, headers = "", []
    dropped = _DROP_BODILESS if bodiless(upstream.status) else _DROP_RESPONSE
    for name, value in upstream.headers:
        lower = name.lower()
        if lower not in dropped:
            headers.append((name, value))
        if lower == b"content-type" and not content_type:
            content_type = value.decode("latin-1")
    headers.append((UPSTREAM_HEADER, answer.upstream.encode()))

    if answer.error_body is not None:  # Bedrock's error, already read: Anthropic's shape, Anthropic's status
        exchange.answered(answer.status, None)
        exchange.first_byte()
        exchange.body_ended()
        headers = [(n, v) for n, v in headers if n.lower() != b"content-type"]
        return BufferedResponse(
            exchange, answer.error_body, answer.status, [*headers, (b"content-type", b"application/json")]
        )

    tap: UsageTap | None = batches.results_tap(upstreams.unknown_models, exchange, upstream.status, content_type)
    if tap is None:
        billed = upstream.status == 200 and (exchange.method, exchange.path) == ("POST", MESSAGES_PATH)
        tap = UsageTap(content_type, request=body.raw if billed else None)
    exchange.answered(answer.status, tap)
    if _BATCH_PATH.fullmatch(exchange.path) and content_type.startswith("application/json"):
        # Small JSON: read it whole so results_url can point at the gateway.
        try:
            settings = upstreams.settings
            gateway_base = _gateway_base(request, settings.public_base_url)
            content = _rewrite_results_url(await upstream.aread(), gateway_base, settings.anthropic_api_base)
        except UpstreamError as exc:
            raise upstream_failure(exc, answer.upstream, "broke off its answer") from None
        finally:
            await upstream.aclose()
        # Remembers a created batch, notes ended ones.
        await batches.observe(upstreams.aws, upstreams.settings, exchange, content)
        exchange.first_byte()
        exchange.body_ended()
        return BufferedResponse(exchange, content, upstream.status, headers)

    return RelayResponse(exchange, upstream, tap, headers)


_NAMES = {"anthropic": "The upstream Anthropic API", "bedrock": "Amazon Bedrock"}


def upstream_failure(exc: UpstreamError, upstream: str, what: str = "could not be reached") -> GatewayError:
    if isinstance(exc, UpstreamTimeout):
        return GatewayError(504, f"{_NAMES[upstream]} did not answer in time.")
    return GatewayError(502, f"{_NAMES[upstream]} {what} ({type(exc).__name__}).")


def _gateway_base(request: Request, configured: str | None) -> str:
    """The gateway's pass-through URL as clients reach it (`configured`: GATEWAY_PUBLIC_URL, when set)."""
    if configured:
        return configured.rstrip("/") + PREFIX
    # Through a REST API's own URL the public path starts with the stage, which the app never sees in its path.
    stage = Arrival.of(request.scope).front_door().path_prefix
    return str(request.base_url).rstrip("/") + stage + PREFIX


def _rewrite_results_url(content: bytes, gateway_base: str, anthropic_api_base: str) -> bytes:
    upstream_base = anthropic_api_base.encode()
    api_host = b"https://api.anthropic.com"

    def replace(match: re.Match[bytes]) -> bytes:
        url = match.group(2)
        for origin in (upstream_base, api_host):
            if url.startswith(origin + b"/"):
                return match.group(1) + gateway_base.encode() + url[len(origin) :] + match.group(3)
        return match.group(0)

    return _RESULTS_URL.sub(replace, content)
