"""Which front door a request came through and who sent it, for the access log and for links back to the gateway.

One app, four ways in:
  - the Function URL and the REST API streaming door reach uvicorn through the Lambda Web Adapter, which puts the
    Lambda event's request context in an `x-amzn-request-context` header (JSON; it replaces any header of that name
    a client sent). A Function URL's context has the HTTP API 2.0 payload's shape (`http.sourceIp`); a REST API's
    the 1.0 shape (`identity.sourceIp`, and `path` as the client asked for it, the stage included);
  - the buffered door runs the app through Mangum, which puts the API Gateway HTTP API event itself in the scope;
  - `make dev`, tests and benchmarks: uvicorn alone, where the client is the TCP peer (or what a proxy on this
    machine says it is, through uvicorn's proxy headers).
The header is believed only on a connection that arrived on a loopback address: behind the adapter uvicorn listens on
127.0.0.1 alone (functions/proxy/run.sh), and a client reaching `make dev` from another machine cannot name itself.

Capturing is cheap and happens as a request arrives (`Arrival.of`); the JSON is read only when the access line is
written, after the response. So is Claude Code's `x-claude-code-session-id` (`client_session`), which attributes
a developer's requests to the session they came from.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

Door = Literal["function_url", "rest_api", "http_api", "direct"]
CONTEXT_HEADER = b"x-amzn-request-context"
SESSION_HEADER = b"x-claude-code-session-id"  # Claude Code sends it on every request of a session
_SESSION = re.compile(rb"[\x20-\x7e]+")  # printable ASCII: the value is the client's, and goes into the logs
_LONGEST_SESSION = 128  # bytes kept of it (Claude Code's are UUIDs, 36)
_LONGEST = 256  # characters kept of any one value from a context (an IP address, a request id, a path)
_PREFIX = re.compile(r"(/[A-Za-z0-9._~-]+)*")  # plain path segments only: it goes into links the gateway hands out


@dataclass(frozen=True, slots=True)
class FrontDoor:
    door: Door
    client_ip: str | None
    edge_request_id: str | None  # the id the Function URL or API Gateway gave the request (in their own logs)
    path_prefix: str = ""  # what the public URL has before the app's path: a REST API's stage ("/gateway")


@dataclass(frozen=True, slots=True)
class Arrival:
    """What a request's ASGI scope says about where it came from, as it arrived."""

    peer: str | None  # scope["client"]: the TCP peer, or what uvicorn's proxy headers made of it
    context: bytes | None  # the adapter's request context, from a loopback connection only
    event: Mapping[str, Any] | None  # the API Gateway event, under Mangum
    path: str  # the path the app serves, which a REST API context's path ends with
    session: bytes | None = None  # x-claude-code-session-id as sent (the first one)

    @classmethod
    def of(cls, scope: Mapping[str, Any]) -> Arrival:
        client = scope.get("client")
        event = scope.get("aws.event")
        context = session = None
        loopback = _is_loopback(scope.get("server"))
        for name, value in scope.get("headers", ()):  # one pass: the first of each counts
            if name == SESSION_HEADER and session is None:
                session = value
            elif name == CONTEXT_HEADER and loopback and context is None:
                context = value
        return cls(
            peer=str(client[0]) if client else None,
            context=context,
            event=event if isinstance(event, Mapping) else None,
            path=str(scope.get("path", "")),
            session=session,
        )

    def client_session(self) -> str | None:
        """The client's Claude Code session id for the access log: its first 128 bytes when they are printable
        ASCII, else None (a client-controlled value never brings control characters or bulk into the logs)."""
        value = self.session.strip()[:_LONGEST_SESSION] if self.session else b""
        return value.decode("ascii") if _SESSION.fullmatch(value) else None

    def front_door(self) -> FrontDoor:
        if self.event is not None:
            context = self.event.get("requestContext")
            if isinstance(context, dict) and isinstance(context.get("http"), dict):
                return _from_http_api_context("http_api", context)
        elif self.context is not None:
            try:
                context = json.loads(self.context)
            except ValueError:
                context = None
            if isinstance(context, dict) and isinstance(context.get("identity"), dict):
                return self._from_rest_api_context(context)
            if isinstance(context, dict) and isinstance(context.get("http"), dict):
                domain = _text(context.get("domainName")) or ""
                return _from_http_api_context("function_url" if ".lambda-url." in domain else "http_api", context)
        return FrontDoor("direct", self.peer, None)

    def _from_rest_api_context(self, context: dict[str, Any]) -> FrontDoor:
        public_path = _text(context.get("path")) or ""
        prefix = public_path.removesuffix(self.path) if self.path and public_path.endswith(self.path) else ""
        prefix = prefix if _PREFIX.fullmatch(prefix) else ""
        return FrontDoor(
            "rest_api", _text(context["identity"].get("sourceIp")), _text(context.get("requestId")), prefix
        )


def _from_http_api_context(door: Door, context: dict[str, Any]) -> FrontDoor:
    """A Function URL's or an HTTP API's context (the 2.0 payload shape)."""
    return FrontDoor(door, _text(context["http"].get("sourceIp")), _text(context.get("requestId")))


def _text(value: object) -> str | None:
    return value[:_LONGEST] if isinstance(value, str) and value else None


def _is_loopback(server: object) -> bool:
    if not isinstance(server, (tuple, list)) or not server:
        return False
    host = str(server[0])
    return host.startswith("127.") or host == "::1"
