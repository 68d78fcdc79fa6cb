"""Bounded AWS calls: the same bounds for every client, and a deadline per request for the AWS work in it.

botocore's defaults (60 s read timeout, legacy retries with up to 5 attempts) turn a DynamoDB or Secrets Manager
stall into a minute-long hang that holds a worker thread the whole time. Here:
  - every client (`client`) gets short connect and read timeouts and few attempts, retried as botocore's standard
    mode retries, so one blocking call is bounded by about attempts x (connect + read) seconds;
  - `call` runs a blocking AWS function in a worker thread under a limiter of its own (AWS work cannot take every
    thread of anyio's default pool of 40), and stops waiting at the request's deadline (`AWS_DEADLINE` seconds
    after the request's first AWS call). The caller answers 503; the thread finishes within its own bound, and
    `Unavailable.late` is the still-running work, for whoever must see what it did (governance releases what a
    late admission took).

`AwsCalls` holds that state for one runtime (runtime.py), which hands it to whoever makes AWS calls, and makes its
clients: the gateway's own (aws_client.py) where the AWS set-up is what Lambda provides, botocore's elsewhere.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Hashable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, cast

import anyio
import anyio.to_thread
from botocore.exceptions import BotoCoreError, ClientError

from . import aws_client
from .settings import Settings

if TYPE_CHECKING:
    from botocore.config import Config
    from botocore.session import Session

# A request's budget of time for its AWS work: per request, not per process (each request runs in a task of its
# own, and the tasks it starts inherit its deadline), so it stays a ContextVar while the rest is the runtime's.
_deadline: ContextVar[float | None] = ContextVar("aws_deadline", default=None)

# After a failure, reads that have a stale value to serve skip AWS for this long instead of each waiting out the
# deadline again; the next request after it tries again, so recovery is noticed within a second.
_FAILURE_MEMORY_SECONDS = 1.0


class Unavailable(Exception):
    """AWS did not answer within the request's deadline. `late`: the call, still running in its thread."""

    def __init__(self, late: asyncio.Future[Any] | None) -> None:
        super().__init__("AWS did not answer in time")
        self.late = late


# DynamoDB's and Secrets Manager's answers that mean "not now" rather than "never" (besides a 5xx and any
# throttling code).
_TRANSIENT_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "TransactionConflictException",
        "TransactionInProgressException",
        "LimitExceededException",
    }
)


def transient(exc: Exception) -> bool:
    """An AWS call that failed for now, not for what it asked: no answer in time, no connection, throttled, a
    conflict with another write, AWS's own error. The same call may succeed if made again."""
    if isinstance(exc, BotoCoreError | Unavailable):
        return True
    if not isinstance(exc, ClientError):
        return False
    code = exc.response.get("Error", {}).get("Code", "")
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return "Throttl" in code or code in _TRANSIENT_CODES or (isinstance(status, int) and status >= 500)


