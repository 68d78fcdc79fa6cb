"""The pass-through's HTTP/1.1 client: our asyncio connections and pool, httptools' llhttp for the framing.

httpx stays for everything else (tests, CLI, admin calls); this is the hot path only, where the request goes out
in one send and the response streams back with no buffering.
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
