"""The app both doors serve: uvicorn behind the Lambda Web Adapter, and Mangum behind API Gateway.

A plain ASGI app (`GatewayApp`) owns the lifespan, which builds the gateway's `Runtime` (runtime.py), and serves
itself what must stay lean: `/anthropic/*` (the pass-through), `/health` (the adapter's readiness check), the base
URL (`/anthropic`, Claude Code's preconnect) and the SnapStart hooks. Everything else (/key/*, /spend/*, /ui) is the
admin app (admin.py: FastAPI), imported on its first request: FastAPI and pydantic were half the cold start of a
process that may never serve an admin request (issue 21), and their router costs a tenth of a pass-through's time
for nothing it uses (issue 11).

A pass-through request reads top to bottom: authenticate -> read and check the body -> forward -> stream ->
account (after the last byte: the response that ends the request calls the runtime's
`accounting.after_response`, see responses.py).
"""

from __future__ import annotations

import asyncio
import gc
import traceback
from collections.abc import Awaitable
from typing import IO

from aws_lambda_powertools import Logger
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import forwarding, governance, request_body, routing, tags
from .auth import authenticate
from .batches import admit as admit_batch
from .errors import GatewayError, error_response, render
from .exchange import Exchange
from .front_door import Arrival
from .responses import BufferedResponse, DisconnectWatch, ExchangeResponse, RelayResponse
from .runtime import Runtime
from .settings import Settings, get_settings

logger = Logger(child=True)
_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
_PASS_THROUGH = forwarding.PREFIX + "/"
_BASE_URLS = frozenset({forwarding.PREFIX, forwarding.PREFIX + "/"})

# SnapStart hooks: the Lambda Web Adapter POSTs to these (AWS_LWA_SNAPSTART_BEFORE_CHECKPOINT_PATH and
# AWS_LWA_SNAPSTART_AFTER_RESTORE_PATH in template.yaml name them) before Lambda snapshots the environment and
# after it restores one. Nobody else may: see `_from_the_adapter`.
BEFORE_CHECKPOINT_PATH = "/_gateway/snapstart/before-checkpoint"
AFTER_RESTORE_PATH = "/_gateway/snapstart/after-restore"
# Every request the adapter forwards carries these two (it sets them, whatever the client sent); the hook calls it
# makes on its own carry neither.
_FORWARDED_BY_THE_ADAPTER = frozenset({b"x-amzn-request-context", b"x-amzn-lambda-context"})

_OK_BODY = b'{"status":"ok"}'
_OK_HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(_OK_BODY)).encode())]


