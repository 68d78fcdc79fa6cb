"""Bedrock's error responses in Anthropic's shape, so every SDK raises the same exception from either upstream.

AWS services name the error in the `x-amzn-ErrorType` header (`ThrottlingException:http://internal.amazon.com/...`)
and/or a `__type` body field (`com.amazon.coral.service#ThrottlingException`), with the text in `message` or
`Message`. Types and statuses are those of the Bedrock runtime API reference and the Bedrock troubleshooting page
(https://docs.aws.amazon.com/bedrock/latest/userguide/troubleshooting-api-error-codes.html).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import NamedTuple

_MAX_MESSAGE = 1000  # characters of Bedrock's message passed on


class Translated(NamedTuple):
    status: int
    body: bytes


# Bedrock error type -> (status for the client, Anthropic error type, fixed message or None to pass Bedrock's on).
_BY_TYPE: dict[str, tuple[int, str, str | None]] = {
    "ValidationException": (400, "invalid_request_error", None),
    "ThrottlingException": (429, "rate_limit_error", None),
    "TooManyRequestsException": (429, "rate_limit_error", None),
    # A quota, not a malformed request: a 429 lets SDKs back off and retry.
    "ServiceQuotaExceededException": (429, "rate_limit_error", None),
    "AccessDeniedException": (403, "permission_error", None),
    # The model is not enabled for the account yet (use-case form, Marketplace subscription).
    "FTUFormNotFilled": (403, "permission_error", None),
    "MPAgreementBeingCreated": (403, "permission_error", None),
    "ResourceNotFoundException": (404, "not_found_error", None),
    "ModelNotReadyException": (529, "overloaded_error", None),
    "ServiceUnavailableException": (529, "overloaded_error", None),
    "ModelTimeoutException": (504, "timeout_error", None),
    "InternalServerException": (500, "api_error", None),
    "InternalFailure": (500, "api_error", None),
    "ModelErrorException": (500, "api_error", None),
    "ModelStreamErrorException": (500, "api_error", None),
    "RequestEntityTooLargeException": (413, "request_too_large", None),
}
# The gateway's own AWS credentials were refused: not the client's fault, and Bedrock's message for a bad
# signature quotes the canonical request, which carries the session token, so it is never passed on.
_CREDENTIAL_ERRORS = frozenset(
    {
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "IncompleteSignature",
        "InvalidClientTokenId",
        "ExpiredTokenException",
        "MissingAuthenticationTokenException",
        "RequestExpired",
        "SignatureDoesNotMatch",
    }
)
_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def anthropic_error(status: int, headers: Mapping[str, str], body: bytes) -> Translated | None:
    """Bedrock's error response (status >= 400) as (status, Anthropic-shaped body); None if already Anthropic's.

    Pure: reads only what it is given. `headers` may be any mapping (plain dicts are searched case-insensitively).
    """
    parsed = _json(body)
    if _is_anthropic(parsed):
        return None
    error_type = _error_type(headers, parsed)
    message = _message(parsed)
    if error_type in _CREDENTIAL_ERRORS or (status in (401, 403) and "signature" in message.lower()):
        return _render(502, "api_error", f"Amazon Bedrock refused the gateway's AWS credentials ({error_type}).")
    if error_type in _BY_TYPE:
        new_status, anthropic_type, fixed = _BY_TYPE[error_type]
    else:
        new_status = status if status >= 400 else 500
        anthropic_type = _BY_STATUS.get(new_status, "api_error")
        fixed = None
    text = fixed or message or f"Amazon Bedrock answered {status}{f' ({error_type})' if error_type else ''}."
    return _render(new_status, anthropic_type, text)


def _render(status: int, error_type: str, message: str) -> Translated:
    body = {"type": "error", "error": {"type": error_type, "message": message[:_MAX_MESSAGE]}}
    return Translated(status, json.dumps(body).encode())


def _json(body: bytes) -> object:
    try:
        return json.loads(body)
    except ValueError:
        return None


def _is_anthropic(parsed: object) -> bool:
    if not isinstance(parsed, dict) or parsed.get("type") != "error":
        return False
    error = parsed.get("error")
    return isinstance(error, dict) and isinstance(error.get("type"), str)


def _error_type(headers: Mapping[str, str], parsed: object) -> str:
    raw = next((value for name, value in headers.items() if name.lower() == "x-amzn-errortype"), "")
    if not raw and isinstance(parsed, dict):
        field = parsed.get("__type") or parsed.get("code")
        raw = field if isinstance(field, str) else ""
    # "ThrottlingException:http://internal..." or "com.amazon.coral.service#ThrottlingException"
    return raw.split(":", 1)[0].rsplit("#", 1)[-1].strip()


def _message(parsed: object) -> str:
    if isinstance(parsed, dict):
        for key in ("message", "Message"):
            if isinstance(parsed.get(key), str):
                return str(parsed[key])
    return ""
