"""The pass-through's HTTP/1.1 client: our asyncio connections and pool, httptools' llhttp for the framing.

It is the gateway's only HTTP client (Anthropic and Bedrock): the request goes out in one send and the response
streams back with no buffering, on connections reused only after an exchange that ended cleanly (connection.py).
httpx is not in the layer; the key CLI (on a workstation) and the tests use it.
"""

from __future__ import annotations

from .errors import (
    ConnectError,
    ConnectTimeout,
    PoolTimeout,
    ReadTimeout,
    RemoteProtocolError,
    UpstreamError,
    UpstreamTimeout,
    WriteTimeout,
)
from .pool import UpstreamPool, UpstreamResponse

__all__ = [
    "ConnectError",
    "ConnectTimeout",
    "PoolTimeout",
    "ReadTimeout",
    "RemoteProtocolError",
    "UpstreamError",
    "UpstreamPool",
    "UpstreamResponse",
    "UpstreamTimeout",
    "WriteTimeout",
]
