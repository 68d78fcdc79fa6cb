"""The admin API (/key/*, /team/*, /user/*, /tag/*, /spend/*, /sso/*, /audit) and the console (/ui): a FastAPI
app, imported on first use (app.py).

FastAPI, pydantic and these routes are half of what importing the gateway would cost, and a pass-through request
uses none of them: the app loads this module the first time a request is not one it serves itself.

The app builds it with its runtime (runtime.py), which it keeps in its state (Starlette's `app.state`): a route
reaches it as `auth.runtime_of(request)`, and hands on the parts its callees need.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aws_lambda_powertools import Logger
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from . import audit_routes, console, key_routes, spend_routes, sso_routes, tag_routes, team_routes, user_routes
from .aws import transient
from .errors import GatewayError, error_response, invalid_request, render

if TYPE_CHECKING:
    from .runtime import Runtime

logger = Logger(child=True)


def build(runtime: Runtime) -> FastAPI:
    """The admin app, serving with `runtime` (the app's `Runtime`). Every error it produces is in Anthropic's
    shape, like the pass-through's."""
    api = FastAPI(title="Anthropic API gateway", docs_url=None, redoc_url=None, openapi_url=None)
    api.state.runtime = runtime
    api.include_router(key_routes.router)
    api.include_router(spend_routes.router)
    api.include_router(team_routes.router)
    api.include_router(user_routes.router)
    api.include_router(tag_routes.router)
    api.include_router(sso_routes.router)  # single sign-on: console sessions, personal keys (/sso/*)
    api.include_router(audit_routes.router)
    api.include_router(console.router)  # the admin console's static files, /ui
    api.add_exception_handler(GatewayError, _gateway_error)  # type: ignore[arg-type]
    api.add_exception_handler(RequestValidationError, _invalid_request)  # type: ignore[arg-type]
    api.add_exception_handler(HTTPException, _http_error)  # type: ignore[arg-type]
    api.add_exception_handler(Exception, _unexpected)
    return api


async def _gateway_error(request: Request, exc: GatewayError) -> Response:
    return render(exc)


async def _invalid_request(request: Request, exc: RequestValidationError) -> Response:
    return render(invalid_request(exc.errors()))


async def _http_error(request: Request, exc: HTTPException) -> Response:
    message = "Not found." if exc.status_code == 404 else str(exc.detail)
    return error_response(exc.status_code, message, headers=getattr(exc, "headers", None))


async def _unexpected(request: Request, exc: Exception) -> Response:
    if transient(exc):  # a dependency outage is a 503 the caller may retry, not the gateway's own fault
        logger.warning("storage unavailable", extra={"route": request.url.path, "error": type(exc).__name__})
        return error_response(
            503,
            f"The gateway cannot reach its storage right now ({type(exc).__name__}); retry. A change this request "
            "asked for may or may not have been made: read it back first.",
        )
    logger.exception("unhandled error", extra={"route": request.url.path})
    return error_response(500, "Internal gateway error.")
