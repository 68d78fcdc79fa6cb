"""Polling, for the few facts a test cannot await: another process starting up, another instance's cache expiring.

What the gateway in this process still has to do after a response (accounting) is awaited instead, with
`ThreadedUvicorn.drain()`.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def eventually[T](probe: Callable[[], T | None], *, timeout: float = 15.0, interval: float = 0.02, what: str = "") -> T:
    """probe()'s first truthy result, trying every `interval` seconds; AssertionError after `timeout` seconds.

    A probe may raise to give up early (a child process that exited will never answer).
    """
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout} s: {what or probe} (last: {result!r})")
        time.sleep(interval)
