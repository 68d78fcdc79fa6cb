"""Bounded AWS calls: one botocore config for every client, and a deadline per request for the AWS work in it.

boto3's defaults (60 s read timeout, legacy retries with up to 5 attempts) turn a DynamoDB or Secrets Manager
stall into a minute-long hang that holds a worker thread the whole time. Here:
  - every client gets `config()`: short connect and read timeouts, standard retry mode, few attempts, so one
    blocking call is bounded by about attempts x (connect + read) seconds;
  - `call` runs a blocking AWS function in a worker thread under a limiter of its own (AWS work cannot take every
    thread of anyio's default pool of 40), and stops waiting at the request's deadline (`AWS_DEADLINE` seconds
    after the request's first AWS call). The caller answers 503; the thread finishes within its own bound, and
    `Unavailable.late` is the still-running work, for whoever must see what it did (governance releases what a
    late admission took).
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from collections.abc import Callable, Hashable
from contextvars import ContextVar
from functools import lru_cache
from typing import TYPE_CHECKING, Any, cast

import anyio
import anyio.to_thread
from botocore.exceptions import BotoCoreError, ClientError

from .settings import get_settings

if TYPE_CHECKING:
    from botocore.config import Config

_deadline: ContextVar[float | None] = ContextVar("aws_deadline", default=None)
_limiters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, anyio.CapacityLimiter] = weakref.WeakKeyDictionary()
_late: set[asyncio.Future[Any]] = set()  # abandoned calls, kept alive until they end
# Reads in flight by key, per event loop (call_shared).
_in_flight: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Hashable, asyncio.Future[Any]]] = (
    weakref.WeakKeyDictionary()
)


# boto3's default session is not thread-safe: clients and resources are created under this lock, since on a cold
# instance the first requests' worker threads may all want one at the same moment.
boto3_lock = threading.Lock()

_failed_at: float | None = None
# After a failure, reads that have a stale value to serve skip AWS for this long instead of each waiting out the
# deadline again; the next request after it tries again, so recovery is noticed within a second.
_FAILURE_MEMORY_SECONDS = 1.0


_on_recovery: list[Callable[[], None]] = []


def note_failure() -> None:
    global _failed_at
    _failed_at = time.monotonic()


def on_recovery(callback: Callable[[], None]) -> None:
    """Run `callback` on the event loop when an AWS call succeeds after a failure (the ledger flushes then)."""
    _on_recovery.append(callback)


def _note_success() -> None:
    global _failed_at
    if _failed_at is not None:
        _failed_at = None
        for callback in _on_recovery:
            callback()


def recently_failed() -> bool:
    return _failed_at is not None and time.monotonic() - _failed_at < _FAILURE_MEMORY_SECONDS


class Unavailable(Exception):
    """AWS did not answer within the request's deadline. `late`: the call, still running in its thread."""

    def __init__(self, late: asyncio.Future[Any] | None) -> None:
        super().__init__("AWS did not answer in time")
        self.late = late


@lru_cache(maxsize=1)
def config() -> Config:
    """The botocore config of every client the gateway creates (DynamoDB, Secrets Manager)."""
    from botocore.config import Config

    settings = get_settings()
    return Config(
        connect_timeout=settings.aws_connect_timeout,
        read_timeout=settings.aws_read_timeout,
        retries={"mode": "standard", "total_max_attempts": settings.aws_max_attempts},
        tcp_keepalive=True,
    )


def limiter() -> anyio.CapacityLimiter:
    """The worker threads AWS calls may use at once, per event loop (tests run several loops; Lambda one)."""
    loop = asyncio.get_running_loop()
    found = _limiters.get(loop)
    if found is None:
        found = _limiters[loop] = anyio.CapacityLimiter(get_settings().aws_threads)
    return found


async def call[T](function: Callable[..., T], *args: Any) -> T:
    """`function(*args)` in a worker thread, waited for until the request's deadline (Unavailable after it).

    The deadline starts at the request's first call: each request runs in a task of its own, so the ContextVar
    is the request's. Errors of `function` are raised as they are.
    """
    deadline = _request_deadline()
    return await _wait(asyncio.ensure_future(anyio.to_thread.run_sync(function, *args, limiter=limiter())), deadline)


async def call_shared[T](key: Hashable, function: Callable[[], T]) -> T:
    """`call(function)` for a read, shared: callers asking for the same `key` while its call runs wait for that
    one call (each until its own deadline) instead of making their own. A burst of requests on a cold instance
    then reads a secret or a key record once, not once per request, and no request waits behind the others'
    copies of the same read."""
    deadline = _request_deadline()
    loop = asyncio.get_running_loop()
    in_flight = _in_flight.setdefault(loop, {})
    work = in_flight.get(key)
    if work is None:
        work = in_flight[key] = asyncio.ensure_future(anyio.to_thread.run_sync(function, limiter=limiter()))
        work.add_done_callback(lambda done: in_flight.pop(key, None) if in_flight.get(key) is done else None)
    return cast("T", await _wait(work, deadline))


def _request_deadline() -> float:
    now = time.monotonic()
    deadline = _deadline.get()
    if deadline is None:
        deadline = now + get_settings().aws_deadline
        _deadline.set(deadline)
    if deadline <= now:
        raise Unavailable(None)
    return deadline


async def _wait[T](work: asyncio.Future[T], deadline: float) -> T:
    try:
        result = await asyncio.wait_for(asyncio.shield(work), deadline - time.monotonic())
    except (BotoCoreError, ClientError):
        note_failure()
        raise
    except TimeoutError:
        note_failure()
        _late.add(work)
        work.add_done_callback(_late.discard)
        work.add_done_callback(_retrieve)
        raise Unavailable(work) from None
    _note_success()
    return result


async def run[T](function: Callable[..., T], *args: Any) -> T:
    """`function(*args)` in a worker thread under the AWS limiter, without a deadline: after-response work,
    bounded by the client config alone."""
    return await anyio.to_thread.run_sync(function, *args, limiter=limiter())


def _retrieve(work: asyncio.Future[Any]) -> None:
    if not work.cancelled():
        work.exception()  # an abandoned call's error is not news: the request already answered 503