class GatewayApp:
    """The gateway's ASGI app. Its lifespan (or `start`/`stop`, for a door without one) builds and closes its
    `Runtime`; a request before `start` is a bug of the door and fails.

    settings: the gateway's settings (default: read from the environment at start); stream: where EMF blobs and
    log lines go (default: stdout).
    """

    PASS_THROUGH_PATH = forwarding.PREFIX + "/{path:path}"
    # What it serves itself, besides the admin app's routes, that template.yaml's API routes reach (the base URL
    # `/anthropic` too: clients probe it; the SnapStart hooks are for nobody outside, so not these).
    OWN_PATHS = ("/health", forwarding.PREFIX, PASS_THROUGH_PATH)

    def __init__(self, settings: Settings | None = None, stream: IO[str] | None = None) -> None:
        self._settings, self._stream = settings, stream
        self.runtime: Runtime | None = None
        self._admin: ASGIApp | None = None
        self._admin_loading: asyncio.Future[ASGIApp] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        runtime = self.runtime
        if runtime is None:
            raise RuntimeError("the gateway app was not started: run its lifespan, or await GatewayApp.start()")
        if scope["type"] == "http":
            path, method = scope["path"], scope["method"]
            if path in _BASE_URLS and method in ("GET", "HEAD"):
                # Claude Code's best-effort preconnect to its base URL: answered here, no key, no upstream call.
                await _ok(send, head_only=method == "HEAD")
                return
            if path.startswith(_PASS_THROUGH) and method in _METHODS:
                response = await anthropic_passthrough(runtime, Request(scope, receive))
                await response(scope, receive, send)
                return
            if path == "/health":  # the Lambda Web Adapter's readiness check
                await (_ok(send) if method == "GET" else _refuse(scope, send, 405, "Method Not Allowed"))
                return
            if path in (BEFORE_CHECKPOINT_PATH, AFTER_RESTORE_PATH):
                await self._snapstart_hook(runtime, scope, send)
                return
        await self._admin_app(runtime, scope, receive, send)

    # -- lifecycle ------------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Build the runtime (a setting that cannot work raises here, failing readiness instead of every request),
        then warm it up: AWS clients made and secrets read before the first request (bounded: runtime.py). Then
        the garbage collector goes on, if the door started Python without it (functions/proxy/run.sh)."""
        runtime = Runtime(self._settings or get_settings(), self._stream)
        await runtime.start()
        self.runtime = runtime
        self._admin = self._admin_loading = None  # the admin app serves with the runtime it was built with
        if not gc.isenabled():
            # The streaming door starts Python with the cyclic garbage collector off (run.sh): its passes over the
            # objects that imports and AWS clients make cost a tenth of the start. They live as long as the
            # process, so they are frozen out of its reach before it is turned on.
            gc.freeze()
            gc.enable()

    async def drain(self) -> None:
        """Finish the after-response work of every request served so far (see `Runtime.drain`)."""
        if self.runtime is not None:
            await self.runtime.drain()

    async def stop(self) -> None:
        """Drain and close the runtime (uvicorn's shutdown, after open streams had their grace period)."""
        if self.runtime is not None:
            await self.runtime.close()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.start()
                except Exception:
                    await send({"type": "lifespan.startup.failed", "message": traceback.format_exc()})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    await self.stop()
                except Exception:
                    await send({"type": "lifespan.shutdown.failed", "message": traceback.format_exc()})
                    return
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- what is not the pass-through ----------------------------------------------------------------------------

    async def _admin_app(self, runtime: Runtime, scope: Scope, receive: Receive, send: Send) -> None:
        """The admin app, imported on the first request that needs it, once however many arrive together: in a
        worker thread, so streams in flight on this loop are not held up by the import. It serves with `runtime`
        (its routes reach it through the admin app's state)."""
        admin = self._admin
        if admin is None:
            loading = self._admin_loading
            if loading is None:
                loading = self._admin_loading = asyncio.ensure_future(asyncio.to_thread(_load_admin, runtime))
            try:
                admin = self._admin = await asyncio.shield(loading)
            except Exception:
                if self._admin_loading is loading:
                    self._admin_loading = None  # the next request tries again
                logger.exception("the admin app failed to load")
                await error_response(500, "Internal gateway error.")(scope, receive, send)
                return
        answered = False

        async def send_answer(message: Message) -> None:
            nonlocal answered
            await send(message)
            answered = message["type"] == "http.response.body" and not message.get("more_body", False)

        try:
            await admin(scope, receive, send_answer)
        except Exception:
            if not answered:
                raise
            # Starlette re-raises an error its handler has already answered and logged (admin.py `_unexpected`: a
            # 503 for a storage outage, a 500 for a bug). Raised on, it would make uvicorn close the connection
            # under a client that goes on to send its next request there (a reset instead of an answer).

    async def _snapstart_hook(self, runtime: Runtime, scope: Scope, send: Send) -> None:
        if scope["method"] != "POST" or not _from_the_adapter(scope):
            await _refuse(scope, send, 404, "Not found.")  # to anyone else, these paths do not exist
            return
        if scope["path"] == BEFORE_CHECKPOINT_PATH:
            await runtime.before_checkpoint()
        else:
            await runtime.after_restore()
        logger.info("SnapStart hook done", extra={"hook": scope["path"]})
        await _ok(send)


def _load_admin(runtime: Runtime) -> ASGIApp:
    from . import admin

    return admin.build(runtime)


def _from_the_adapter(scope: Scope) -> bool:
    """Whether a request is the Lambda Web Adapter's own call: over loopback, and none of the headers it adds to
    every request it forwards. A client's request through the Function URL or API Gateway is forwarded with them
    (or, through Mangum, does not come from loopback)."""
    client = scope.get("client")
    host = client[0] if client else ""
    loopback = host == "::1" or host.startswith(("127.", "::ffff:127."))
    return loopback and not any(name.lower() in _FORWARDED_BY_THE_ADAPTER for name, _ in scope["headers"])


async def _ok(send: Send, head_only: bool = False) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": _OK_HEADERS})
    await send({"type": "http.response.body", "body": b"" if head_only else _OK_BODY})


async def _refuse(scope: Scope, send: Send, status: int, message: str) -> None:
    """An error in Anthropic's shape, as the admin app answers a path or method it does not serve."""

    async def unread() -> dict[str, object]:  # the response never reads the request
        return {"type": "http.request", "body": b""}

    headers = {"allow": "GET"} if status == 405 else None
    await error_response(status, message, headers=headers)(scope, unread, send)


# -- the pass-through -----------------------------------------------------------------------------------------------


async def anthropic_passthrough(runtime: Runtime, request: Request) -> ExchangeResponse:
    exchange = Exchange(method=request.method, arrival=Arrival.of(request.scope))
    response: ExchangeResponse | None = None
    body: request_body.RequestBody | None = None
    try:
        try:
            exchange.principal = await authenticate(runtime, request.headers)
            exchange.path = forwarding.canonical_path(request.scope)  # the one path every check reads and sent
            body = await request_body.read(request, runtime.settings.max_request_bytes)  # litellm_metadata cut out
            exchange.tags = tags.resolve(body.litellm_metadata, request.headers, exchange.principal)
            if exchange.tags:  # refreshes the registered tags, if due, while the request runs (metrics.py reads them)
                runtime.tag_registry.snapshot()
            # Models, budget, rate limits; the holds go on exchange.admission.
            await governance.admit(runtime, exchange, body)
            # A batch create reserves its whole estimate (402 when it cannot); any request may start a batch sweep.
            await admit_batch(runtime, exchange, body.raw)
            # Anthropic, Amazon Bedrock, or one then the other (failover): routing.py
            response = await _until_disconnect(request, routing.forward(runtime.upstreams, request, body, exchange))
        except GatewayError as exc:
            exchange.refused(exc.status)
            response = _error(exchange, exc)
        except _ClientGone:  # nobody reads this answer; it is what the access log shows (nginx's 499)
            exchange.client_left()
            response = _error(exchange, GatewayError(499, "The client closed the request."))
        except Exception:  # a bug or an unforeseen failure: still an Anthropic-shaped answer, still accounted
            logger.exception("pass-through failed", extra={"request_id": exchange.request_id})
            failure = GatewayError(502, "Upstream or gateway error; the request was not completed.")
            exchange.refused(failure.status)
            response = _error(exchange, failure)
    finally:
        # The checks and routing are done reading the body: the model it names, as they read it, is known now.
        exchange.model = body.model if body else None
        if response is None:
            # Cancelled before any response existed: account here all the same, so the holds admission took are
            # released.
            exchange.cancelled()
            runtime.accounting.after_response(exchange)
    # Called by the response once it has ended, however it ended: every pass-through request is accounted once.
    response.after_response = runtime.accounting.after_response
    return response


def _error(exchange: Exchange, exc: GatewayError) -> ExchangeResponse:
    error = render(exc)
    headers = error.raw_headers
    if exchange.upstream:  # the upstream could not be reached, or cannot serve this request (a Bedrock-only key)
        headers = [*headers, (forwarding.UPSTREAM_HEADER, exchange.upstream.encode())]
    return BufferedResponse(exchange, bytes(error.body), error.status_code, headers)


class _ClientGone(Exception):
    """The client disconnected before the upstream's answer began."""


async def _until_disconnect(request: Request, forwarding_call: Awaitable[ExchangeResponse]) -> ExchangeResponse:
    """Await the upstream's answer, but give up (cancel) as soon as the client disconnects: nobody would read it,
    and the request's holds are released at once rather than when the upstream gets round to answering. A relayed
    answer keeps the same watch until its last byte."""
    task = asyncio.current_task()
    assert task is not None  # an ASGI app always runs in a task
    watch = DisconnectWatch(request.receive, task)
    try:
        response = await forwarding_call
    except asyncio.CancelledError:
        if not watch.fired:
            watch.stop()
            raise  # cancelled by someone else (server shutdown): not ours to swallow
        task.uncancel()
        raise _ClientGone from None
    except BaseException:
        watch.stop()
        raise
    if isinstance(response, RelayResponse):
        response.watch = watch  # the relay runs in this same task (GatewayApp), so the watch still targets it
    else:
        watch.stop()
    return response


app = GatewayApp()
