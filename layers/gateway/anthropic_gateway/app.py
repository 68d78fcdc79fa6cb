"""The FastAPI app both doors serve: uvicorn behind the Lambda Web Adapter, and Mangum behind API Gateway.

A pass-through request reads top to bottom: authenticate -> read and check the body -> forward -> stream ->
account (after the last byte: the response that ends the request starts `accounting.settle`, see responses.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aws_lambda_powertools import Logger
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.responses import Response

from . import accounting, background, console, forwarding, governance, key_routes, key_spend, secrets, tag_spend, tags
from .auth import authenticate
from .batches import admit as admit_batch
from .errors import GatewayError, error_response, invalid_request, render
from .exchange import Exchange
from .ledger import ledger
from .responses import BufferedResponse

logger = Logger()
_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


async def drain() -> None:
    """Finish every request's after-response work (accounting), then write what the ledger still holds.

    Lambda freezes a process between invocations: the buffered door drains before each invocation returns
    (functions/api/handler.py), the streaming door at shutdown (uvicorn's lifespan; the Lambda Web Adapter is an
    extension, so Lambda sends SIGTERM before it ends the environment).
    """
    await background.wait()
    await ledger.flush()


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    await drain()
    await forwarding.close_client()


app = FastAPI(title="Anthropic API gateway", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
app.include_router(key_routes.router)
app.include_router(tag_spend.router)
app.include_router(key_spend.router)
app.include_router(console.router)  # the admin console's static files, /ui


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.api_route("/anthropic/{path:path}", methods=_METHODS, include_in_schema=False)
async def anthropic_passthrough(request: Request) -> Response:
    exchange = Exchange(method=request.method, path="")
    try:
        exchange.principal = await authenticate(request.headers)
        exchange.path = forwarding.upstream_path(request.scope)
        body = await forwarding.read_body(request)
        body, litellm_metadata = forwarding.strip_litellm_metadata(body)
        exchange.tags = tags.resolve(litellm_metadata, request.headers, exchange.principal)
        await governance.admit(exchange, body)  # models, budget, rate limits; holds go on exchange.admission
        await admit_batch(exchange, body)  # a batch create reserves its whole estimate (402 when it cannot)
        response = await forwarding.forward(request, body, exchange, await secrets.upstream_key())
    except GatewayError as exc:
        exchange.status, exchange.error_source = exc.status, "gateway"
        error = render(exc)
        response = BufferedResponse(exchange, bytes(error.body), error.status_code, error.raw_headers)
    # Started by the response once it has ended, however it ended: every pass-through request is accounted once.
    response.background = BackgroundTask(accounting.settle, exchange)
    return response


@app.exception_handler(GatewayError)
async def _gateway_error(request: Request, exc: GatewayError) -> Response:
    return render(exc)


@app.exception_handler(RequestValidationError)
async def _invalid_request(request: Request, exc: RequestValidationError) -> Response:
    return render(invalid_request(exc.errors()))


@app.exception_handler(HTTPException)
async def _http_error(request: Request, exc: HTTPException) -> Response:
    message = "Not found." if exc.status_code == 404 else str(exc.detail)
    return error_response(exc.status_code, message, headers=getattr(exc, "headers", None))


@app.exception_handler(Exception)
async def _unexpected(request: Request, exc: Exception) -> Response:
    logger.exception("unhandled error", extra={"route": request.url.path})
    return error_response(500, "Internal gateway error.")
