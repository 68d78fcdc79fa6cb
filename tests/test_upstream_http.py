"""The pass-through's upstream HTTP client, against raw-bytes servers on loopback (so the framing is exactly ours).

Each test runs one event loop holding both the client and the server; waits are on facts the server records.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest
import trustme

from anthropic_gateway.upstream_http import (
    ConnectError,
    ConnectTimeout,
    PoolTimeout,
    ReadTimeout,
    RemoteProtocolError,
    UpstreamPool,
    WriteTimeout,
)

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def run(test: Coroutine[Any, Any, None]) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(20):  # a broken client fails the test instead of hanging it
            await test

    asyncio.run(bounded())


class Peer:
    """The server's side of one connection."""

    def __init__(self, server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.server, self.reader, self.writer = server, reader, writer

    async def read_request(self) -> bytes | None:
        """One request, head and body, exactly as received; None once the client has closed the connection."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        request = head + await self.reader.readexactly(length)
        await self.server.record(requests=[*self.server.requests, request])
        return request

    async def send(self, *pieces: bytes) -> None:
        """Each piece in its own write, with the loop run in between so the client gets a chance to read each."""
        for piece in pieces:
            self.writer.write(piece)
            await self.writer.drain()
            for _ in range(3):
                await asyncio.sleep(0)

    async def answer_all(self, response: bytes = OK) -> None:
        while await self.read_request() is not None:
            await self.send(response)


class RawServer:
    """A loopback server running `handler(peer)` for each connection, counting connections and requests."""

    def __init__(self, handler: Callable[[Peer], Awaitable[None]], ssl_context: ssl.SSLContext | None = None):
        self._handler, self._ssl = handler, ssl_context
        self.connections = 0
        self.closed = 0  # connections that have ended, on the server's side
        self.requests: list[bytes] = []
        self._changed = asyncio.Condition()

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self._ssl)
        self.port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._server.close()
        self._server.close_clients()
        await self._server.wait_closed()

    async def record(self, **changes: Any) -> None:
        async with self._changed:
            for name, value in changes.items():
                setattr(self, name, value)
            self._changed.notify_all()

    async def until(self, predicate: Callable[[], bool]) -> None:
        async with self._changed:
            await self._changed.wait_for(predicate)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self.record(connections=self.connections + 1)
        try:
            await self._handler(Peer(self, reader, writer))
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()
            await self.record(closed=self.closed + 1)


async def answer_all(peer: Peer) -> None:
    await peer.answer_all()


async def body_of(pool: UpstreamPool, method: str = "GET", target: bytes = b"/", body: bytes = b"") -> bytes:
    async with await pool.request(method, target, [], body) as response:
        return await response.aread()


# -- framing -------------------------------------------------------------------------------------------------------


def test_request_goes_out_byte_for_byte_and_the_response_comes_back_as_received():
    async def test() -> None:
        response_head = b"HTTP/1.1 201 Created\r\nX-Mixed-Case: A b\r\ncontent-type: text/plain\r\nX-Empty:\r\n"
        async with RawServer(lambda peer: peer.answer_all(response_head + b"Content-Length: 5\r\n\r\nhello")) as server:
            pool = UpstreamPool(server.url + "/prefix/")
            headers = [(b"X-Api-Key", b"k"), (b"anthropic-version", b"2023-06-01"), (b"accept-encoding", b"identity")]
            async with await pool.request(b"POST", b"/v1/x?a=%2F&b=%20", headers, b'{"a": 1}') as response:
                assert response.status == 201
                assert response.headers == [
                    (b"X-Mixed-Case", b"A b"),
                    (b"content-type", b"text/plain"),
                    (b"X-Empty", b""),
                    (b"Content-Length", b"5"),
                ]
                assert await response.aread() == b"hello"
            assert await body_of(pool, "GET", b"/v1/models") == b"hello"
            host = b"Host: 127.0.0.1:" + str(server.port).encode()
            assert server.requests == [
                b"POST /v1/x?a=%2F&b=%20 HTTP/1.1\r\n" + host + b"\r\n"
                b"X-Api-Key: k\r\nanthropic-version: 2023-06-01\r\naccept-encoding: identity\r\n"
                b'Content-Length: 8\r\n\r\n{"a": 1}',
                b"GET /v1/models HTTP/1.1\r\n" + host + b"\r\n\r\n",  # nothing of the client's own
            ]
            assert pool.base_path == b"/prefix"
            await pool.aclose()

    run(test())


@pytest.mark.parametrize(
    ("target", "headers"),
    [
        (b"/v1/x HTTP/1.1\r\nX-Forged: 1\r\n", []),
        (b"/v1/x y", []),
        (b"/ok", [(b"X-A", b"1\r\nX-Forged: 1")]),
        (b"/ok", [(b"X-A", b"1\nX-Forged: 1")]),
        (b"/ok", [(b"X-A\r", b"1")]),
    ],
)
def test_a_request_that_would_forge_framing_is_refused_before_anything_is_sent(target, headers):
    async def test() -> None:
        async with RawServer(answer_all) as server:
            pool = UpstreamPool(server.url)
            with pytest.raises(ValueError):
                await pool.request("GET", target, headers)
            assert server.connections == 0
            await pool.aclose()

    run(test())


def test_chunked_body_split_at_every_byte_with_extensions_and_trailers():
    body = b"4;ext=1\r\nWiki\r\n6\r\npedia \r\nE\r\nin \r\n\r\nchunks.\r\n0\r\nX-Trailer: t\r\n\r\n"
    response = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body

    async def handler(peer: Peer) -> None:
        while await peer.read_request() is not None:
            await peer.send(*(response[i : i + 1] for i in range(len(response))))

    async def test() -> None:
        async with RawServer(handler) as server:
            pool = UpstreamPool(server.url)
            async with await pool.request("GET", b"/", []) as first:
                assert first.headers == [(b"Transfer-Encoding", b"chunked")]  # the trailer is not a header
                assert await first.aread() == b"Wikipedia in \r\n\r\nchunks."
            assert await body_of(pool) == b"Wikipedia in \r\n\r\nchunks."
            assert server.connections == 1  # the trailers were consumed: the connection was reusable
            await pool.aclose()

    run(test())


def test_the_body_streams_as_it_arrives():
    received_first = asyncio.Event()

    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nevent1\r\n")
        await received_first.wait()  # the rest only once the client has had the first part
        await peer.send(b"6\r\nevent2\r\n0\r\n\r\n")

    async def test() -> None:
        async with RawServer(handler) as server:
            pool = UpstreamPool(server.url)
            chunks = []
            async with await pool.request("POST", b"/v1/messages", [], b"{}") as response:
                async for chunk in response.aiter_raw():
                    chunks.append((chunk, response.body_read))  # body_read: this chunk was the body's last
                    received_first.set()
            assert chunks == [(b"event1", False), (b"event2", True)]
            await pool.aclose()

    run(test())


def test_close_delimited_body_ends_at_eof_and_its_connection_is_not_reused():
    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n", b"until ", b"the end")

    async def test() -> None:
        async with RawServer(handler) as server:
            pool = UpstreamPool(server.url)
            assert await body_of(pool) == b"until the end"
            assert await body_of(pool) == b"until the end"
            assert server.connections == 2
            await pool.aclose()

    run(test())


def test_a_body_cut_short_is_an_error():
    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")

    async def test() -> None:
        async with RawServer(handler) as server:
            pool = UpstreamPool(server.url)
            async with await pool.request("GET", b"/", []) as response:
                with pytest.raises(RemoteProtocolError):
                    await response.aread()
            await pool.aclose()

    run(test())


def test_a_malformed_response_is_a_protocol_error():
    async def test() -> None:
        async with RawServer(lambda peer: peer.answer_all(b"HTTP/1.1 OK\r\n\r\n")) as server:
            pool = UpstreamPool(server.url)
            with pytest.raises(RemoteProtocolError):
                await pool.request("GET", b"/", [])
            await pool.aclose()

    run(test())


def test_interim_responses_are_skipped():
    interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"

    async def test() -> None:
        async with RawServer(lambda peer: peer.answer_all(interim + OK)) as server:
            pool = UpstreamPool(server.url)
            async with await pool.request("POST", b"/", [], b"x") as response:
                assert (response.status, response.headers) == (200, [(b"Content-Length", b"2")])
                assert await response.aread() == b"ok"
            assert await body_of(pool, "POST", body=b"x") == b"ok"
            assert server.connections == 1
            await pool.aclose()

    run(test())


def test_head_204_and_304_have_no_body_whatever_their_content_length():
    async def handler(peer: Peer) -> None:
        while (request := await peer.read_request()) is not None:
            status, _, length = request.split(b" ")[1].lstrip(b"/").partition(b"-")
            await peer.send(b"HTTP/1.1 %s X\r\nContent-Length: %s\r\n\r\n" % (status, length or b"0"))

    async def test() -> None:
        async with RawServer(handler) as server:
            pool = UpstreamPool(server.url)
            for method, target in [("GET", b"/204"), ("GET", b"/304"), ("GET", b"/204"), ("HEAD", b"/200-100")]:
                async with await pool.request(method, target, []) as response:
                    assert response.status == int(target[1:4])
                    assert await response.aread() == b""
            # 204 and 304 without a body kept the connection; after HEAD it is closed, as llhttp cannot be told
            # the method.
            assert server.connections == 1
            for target in (b"/204-100", b"/304-100", b"/200"):
                assert await body_of(pool, "GET", target) == b""
            # A 204 or 304 announcing a body (a 304 may, for the representation it stands for) is not trusted to
            # have ended: its connection is closed. One connection each, after the one HEAD closed.
            assert server.connections == 4
            await pool.aclose()

    run(test())


def test_an_interim_answers_body_is_discarded_and_its_connection_not_reused():
    interim = b"HTTP/1.1 199 Unknown\r\nContent-Length: 6\r\n\r\nHIDDEN"

    async def test() -> None:
        async with RawServer(lambda peer: peer.answer_all(interim + OK)) as server:
            pool = UpstreamPool(server.url)
            assert await body_of(pool) == b"ok"
            assert await body_of(pool) == b"ok"
            assert server.connections == 2
            await pool.aclose()

    run(test())


def test_bytes_after_a_bodiless_answer_never_reach_the_next_request():
    """A 204 that announces a body, which the upstream sends only once the next request is on the connection: that
    request must not be on it."""

    async def handler(peer: Peer) -> None:
        if peer.server.connections > 1:
            return await peer.answer_all()
        await peer.read_request()
        late = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged"
        await peer.send(b"HTTP/1.1 204 No Content\r\nContent-Length: %d\r\n\r\n" % len(late))
        if await peer.read_request() is not None:
            await peer.send(late)
        await peer.answer_all()

    async def test() -> None:
        async with RawServer(handler) as server:
            pool = UpstreamPool(server.url)
            assert await body_of(pool) == b""
            assert await body_of(pool) == b"ok"  # its own answer, on a connection of its own
            assert (server.connections, len(server.requests)) == (2, 2)
            await pool.aclose()

    run(test())


def test_an_idle_pooled_connection_that_receives_a_byte_is_closed_at_once():
    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(OK)
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlate")  # nobody asked for it
        await peer.reader.read()  # until the client closes

    async def test() -> None:
        async with RawServer(handler) as server:
            pool = UpstreamPool(server.url)
            assert await body_of(pool) == b"ok"
            await server.until(lambda: server.closed == 1)  # with no request made meanwhile
            assert len(server.requests) == 1
            await pool.aclose()

    run(test())


def test_an_early_refusal_of_a_body_the_upstream_left_unread_closes_the_connection():
    """A broken upstream answers 413 after the head alone and keeps the connection, with the body unread in it: it
    would read that body as the next request and the next request as part of it (request smuggling)."""

    async def handler(peer: Peer) -> None:
        while head := await peer.reader.readuntil(b"\r\n\r\n"):
            await peer.server.record(requests=[*peer.server.requests, head])
            await peer.send(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 3\r\n\r\nbig")

    async def test() -> None:
        async with RawServer(handler) as server:
            pool = UpstreamPool(server.url)
            smuggled = b"GET /smuggled HTTP/1.1\r\nContent-Length: 500\r\n\r\n"
            async with await pool.request("POST", b"/1", [], smuggled) as response:
                assert (response.status, await response.aread()) == (413, b"big")
            async with await pool.request("POST", b"/2", [], b"{}") as response:
                assert (response.status, await response.aread()) == (413, b"big")
            # Each request on its own connection: the smuggled head was read, but nothing after it.
            assert server.connections == 2
            assert [head.split(b" ")[1] for head in server.requests] == [b"/1", b"/smuggled", b"/2"]
            await pool.aclose()

    run(test())


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_an_answer_that_began_before_the_whole_request_went_out_closes_the_connection(ca, tls):
    """Over TLS too: encrypted bytes still in the TCP transport below it count as not yet handed to the kernel."""
    drained = asyncio.Event()

    async def handler(peer: Peer) -> None:
        head = await peer.reader.readuntil(b"\r\n\r\n")
        await peer.send(OK)  # answered after the head alone; the body is read only afterwards
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await peer.reader.readexactly(length)
        drained.set()
        await peer.answer_all()

    async def test() -> None:
        async with RawServer(handler, tls_server(ca, ["localhost"])[0] if tls else None) as server:
            if tls:
                pool = UpstreamPool(f"https://localhost:{server.port}", ssl_context=client_context(ca))
            else:
                pool = UpstreamPool(server.url)
            async with await pool.request("POST", b"/", [], b"x" * (64 * 1024 * 1024)) as response:
                await drained.wait()  # the whole request has gone out by the time the answer is read
                assert await response.aread() == b"ok"
            assert await body_of(pool) == b"ok"
            assert server.connections == 2
            await pool.aclose()

    run(test())


def test_an_answer_to_a_body_is_reused_only_when_it_is_a_success():
    async def handler(peer: Peer) -> None:
        while (request := await peer.read_request()) is not None:
            status = request.split(b" ")[1].lstrip(b"/")
            await peer.send(b"HTTP/1.1 %s X\r\nContent-Length: 2\r\n\r\nok" % status)

    async def test() -> None:
        async with RawServer(handler) as server:
            pool = UpstreamPool(server.url)
            for method, target, body in [("POST", b"/200", b"x"), ("GET", b"/400", b""), ("POST", b"/201", b"x")]:
                assert await body_of(pool, method, target, body) == b"ok"
            assert server.connections == 1
            assert await body_of(pool, "POST", b"/400", b"x") == b"ok"
            assert await body_of(pool, "POST", b"/200", b"x") == b"ok"
            assert server.connections == 2
            await pool.aclose()

    run(test())


# -- the pool ------------------------------------------------------------------------------------------------------


def test_keep_alive_reuses_one_connection_and_connection_close_is_honoured():
    async def handler(peer: Peer) -> None:
        while (request := await peer.read_request()) is not None:
            close = b"Connection: close\r\n" if request.startswith(b"GET /close") else b""
            await peer.send(b"HTTP/1.1 200 OK\r\n" + close + b"Content-Length: 2\r\n\r\nok")

    async def test() -> None:
        async with RawServer(handler) as server:
            pool = UpstreamPool(server.url)
            assert [await body_of(pool), await body_of(pool)] == [b"ok", b"ok"]
            assert server.connections == 1
            assert await body_of(pool, "GET", b"/close") == b"ok"
            await server.until(lambda: server.closed == 1)  # the client closed it
            assert await body_of(pool) == b"ok"
            assert (server.connections, len(server.requests)) == (2, 4)
            await pool.aclose()

    run(test())


def test_a_pooled_connection_the_server_closed_is_not_used_and_the_request_goes_out_once():
    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(OK)  # keep-alive by the headers, but closed right after (the server's idle timeout)

    async def test() -> None:
        async with RawServer(handler) as server:
            pool = UpstreamPool(server.url)
            assert await body_of(pool, "POST", body=b"1") == b"ok"
            await server.until(lambda: server.closed == 1)
            assert await body_of(pool, "POST", body=b"2") == b"ok"
            assert [r[-1:] for r in server.requests] == [b"1", b"2"]
            assert server.connections == 2
            await pool.aclose()

    run(test())


def test_a_pooled_connection_is_checked_before_use_even_if_the_loop_has_not_seen_its_eof_yet():
    peers: list[Peer] = []

    async def handler(peer: Peer) -> None:
        peers.append(peer)
        await peer.answer_all()

    async def test() -> None:
        async with RawServer(handler) as server:
            pool = UpstreamPool(server.url)
            assert await body_of(pool, "POST", body=b"1") == b"ok"
            # The server's FIN reaches the client's socket now, and the request follows with no loop turn between.
            peers[0].writer.get_extra_info("socket").shutdown(socket.SHUT_WR)
            assert await body_of(pool, "POST", body=b"2") == b"ok"
            assert [r[-1:] for r in server.requests] == [b"1", b"2"]
            assert server.connections == 2
            await pool.aclose()

    run(test())


def test_a_request_the_server_has_read_is_never_sent_again():
    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(OK)
        await peer.read_request()  # the second request arrives on the kept-alive connection, and no answer comes

    async def test() -> None:
        async with RawServer(handler) as server:
            pool = UpstreamPool(server.url)
            assert await body_of(pool, "POST", body=b"1") == b"ok"
            with pytest.raises(RemoteProtocolError):
                await pool.request("POST", b"/", [], b"2")
            assert [r[-1:] for r in server.requests] == [b"1", b"2"]
            assert server.connections == 1
            await pool.aclose()

    run(test())


def test_idle_connections_expire():
    async def test() -> None:
        async with RawServer(answer_all) as server:
            pool = UpstreamPool(server.url, idle_expiry=0.0)
            assert [await body_of(pool), await body_of(pool)] == [b"ok", b"ok"]
            assert server.connections == 2
            await server.until(lambda: server.closed == 2)  # expired ones are closed, not left open
            await pool.aclose()

    run(test())


def test_the_pool_is_bounded_and_waiting_for_it_is_bounded():
    release = asyncio.Event()

    async def handler(peer: Peer) -> None:
        while await peer.read_request() is not None:
            await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n")
            await release.wait()
            await peer.send(b"ok")

    async def test() -> None:
        async with RawServer(handler) as server:
            pool = UpstreamPool(server.url, max_connections=2, pool_timeout=0.2)
            held = [await pool.request("GET", b"/", []) for _ in range(2)]
            with pytest.raises(PoolTimeout):
                await pool.request("GET", b"/", [])
            waiting = [asyncio.create_task(body_of(pool)) for _ in range(3)]
            release.set()
            assert [await response.aread() for response in held] == [b"ok", b"ok"]
            assert await asyncio.gather(*waiting) == [b"ok"] * 3
            assert server.connections == 2
            await pool.aclose()

    run(test())


def test_a_cancelled_read_closes_the_connection_instead_of_reusing_it():
    got_part = asyncio.Event()

    async def handler(peer: Peer) -> None:
        request = await peer.read_request()
        if request is not None and request.startswith(b"GET /slow"):
            await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npart")
            assert await peer.reader.read() == b""  # the client closed the connection
        else:
            await peer.send(OK)

    async def reader(pool: UpstreamPool) -> None:
        async with await pool.request("GET", b"/slow", []) as response:
            async for _ in response.aiter_raw():
                got_part.set()

    async def test() -> None:
        async with RawServer(handler) as server:
            pool = UpstreamPool(server.url)
            task = asyncio.create_task(reader(pool))
            await got_part.wait()
            task.cancel()  # what a client disconnect does to the relay
            with pytest.raises(asyncio.CancelledError):
                await task
            await server.until(lambda: server.closed == 1)
            assert await body_of(pool) == b"ok"
            assert server.connections == 2
            await pool.aclose()

    run(test())


def test_closing_a_response_early_closes_its_connection_and_close_is_idempotent():
    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npart")
        await peer.reader.read()

    async def test() -> None:
        async with RawServer(handler) as server:
            pool = UpstreamPool(server.url)
            response = await pool.request("GET", b"/", [])
            await response.aclose()
            await response.aclose()
            await server.until(lambda: server.closed == 1)
            await pool.aclose()

    run(test())


def test_closing_the_pool_closes_idle_connections():
    async def test() -> None:
        async with RawServer(answer_all) as server:
            pool = UpstreamPool(server.url)
            assert await body_of(pool) == b"ok"
            await pool.aclose()
            await server.until(lambda: server.closed == 1)
            with pytest.raises(RuntimeError):
                await pool.request("GET", b"/", [])

    run(test())


# -- timeouts and failures -----------------------------------------------------------------------------------------


def test_read_timeout_before_the_head_and_between_body_bytes():
    async def handler(peer: Peer) -> None:
        request = await peer.read_request()
        if request is not None and request.startswith(b"GET /body"):
            await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
        await peer.reader.read()  # then silence

    async def test() -> None:
        async with RawServer(handler) as server:
            pool = UpstreamPool(server.url, read_timeout=0.1)
            with pytest.raises(ReadTimeout):
                await pool.request("GET", b"/head", [])
            async with await pool.request("GET", b"/body", []) as response:
                with pytest.raises(ReadTimeout):
                    await response.aread()
            await server.until(lambda: server.closed == 2)  # neither connection was kept
            await pool.aclose()

    run(test())


def test_write_timeout_when_the_upstream_stops_reading():
    timed_out = asyncio.Event()

    async def handler(peer: Peer) -> None:
        await peer.reader.readuntil(b"\r\n\r\n")
        await timed_out.wait()  # reading nothing more: the stream reader stops pulling once its buffer is full

    async def test() -> None:
        async with RawServer(handler) as server:
            pool = UpstreamPool(server.url, write_timeout=0.2)
            with pytest.raises(WriteTimeout):
                await pool.request("POST", b"/", [], b"x" * (64 * 1024 * 1024))
            timed_out.set()
            await server.until(lambda: server.closed == 1)
            await pool.aclose()

    run(test())


def test_an_early_answer_to_an_upload_the_upstream_stopped_reading_is_the_answer():
    answered = asyncio.Event()

    async def handler(peer: Peer) -> None:
        await peer.reader.readuntil(b"\r\n\r\n")
        await peer.send(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 3\r\n\r\nbig")
        await answered.wait()  # and the rest of the body is never read

    async def test() -> None:
        async with RawServer(handler) as server:
            pool = UpstreamPool(server.url, write_timeout=5.0)
            async with await pool.request("POST", b"/", [], b"x" * (64 * 1024 * 1024)) as response:
                assert (response.status, await response.aread()) == (413, b"big")
            answered.set()
            await server.until(lambda: server.closed == 1)  # half-sent request: the connection is not reused
            await pool.aclose()

    run(test())


def test_connect_timeout_covers_the_tls_handshake():
    async def handler(peer: Peer) -> None:
        await peer.reader.read()  # accepts TCP, never speaks TLS

    async def test() -> None:
        async with RawServer(handler) as server:
            pool = UpstreamPool(f"https://127.0.0.1:{server.port}", connect_timeout=0.2)
            with pytest.raises(ConnectTimeout):
                await pool.request("GET", b"/", [])
            await pool.aclose()

    run(test())


def test_connect_error_when_nothing_listens():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused

        async def test() -> None:
            pool = UpstreamPool(f"http://127.0.0.1:{port}")
            with pytest.raises(ConnectError):
                await pool.request("GET", b"/", [])
            await pool.aclose()

        run(test())


# -- TLS -----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def tls_server(ca: trustme.CA, names: list[str]) -> tuple[ssl.SSLContext, list[str | None]]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(context)
    server_names: list[str | None] = []
    context.sni_callback = lambda ssl_object, name, ctx: server_names.append(name)
    return context, server_names


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def test_tls_verified_against_the_ca_with_sni(ca):
    async def test() -> None:
        server_context, server_names = tls_server(ca, ["localhost"])
        async with RawServer(answer_all, server_context) as server:
            pool = UpstreamPool(f"https://localhost:{server.port}", ssl_context=client_context(ca))
            assert [await body_of(pool), await body_of(pool)] == [b"ok", b"ok"]
            assert server.requests[0].startswith(b"GET / HTTP/1.1\r\nHost: localhost:%d\r\n" % server.port)
            assert server_names == ["localhost"]
            assert server.connections == 1
            await pool.aclose()

    run(test())


def test_tls_refuses_a_certificate_outside_the_trust_store(ca):
    async def test() -> None:
        async with RawServer(answer_all, tls_server(ca, ["localhost"])[0]) as server:
            pool = UpstreamPool(f"https://localhost:{server.port}")  # certifi's trust store
            with pytest.raises(ConnectError) as refused:
                await pool.request("GET", b"/", [])
            assert isinstance(refused.value.__cause__, ssl.SSLCertVerificationError)
            assert server.requests == []
            await pool.aclose()

    run(test())


def test_tls_refuses_a_certificate_for_another_name(ca):
    async def test() -> None:
        async with RawServer(answer_all, tls_server(ca, ["api.example.test"])[0]) as server:
            pool = UpstreamPool(f"https://localhost:{server.port}", ssl_context=client_context(ca))
            with pytest.raises(ConnectError) as refused:
                await pool.request("GET", b"/", [])
            assert "localhost" in str(refused.value.__cause__)
            assert server.requests == []
            await pool.aclose()

    run(test())
