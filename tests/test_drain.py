"""`GatewayApp.drain`, which both doors and the tests' `gateway.drain()` await: it returns once pending work is done."""

from __future__ import annotations

import asyncio
import threading

from anthropic_gateway.runtime import Runtime
from anthropic_gateway.settings import get_settings


def test_drain_returns_when_a_task_has_just_finished(aws):  # aws: the ledger it flushes writes to moto
    """A task that finished in this loop iteration is still pending until its done callback runs."""
    ran = []

    async def work() -> None:
        ran.append(True)

    async def scenario() -> None:
        runtime = Runtime(get_settings())
        runtime.background.spawn(work())
        await asyncio.sleep(0)  # the task runs and finishes; the callback that forgets it is only scheduled
        await runtime.drain()

    # In a thread: a drain that never yields to its loop cannot be interrupted from inside it.
    thread = threading.Thread(target=asyncio.run, args=(scenario(),), daemon=True)
    thread.start()
    thread.join(timeout=10)
    assert not thread.is_alive(), "drain did not return"
    assert ran == [True]
