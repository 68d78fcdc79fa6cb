"""What can go wrong talking to the upstream: timeouts (the proxy answers 504) and transport failures (502)."""

from __future__ import annotations


class UpstreamError(Exception):
    """Any failure of the upstream HTTP client; never raised itself."""


class UpstreamTimeout(UpstreamError):
    """A bounded wait ran out. Deliberately not the builtin TimeoutError: that one is an OSError, and a relay's
    `except OSError` (the client went away) must not swallow an upstream timeout."""


class ConnectTimeout(UpstreamTimeout):
    """TCP connect plus TLS handshake took longer than the connect timeout."""


class ReadTimeout(UpstreamTimeout):
    """No byte of the response arrived within the read timeout (measured between bytes, not in total)."""


class WriteTimeout(UpstreamTimeout):
    """The request could not be handed to the kernel within the write timeout (the upstream stopped reading)."""


class PoolTimeout(UpstreamTimeout):
    """Every connection of the pool stayed busy for the whole pool timeout."""


class ConnectError(UpstreamError):
    """No connection: name resolution, refusal, unreachable host or a TLS handshake/verification failure."""


class RemoteProtocolError(UpstreamError):
    """The upstream broke HTTP/1.1: a malformed response, or the connection closed or reset before it ended."""
