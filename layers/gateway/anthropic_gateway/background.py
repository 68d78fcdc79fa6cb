"""Work that runs after a response, off its path: accounting tasks and the ledger's flushes.

Lambda freezes a process between invocations, so pending work also has a fixed point to finish: `drain`, which
the buffered door awaits at the end of every invocation and the streaming door at shutdown (uvicorn's lifespan;
the Lambda Web Adapter is an extension, so Lambda sends SIGTERM before it ends the environment).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

_pending: set[asyncio.Task] = set()


def spawn(work: Awaitable[None]) -> None:
    task = asyncio.ensure_future(work)
    _pending.add(task)
    task.add_done_callback(_pending.discard)


async def drain() -> None:
    """Wait for every spawned task, then write whatever the ledger still holds."""
    from .ledger import ledger  # the ledger spawns its flushes through this module

    # Only the unfinished: a finished task stays in _pending until its discard callback runs, and gathering
    # finished tasks completes without yielding to the loop, so that callback would never run (a spin).
    while unfinished := [task for task in _pending if not task.done()]:
        await asyncio.gather(*unfinished, return_exceptions=True)
    await ledger.flush()
