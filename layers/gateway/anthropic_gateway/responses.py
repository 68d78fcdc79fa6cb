"""The responses that end a pass-through request, and the one place its after-response work is scheduled.

As with Starlette's `Response(background=...)`, the app sets `after_response` (accounting) on whichever response
ends the request, and the response calls it once its body is out. Unlike Starlette, it is called from a `finally`
and only schedules the work (accounting.py): it does not hold back the end of the response, and a response cut
short (client gone, upstream broken off, server shutting down) still calls it, exactly once.
  - `RelayResponse` streams the upstream body through chunk by chunk: every pass-through response but two kinds;
  - `BufferedResponse` sends a body already in hand: a batch's JSON with its results_url rewritten, and the
    gateway's own error responses.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from .exchange import Exchange
from .upstream_http import UpstreamError, UpstreamResponse
from .usage import UsageTap

Headers = list[tuple[bytes, bytes]]


class ExchangeResponse(Response):
    """A response for one `Exchange`: tagged with its request id, and ending it (latency, after-response work)."""

    def __init__(self, exchange: Exchange, status_code: int, headers: Headers) -> None:
        self.exchange = exchange
        self.status_code = status_code
        self.raw_headers = [*headers, (b"x-gateway-request-id", exchange.request_id.encode())]
        self.after_response: Callable[[Exchange], None] | None = None  # schedules work; must not raise

    def _finish(self) -> None:
        """Called exactly once, from the `finally` of `__call__`, whatever happened before."""
        self.exchange.finished()
        if self.after_response is not None:
            self.after_response(self.exchange)


def bodiless(status: int) -> bool:
    """Whether HTTP forbids a response with this status a body, whatever its headers say (RFC 9110 6.4.1)."""
    return status < 200 or status in (204, 304)


class BufferedResponse(ExchangeResponse):
    """A small body already read whole: `content-length` is its own, whatever the headers said (and none where the
    status has no body)."""

    def __init__(self, exchange: Exchange, content: bytes, status_code: int, headers: Headers) -> None:
        headers = [(n, v) for n, v in headers if n.lower() != b"content-length"]
        if bodiless(status_code):
            content = b""
        else:
            headers.append((b"content-length", str(len(content)).encode()))
        super().__init__(exchange, status_code, headers)
        self.body = content

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            await send({"type": "http.response.body", "body": self.body})
        finally:
            self._finish()


class RelayResponse(ExchangeResponse):
    """Streams the upstream body to the client chunk by chunk, feeding the usage tap on the way.

    Whatever happens (normal end, upstream cut off, client gone before or during the body), the upstream
    response is closed. A client disconnect cancels the relay, which closes the upstream connection at once.
    """

    def __init__(self, exchange: Exchange, upstream: UpstreamResponse, tap: UsageTap, headers: Headers) -> None:
        super().__init__(exchange, upstream.status, headers)
        self._upstream, self._tap = upstream, tap
        self.watch: DisconnectWatch | None = None  # the request's watch, when the app hands it over

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        upstream, exchange, tap = self._upstream, self.exchange, self._tap
        relay = asyncio.current_task()
        assert relay is not None  # an ASGI app always runs in a task
        watch = self.watch or DisconnectWatch(receive, relay)
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            ended = False
            async for chunk in upstream.aiter_raw():
                exchange.first_byte()
                tap.feed(chunk)
                ended = upstream.body_read  # the last chunk ends the response: no empty send after it
                await send({"type": "http.response.body", "body": chunk, "more_body": not ended})
            exchange.body_ended()
            tap.complete = True
            if not ended:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not watch.fired:
                raise  # cancelled by someone else (server shutdown): not ours to swallow
            relay.uncancel()  # the client went away; the relay ends here
        except UpstreamError:
            # The upstream broke off or fell silent mid-body; the client sees its response end there.
            exchange.broke_off()
        except OSError:
            pass  # the client went away while we were sending
        finally:
            watch.stop()
            exchange.finished()  # the last byte, not the close below
            await upstream.aclose()  # synchronous inside: nothing a cancellation could interrupt
            tap.close()
            self._finish()


class DisconnectWatch:
    """Cancels `task` as soon as the client disconnects: nobody would read the answer, and the upstream request
    and the holds go at once. The app starts it once the request body is read and hands it on to the relay, so a
    request has one watch from upstream call to last byte.

    Its watcher is one plain asyncio task (far cheaper than an anyio task group), and it starts only once the
    request has lasted `STARTS_AFTER` seconds: most whole answers are out before then, and a task per request cost
    about 6% of the gateway's CPU time (issue 11). A client that leaves sooner is noticed at that moment.
    """

    STARTS_AFTER = 0.05

    def __init__(self, receive: Receive, task: asyncio.Task[object]) -> None:
        self._receive, self._task = receive, task
        self._watcher: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(self.STARTS_AFTER, self._start)

    def _start(self) -> None:
        self._timer = None
        self._watcher = asyncio.create_task(_cancel_on_disconnect(self._receive, self._task))

    @property
    def fired(self) -> bool:
        """The client disconnected and `task` was cancelled for it (not by anyone else)."""
        watcher = self._watcher
        return watcher is not None and watcher.done() and not watcher.cancelled()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._watcher is not None:
            self._watcher.cancel()


async def _cancel_on_disconnect(receive: Receive, task: asyncio.Task[object]) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    task.cancel()
