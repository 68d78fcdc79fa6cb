"""The app both doors serve: uvicorn behind the Lambda Web Adapter, and Mangum behind API Gateway.

`/anthropic/*` goes straight to the pass-through, a plain ASGI function (`GatewayApp`); FastAPI serves everything
else (/key/*, /spend/*, /ui, /health) and the lifespan. Its router, middleware stack and dependency machinery
cost a tenth of the pass-through's time for nothing it uses (issue 11).

A pass-through request reads top to bottom: authenticate -> read and check the body -> forward -> stream ->
account (after the last byte: the response that ends the request calls `accounting.after_response`, see
responses.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager

from aws_lambda_powertools import Logger
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request as PlainRequest
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from . import (
    accounting,
    audit_routes,
    background,
    console,
    forwarding,
    governance,
    key_routes,
    request_body,
    routing,
    spend_routes,
    sso_routes,
    tag_routes,
    tags,
    team_routes,
    user_routes,
)
from .auth import authenticate
from .batches import admit as admit_batch
from .bedrock import get_bedrock
from .errors import GatewayError, error_response, invalid_request, render
from .exchange import Exchange
from .front_door import Arrival
from .ledger import ledger
from .responses import BufferedResponse, DisconnectWatch, ExchangeResponse, RelayResponse
from .settings import get_settings

logger = Logger()
_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


async def drain() -> None:
    """Finish every request's after-response work (accounting), then write what the ledger still holds.

    Lambda freezes a process between invocations: the buffered door drains before each invocation returns
    (functions/api/handler.py), the streaming door at shutdown (uvicorn's lifespan; the Lambda Web Adapter is an
    extension, so Lambda sends SIGTERM before it ends the environment).
    """
    accounting.settle_queued(asyncio.get_running_loop())
    await background.wait()
    await ledger.flush()


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    check_settings()
    yield
    await drain()
    await forwarding.close_pool()


def check_settings() -> None:
    """Read the settings and build the Bedrock upstream at start, so a bad setting fails the Lambda Web Adapter's
    readiness check (and `serve`) instead of every request; /health stays cheap. Bedrock is built whatever
    DEFAULT_UPSTREAMS says, since any key may list it: that is local work only (no network, no credentials)."""
    get_settings()
    get_bedrock()


api = FastAPI(title="Anthropic API gateway", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
api.include_router(key_routes.router)
api.include_router(spend_routes.router)
api.include_router(team_routes.router)
api.include_router(user_routes.router)
api.include_router(tag_routes.router)
api.include_router(sso_routes.router)  # single sign-on: console sessions, personal keys (/sso/*)
api.include_router(audit_routes.router)
api.include_router(console.router)  # the admin console's static files, /ui


@api.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


class GatewayApp:
    """Plain ASGI in front of FastAPI: pass-through requests to `anthropic_passthrough`, the rest to `api`."""

    PASS_THROUGH_PATH = forwarding.PREFIX + "/{path:path}"  # what it serves beside api.routes (for the template)

    def __init__(self, api: FastAPI) -> None:
        self.api = api

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in _METHODS and scope["path"].startswith(_PASS_THROUGH):
            response = await anthropic_passthrough(PlainRequest(scope, receive))
            await response(scope, receive, send)
        else:
            await self.api(scope, receive, send)


_PASS_THROUGH = forwarding.PREFIX + "/"


async def anthropic_passthrough(request: Request) -> ExchangeResponse:
    exchange = Exchange(method=request.method, path="", arrival=Arrival.of(request.scope))
    response: ExchangeResponse | None = None
    try:
        try:
            exchange.principal = await authenticate(request.headers)
            exchange.path = forwarding.canonical_path(request.scope)  # the one path every check reads and sent
            body = await request_body.read(request)  # litellm_metadata cut out; parsed at most once
            exchange.tags = tags.resolve(body.litellm_metadata, request.headers, exchange.principal)
            await governance.admit(exchange, body)  # models, budget, rate limits; holds go on exchange.admission
            await admit_batch(exchange, body.raw)  # a batch create reserves its whole estimate (402 when it cannot)
            # Anthropic, Amazon Bedrock, or one then the other (failover): routing.py
            response = await _until_disconnect(request, routing.forward(request, body.raw, exchange))
        except GatewayError as exc:
            response = _error(exchange, exc)
        except _ClientGone:  # nobody reads this answer; it is what the access log shows (nginx's 499)
            response = _error(exchange, GatewayError(499, "The client closed the request."))
            exchange.error_source = None
        except Exception:  # a bug or an unforeseen failure: still an Anthropic-shaped answer, still accounted
            logger.exception("pass-through failed", extra={"request_id": exchange.request_id})
            response = _error(exchange, GatewayError(502, "Upstream or gateway error; the request was not completed."))
    finally:
        if response is None:
            # Cancelled before any response existed (the server is stopping, or anything else that is not an
            # Exception): account here all the same, so the holds admission took are released.
            exchange.status, exchange.error_source = exchange.status or 499, exchange.error_source or "gateway"
            accounting.after_response(exchange)
    # Called by the response once it has ended, however it ended: every pass-through request is accounted once.
    response.after_response = accounting.after_response
    return response


def _error(exchange: Exchange, exc: GatewayError) -> ExchangeResponse:
    exchange.status, exchange.error_source = exc.status, "gateway"
    error = render(exc)
    headers = error.raw_headers
    if exchange.upstream:  # the upstream could not be reached, or cannot serve this request (a Bedrock-only key)
        headers = [*headers, (forwarding.UPSTREAM_HEADER, exchange.upstream.encode())]
    return BufferedResponse(exchange, bytes(error.body), error.status_code, headers)


class _ClientGone(Exception):
    """The client disconnected before the upstream's answer began."""


async def _until_disconnect(request: Request, forwarding_call: Awaitable[ExchangeResponse]) -> ExchangeResponse:
    """Await the upstream's answer, but give up (cancel) as soon as the client disconnects: nobody would read it,
    and the request's holds are released at once rather than when the upstream gets round to answering. A relayed
    answer keeps the same watch until its last byte."""
    task = asyncio.current_task()
    assert task is not None  # an ASGI app always runs in a task
    watch = DisconnectWatch(request.receive, task)
    try:
        response = await forwarding_call
    except asyncio.CancelledError:
        if not watch.fired:
            watch.stop()
            raise  # cancelled by someone else (server shutdown): not ours to swallow
        task.uncancel()
        raise _ClientGone from None
    except BaseException:
        watch.stop()
        raise
    if isinstance(response, RelayResponse):
        response.watch = watch  # the relay runs in this same task (GatewayApp), so the watch still targets it
    else:
        watch.stop()
    return response


@api.exception_handler(GatewayError)
async def _gateway_error(request: Request, exc: GatewayError) -> Response:
    return render(exc)


@api.exception_handler(RequestValidationError)
async def _invalid_request(request: Request, exc: RequestValidationError) -> Response:
    return render(invalid_request(exc.errors()))


@api.exception_handler(HTTPException)
async def _http_error(request: Request, exc: HTTPException) -> Response:
    message = "Not found." if exc.status_code == 404 else str(exc.detail)
    return error_response(exc.status_code, message, headers=getattr(exc, "headers", None))


@api.exception_handler(Exception)
async def _unexpected(request: Request, exc: Exception) -> Response:
    logger.exception("unhandled error", extra={"route": request.url.path})
    return error_response(500, "Internal gateway error.")


app = GatewayApp(api)