class AwsCalls:
    """The AWS side of one runtime: its client config, the worker threads AWS calls may use at once
    (`AWS_THREADS`), the reads in flight (shared by callers asking for the same thing), calls abandoned at a
    deadline, and the moment AWS last failed. One event loop's: a runtime belongs to one app and loop.

    Its clients (Secrets Manager's, and DynamoDB's under the table handle, storage/table.py) share one source of
    credentials: on Lambda the gateway's own clients (aws_client.py: botocore's import and set-up were a third of
    the streaming door's start), elsewhere (a profile, SSO, a proxy) botocore's, from one botocore session of its
    own, not boto3's (boto3's import and its resource layer were a tenth of that start).
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._limiter = anyio.CapacityLimiter(settings.aws_threads)
        self._in_flight: dict[Hashable, asyncio.Future[Any]] = {}
        self._late: set[asyncio.Future[Any]] = set()  # abandoned calls, kept alive until they end
        self._failed_at: float | None = None
        self._on_recovery: list[Callable[[], None]] = []
        self._config: Config | None = None
        self._credentials: aws_client.CredentialSource | None = None
        self._session: Session | None = None
        self._session_lock = threading.Lock()  # a botocore session is not thread-safe: clients are made under it

    @property
    def config(self) -> Config:
        """The botocore config of the botocore clients the gateway creates (DynamoDB, Secrets Manager)."""
        if self._config is None:
            self._config = client_config(self._settings)
        return self._config

    def client(self, service: str) -> Any:
        """Blocking (call it in a worker thread): a new client of `service` ("dynamodb" or "secretsmanager"), with
        the AWS_CONNECT_TIMEOUT, AWS_READ_TIMEOUT and AWS_MAX_ATTEMPTS bounds: the gateway's own where it can serve
        the process's AWS set-up (`aws_client.usable`), else (or with AWS_CLIENT=botocore) botocore's."""
        settings = self._settings
        if settings.aws_client == "gateway" and aws_client.usable(os.environ, settings.aws_region):
            with self._session_lock:
                if self._credentials is None:
                    self._credentials = aws_client.credentials_from_environment(os.environ)
                credentials = self._credentials
            if credentials is not None:
                spec = aws_client.SERVICES[service]
                return aws_client.JsonClient(
                    spec,
                    region=settings.aws_region,
                    credentials=credentials,
                    endpoint=aws_client.endpoint_url(spec, settings.aws_region, os.environ),
                    connect_timeout=settings.aws_connect_timeout,
                    read_timeout=settings.aws_read_timeout,
                    attempts=settings.aws_max_attempts,
                    max_pool=settings.aws_threads,
                )
        with self._session_lock:
            if self._session is None:
                import botocore.session  # deferred: a process that never calls AWS does not pay for it

                self._session = botocore.session.get_session()
                self._session.register_component("data_loader", _shared_loader(self._session))
            return self._session.create_client(service, config=self.config)

    def forget_session(self) -> None:
        """Drop the credentials (and botocore's session): the next client resolves them again (SnapStart: a restored
        environment gets credentials of its own). Clients made so far keep working for whoever holds them; their
        owners close and drop them too."""
        with self._session_lock:
            self._credentials = None
            self._session = None

    def on_recovery(self, callback: Callable[[], None]) -> None:
        """Run `callback` on the event loop when an AWS call succeeds after a failure."""
        self._on_recovery.append(callback)

    def note_failure(self) -> None:
        self._failed_at = time.monotonic()

    def forget_failures(self) -> None:
        """Forget the last failure (a restored snapshot's monotonic clock cannot say how long ago it was)."""
        self._failed_at = None

    def recently_failed(self) -> bool:
        return self._failed_at is not None and time.monotonic() - self._failed_at < _FAILURE_MEMORY_SECONDS

    def _note_success(self) -> None:
        if self._failed_at is not None:
            self._failed_at = None
            for callback in self._on_recovery:
                callback()

    async def call[T](self, function: Callable[..., T], *args: Any) -> T:
        """`function(*args)` in a worker thread, waited for until the request's deadline (Unavailable after it).

        The deadline starts at the request's first call: each request runs in a task of its own, so the ContextVar
        is the request's. Errors of `function` are raised as they are.
        """
        deadline = self._request_deadline()
        work = asyncio.ensure_future(anyio.to_thread.run_sync(function, *args, limiter=self._limiter))
        return await self._wait(work, deadline)

    async def call_shared[T](self, key: Hashable, function: Callable[[], T]) -> T:
        """`call(function)` for a read, shared: callers asking for the same `key` while its call runs wait for
        that one call (each until its own deadline) instead of making their own. A burst of requests on a cold
        instance then reads a secret or a key record once, not once per request, and no request waits behind the
        others' copies of the same read."""
        deadline = self._request_deadline()
        in_flight = self._in_flight
        work = in_flight.get(key)
        if work is None:
            work = in_flight[key] = asyncio.ensure_future(anyio.to_thread.run_sync(function, limiter=self._limiter))
            work.add_done_callback(lambda done: in_flight.pop(key, None) if in_flight.get(key) is done else None)
        return cast("T", await self._wait(work, deadline))

    async def run[T](self, function: Callable[..., T], *args: Any) -> T:
        """`function(*args)` in a worker thread under the AWS limiter, without a deadline: after-response work,
        bounded by the client config alone."""
        return await anyio.to_thread.run_sync(function, *args, limiter=self._limiter)

    def _request_deadline(self) -> float:
        now = time.monotonic()
        deadline = _deadline.get()
        if deadline is None:
            deadline = now + self._settings.aws_deadline
            _deadline.set(deadline)
        if deadline <= now:
            raise Unavailable(None)
        return deadline

    async def _wait[T](self, work: asyncio.Future[T], deadline: float) -> T:
        try:
            result = await asyncio.wait_for(asyncio.shield(work), deadline - time.monotonic())
        except (BotoCoreError, ClientError):
            self.note_failure()
            raise
        except TimeoutError:
            self.note_failure()
            self._late.add(work)
            work.add_done_callback(self._late.discard)
            work.add_done_callback(_retrieve)
            raise Unavailable(work) from None
        self._note_success()
        return result


def _retrieve(work: asyncio.Future[Any]) -> None:
    if not work.cancelled():
        work.exception()  # an abandoned call's error is not news: the request already answered 503


_loader: Any = None
_loader_lock = threading.Lock()


def _shared_loader(session: Session) -> Any:
    """The one botocore data loader of the process: the service models and endpoint data it reads from botocore's
    files and caches never change, so every session shares them (about 10 MB and 35 ms each otherwise; a session
    made after a SnapStart restore finds them in the snapshot). Credentials stay each session's own."""
    global _loader
    with _loader_lock:
        if _loader is None:
            _loader = session.get_component("data_loader")
        return _loader


def client_config(settings: Settings) -> Config:
    """The botocore config of every client the gateway creates: short timeouts, standard retries, few attempts."""
    from botocore.config import Config  # deferred: botocore's client machinery is a third of a cold start

    return Config(
        connect_timeout=settings.aws_connect_timeout,
        read_timeout=settings.aws_read_timeout,
        retries={"mode": "standard", "total_max_attempts": settings.aws_max_attempts},
        tcp_keepalive=True,
    )
