"""Which upstream serves a request, and failover from one to the next (docs/bedrock.md).

A key lists its upstreams in failover order (`keys.effective_upstreams`). Amazon Bedrock is a candidate only for the
paths it serves and models it has an id for; everything else goes to Anthropic. The next upstream gets the same
request only while nothing of the previous one's answer has gone to the client: it answered with an outage
status (529, 500, 502, 503, 504; 429 where the operator turns that on), or could not be reached, or timed out
before its headers. Its answer is then closed unread. Once `forwarding.respond` has built the response that
relays an answer, that answer is final.
"""

from __future__ import annotations

from starlette.requests import Request

from . import forwarding
from .errors import GatewayError
from .exchange import Exchange
from .keys import effective_upstreams
from .request_body import RequestBody
from .responses import BufferedResponse, RelayResponse
from .settings import Settings
from .upstream_http import UpstreamError, UpstreamTimeout

_OUTAGE = {529: "status_529", 500: "status_5xx", 502: "status_5xx", 503: "status_5xx", 504: "status_5xx"}


async def upstream_order(
    upstreams: forwarding.Upstreams, exchange: Exchange, method: str, body: RequestBody
) -> list[str]:
    """The upstreams to try for this request, in order: the key's, less Bedrock where it cannot serve it.

    A key whose only upstream is Bedrock keeps it either way: `Bedrock.prepare` then says why (404 for a path, 400
    for a model), rather than the request silently going to Anthropic.
    """
    record = exchange.principal.record if exchange.principal else None
    default = upstreams.settings.default_upstreams
    order = effective_upstreams(record, default) if record else default
    if "bedrock" not in order:
        return list(order)
    bedrock = upstreams.bedrock
    span = await body.model_span() if bedrock.serves(method, exchange.path) else None
    servable = span is not None and bedrock.model_id(span[0]) is not None
    usable = [name for name in order if name != "bedrock" or servable]
    return usable or list(order)


def failover_cause(status: int, settings: Settings) -> str | None:
    """Why an answer with this status goes to the next upstream, or None when it is the client's answer."""
    if status == 429 and settings.bedrock_failover_on_429:
        return "status_429"
    return _OUTAGE.get(status)


async def forward(
    upstreams: forwarding.Upstreams, request: Request, body: RequestBody, exchange: Exchange
) -> RelayResponse | BufferedResponse:
    """Send the request to the first upstream of `upstreams` that answers for real; relay that answer to the
    client."""
    order = await upstream_order(upstreams, exchange, request.method, body)
    for position, upstream in enumerate(order):
        last = position == len(order) - 1
        exchange.trying(upstream)
        try:
            answer = await forwarding.ask(upstreams, upstream, request, body, exchange)
        except UpstreamError as exc:
            if last:
                raise forwarding.upstream_failure(exc, upstream) from None
            exchange.failing_over("timeout" if isinstance(exc, UpstreamTimeout) else "unreachable")
            continue
        except GatewayError as exc:
            # Bedrock without credentials (or its API key) is as unreachable as a refused connection; a 4xx
            # (a path or model it cannot serve) is never failed over: upstream_order left those out already.
            if last or exc.status < 500:
                raise
            exchange.failing_over("unreachable")
            continue
        cause = None if last else failover_cause(answer.status, upstreams.settings)
        if cause is None:
            return await forwarding.respond(upstreams, request, exchange, answer, body)
        await answer.response.aclose()  # nothing of it went to the client: close it unread
        exchange.failing_over(cause)
    raise AssertionError("unreachable: the last upstream's answer is always returned")
