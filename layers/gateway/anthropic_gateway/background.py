"""After-response tasks: work a response starts once its last byte is out (see `responses.py`), off its path.

A task, not an await in the response: accounting must not hold back the end of the response, and must survive
the response's own cancellation (a client gone mid-stream). Lambda freezes a process between invocations, so the
app's `drain` gives them a fixed point to finish (`wait`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

_pending: set[asyncio.Task[None]] = set()


def spawn(work: Coroutine[Any, Any, None]) -> None:
    task = asyncio.ensure_future(work)
    _pending.add(task)  # the loop keeps only a weak reference to a task: this one keeps it alive
    task.add_done_callback(_pending.discard)


async def wait() -> None:
    """Wait for every task spawned on this event loop so far, and for any they spawn in turn (failures are theirs
    to log). Other loops' tasks are theirs to wait for: a process has one loop on Lambda, tests run several."""
    while tasks := _of_this_loop(_pending):
        await asyncio.gather(*tasks, return_exceptions=True)


def _of_this_loop(tasks: set[asyncio.Task[None]]) -> list[asyncio.Task[None]]:
    # Only the unfinished: a finished task stays in the set until its discard callback runs, and gathering finished
    # tasks completes without yielding to the loop, so that callback would never run (a spin).
    loop = asyncio.get_running_loop()
    return [task for task in list(tasks) if task.get_loop() is loop and not task.done()]  # list(): atomic copy
