"""JSON over HTTPS with the standard library: the few calls to an identity provider (and, from the developer's
CLI, to the gateway), none of them on the pass-through's hot path.

Blocking (the gateway runs these in a worker thread, oidc.py). Bounded: `timeout` seconds per socket operation, at
most MAX_BYTES read. No redirects (an identity provider's endpoints answer where discovery says they are; a
redirect would turn a POST of a code or a token into something else), no cookies, proxies as the environment says
(a developer behind a corporate proxy).
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

MAX_BYTES = 1024 * 1024  # discovery documents and key sets are a few KB


class HttpError(Exception):
    """The server could not be reached, or answered something that is not a JSON object."""


@dataclass(frozen=True)
class JsonAnswer:
    status: int
    body: dict[str, Any]


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # the 3xx is then answered as it is (an error status)


def opener(context: ssl.SSLContext | None = None) -> urllib.request.OpenerDirector:
    """An opener without redirects; `context` verifies servers (default: the system's CAs)."""
    return urllib.request.build_opener(_NoRedirects(), urllib.request.HTTPSHandler(context=context))


def request(
    opener: urllib.request.OpenerDirector,
    url: str,
    *,
    form: dict[str, str] | None = None,
    json_body: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    timeout: float,
) -> JsonAnswer:
    """GET `url`, or POST `form` (urlencoded) or `json_body`; the answer's status and JSON object, whatever the
    status (OAuth errors are JSON objects with a 4xx). HttpError when there is no such answer."""
    data = None
    sent = {"accept": "application/json", **(headers or {})}
    if form is not None:
        data = urlencode(form).encode()
        sent["content-type"] = "application/x-www-form-urlencoded"
    elif json_body is not None:
        data = json.dumps(json_body).encode()
        sent["content-type"] = "application/json"
    http_request = urllib.request.Request(url, data=data, headers=sent, method="POST" if data is not None else "GET")
    try:
        with opener.open(http_request, timeout=timeout) as response:
            status, raw = response.status, response.read(MAX_BYTES + 1)
    except urllib.error.HTTPError as exc:
        with exc:
            status, raw = exc.code, exc.read(MAX_BYTES + 1)
    except (OSError, ValueError) as exc:  # URLError, timeouts and resets are OSErrors; ValueError: a bad URL
        raise HttpError(f"{type(exc).__name__}: {exc}"[:300]) from None
    if len(raw) > MAX_BYTES:
        raise HttpError(f"answer larger than {MAX_BYTES} bytes (HTTP {status})")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise HttpError(f"HTTP {status}, not JSON") from None
    if not isinstance(body, dict):
        raise HttpError(f"HTTP {status}, not a JSON object")
    return JsonAnswer(status, body)
