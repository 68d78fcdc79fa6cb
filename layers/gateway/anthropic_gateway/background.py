"""After-response tasks: work a response starts once its last byte is out (see `responses.py`), off its path.

A task, not an await in the response: accounting must not hold back the end of the response, and must survive
the response's own cancellation (a client gone mid-stream). Lambda freezes a process between invocations, so the
runtime's `drain` gives them a fixed point to finish (`Background.wait`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


class Background:
    """One runtime's after-response tasks (a runtime has one event loop)."""

    def __init__(self) -> None:
        self._pending: set[asyncio.Task[None]] = set()

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._pending.add(task)  # the loop keeps only a weak reference to a task: this one keeps it alive
        task.add_done_callback(self._pending.discard)

    async def wait(self) -> None:
        """Wait for every task spawned so far, and for any they spawn in turn (failures are theirs to log)."""
        # Only the unfinished: a finished task stays in the set until its discard callback runs, and gathering
        # finished tasks completes without yielding to the loop, so that callback would never run (a spin).
        while tasks := [task for task in self._pending if not task.done()]:
            await asyncio.gather(*tasks, return_exceptions=True)
