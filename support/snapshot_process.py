"""A gateway process that SnapStart snapshots and restores twice: `python -m support.snapshot_process OLD NEW`.

Lambda restores every environment of a published version from one memory image. Here `fork` stands in for that:
the process initialises the gateway (the app's start: runtime built, secrets read), serves one request with the
master key OLD, and is given the before-checkpoint hook; it prints `checkpointed` and waits for a line on stdin
(the test rotates the master key to NEW meanwhile, as time passes between snapshot and restore). Then two children
forked from that image each get the after-restore hook and serve a request with NEW and one with OLD. Each prints
one JSON line: what it drew from `random` before and after its hook, the hook's status, the request ids it was
given and the statuses of its two requests.

Requests go to the app over its ASGI interface from a loopback address, as the Lambda Web Adapter's hook calls
come (a forked process cannot keep a server's threads). Log lines go to stderr.

Fork is a faithful stand-in but for one thing: Python re-seeds `random` in a forked child (an at-fork handler),
and a restored snapshot runs no such handler. Each child puts back the state the image held, as a restored
environment finds it.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys

import httpx

from anthropic_gateway.app import AFTER_RESTORE_PATH, BEFORE_CHECKPOINT_PATH, GatewayApp

MESSAGE = {"model": "claude-haiku-4-5", "max_tokens": 8, "messages": [{"role": "user", "content": "Hello"}]}


def _client(app: GatewayApp) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8080")


async def _initialise(app: GatewayApp, old_key: str) -> dict[str, object]:
    await app.start()
    async with _client(app) as client:
        served = await client.post("/anthropic/v1/messages", json=MESSAGE, headers={"x-api-key": old_key})
        checkpoint = await client.post(BEFORE_CHECKPOINT_PATH)
    return {
        "status": served.status_code,
        "ids": [served.headers["x-gateway-request-id"]],
        "checkpoint": checkpoint.status_code,
    }


async def _restored(app: GatewayApp, old_key: str, new_key: str) -> dict[str, object]:
    before = random.random()  # the snapshot's state: the same in every environment restored from it
    async with _client(app) as client:
        restore = await client.post(AFTER_RESTORE_PATH)
        after = random.random()
        answers = [
            await client.post("/anthropic/v1/messages", json=MESSAGE, headers={"x-api-key": key})
            for key in (new_key, old_key)
        ]
    await app.drain()
    return {
        "before": before,
        "after": after,
        "restore": restore.status_code,
        "ids": [answer.headers["x-gateway-request-id"] for answer in answers],
        "statuses": [answer.status_code for answer in answers],
    }


def main(old_key: str, new_key: str) -> None:
    app = GatewayApp(stream=sys.stderr)
    loop = asyncio.new_event_loop()
    print(json.dumps(loop.run_until_complete(_initialise(app, old_key))), flush=True)
    loop.close()  # a forked child cannot share its parent's event loop (its epoll instance): each makes its own
    print("checkpointed", flush=True)
    sys.stdin.readline()
    image = random.getstate()
    children = []
    for _ in range(2):
        pid = os.fork()
        if pid == 0:
            random.setstate(image)  # undo the at-fork re-seed: restored environments share the image's state
            child_loop = asyncio.new_event_loop()
            print(json.dumps(child_loop.run_until_complete(_restored(app, old_key, new_key))), flush=True)
            os._exit(0)
        children.append(pid)
    for pid in children:
        os.waitpid(pid, 0)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
