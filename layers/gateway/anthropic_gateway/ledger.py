"""Coalesced counters: many requests' increments to one DynamoDB item become one atomic ADD.

Spend, request and token counters only ever grow by ADD, which commutes, so the increments of many requests can
be summed in memory and written together. A request then costs a dict update instead of an UpdateItem (about
1 ms of boto3 CPU that would otherwise compete with the next request). A flush runs `SPEND_FLUSH_SECONDS` after
the first pending increment, and at every `flush` (the app's `drain`). What must reach the table before the next
admission decision (budget reservations, tpm tokens, parallel slots) is not coalesced: governance writes it
directly.

If a process dies between two flushes, the increments it held are lost; `SPEND_FLUSH_SECONDS` bounds them.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from decimal import Decimal

import anyio.to_thread
from aws_lambda_powertools import Logger

from . import table
from .settings import get_settings

logger = Logger(child=True)

Number = int | Decimal


class Ledger:
    def __init__(self) -> None:
        # (pk, sk) -> (increments, only if the item exists)
        self._pending: dict[tuple[str, str], tuple[dict[str, Number], bool]] = {}
        self._lock = threading.Lock()
        self._flush_scheduled = False
        self._timed_flushes: set[asyncio.Task[None]] = set()

    def add(self, pk: str, sk: str, increments: Mapping[str, Number], *, only_if_exists: bool = False) -> None:
        """Queue `increments` for the item; called on the event loop. `only_if_exists`: never create the item
        (a key deleted meanwhile stays deleted)."""
        with self._lock:
            totals, _ = self._pending.setdefault((pk, sk), ({}, only_if_exists))
            for name, amount in increments.items():
                if amount:
                    totals[name] = totals.get(name, 0) + amount
            schedule = not self._flush_scheduled
            self._flush_scheduled = True
        if schedule:
            asyncio.get_running_loop().call_later(get_settings().spend_flush_seconds, self._flush_in_background)

    def _flush_in_background(self) -> None:
        task = asyncio.ensure_future(self._write_pending())
        self._timed_flushes.add(task)
        task.add_done_callback(self._timed_flushes.discard)

    async def flush(self) -> None:
        """Write every increment queued so far, including those a timed flush is writing right now."""
        await self._write_pending()
        loop = asyncio.get_running_loop()  # tests run several loops, one per server; Lambda one
        while flushes := [t for t in list(self._timed_flushes) if t.get_loop() is loop and not t.done()]:
            await asyncio.gather(*flushes, return_exceptions=True)

    async def _write_pending(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, {}
            self._flush_scheduled = False
        if batch:
            await anyio.to_thread.run_sync(_write, batch)


def _write(batch: dict[tuple[str, str], tuple[dict[str, Number], bool]]) -> None:
    for (pk, sk), (increments, only_if_exists) in batch.items():
        if not increments:
            continue
        try:
            if not table.add_counters(pk, sk, increments, only_if_exists=only_if_exists):
                logger.info("counters not recorded: the item was deleted meanwhile", extra={"sk": sk})
        except Exception:  # one item failing must not lose the others; botocore has already retried this one
            logger.exception("counter flush failed", extra={"sk": sk})


ledger = Ledger()
