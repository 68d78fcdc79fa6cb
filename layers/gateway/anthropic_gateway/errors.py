"""Errors the gateway itself produces, in Anthropic's shape so every SDK raises the matching exception."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from starlette.responses import JSONResponse

# Anthropic's error types by HTTP status, as its SDKs map them back to exception classes.
_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


class GatewayError(Exception):
    """Raised anywhere in a request; rendered by the app as an Anthropic error response."""

    def __init__(
        self, status: int, message: str, *, error_type: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type or _TYPE_BY_STATUS.get(status, "api_error")
        self.headers = headers or {}


def error_response(
    status: int, message: str, *, error_type: str | None = None, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    error_type = error_type or _TYPE_BY_STATUS.get(status, "api_error")
    body = {"type": "error", "error": {"type": error_type, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


def render(exc: GatewayError) -> JSONResponse:
    return error_response(exc.status, exc.message, error_type=exc.error_type, headers=exc.headers)


def invalid_request(errors: Sequence[Mapping[str, Any]]) -> GatewayError:
    """A 400 naming what pydantic found wrong, `field.path: message; ...` (at most ten, to bound the message).

    FastAPI's locations start with where the value came from ("body", "query"); a body's is left out, as a body
    parsed by hand has none.
    """
    problems = "; ".join(f"{_location(error['loc'])}: {error['msg']}" for error in errors[:10])
    return GatewayError(400, f"Invalid request: {problems}")


def _location(loc: Sequence[int | str]) -> str:
    parts = loc[1:] if loc and loc[0] == "body" else loc
    return ".".join(map(str, parts)) or "body"
