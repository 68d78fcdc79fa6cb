"""Coalesced counters, written exactly once, and kept until they are written.

Spend, request and token counters only ever grow by ADD, which commutes, so the increments of many requests can
be summed in memory and written together. A request then costs a dict update instead of an UpdateItem (about
1 ms of boto3 CPU that would otherwise compete with the next request). A flush runs `SPEND_FLUSH_SECONDS` after
the first pending increment, and at every `flush` (the runtime's `drain`: the buffered door's end of invocation,
the streaming door's shutdown). What must reach the table before the next admission decision (the spend that goes with
a budget reservation's release, tpm tokens, parallel slots) is not coalesced: governance writes it directly, and
hands it here when that fails; so do batch settles.

Exactly once: the sums of a flush are written in transactions of up to `GROUP` items (a request's key, team,
user, membership and tag days together: one call, not one per item), each with an operation id of its own, fixed
when the sums are taken (storage/holds.py's settle, with its operation marker); a write that fails is retried with
the same id, so a write whose answer was lost is never applied twice. An item deleted meanwhile (a key, a team) is
left out, and the rest written. Writes that fail are kept (oldest first, at most `LEDGER_MAX_ENTRIES`; newer ones
beyond that are dropped and counted in a log line) and retried with backoff (`LEDGER_RETRY_SECONDS`, doubling up
to 30 s), at every flush, and so as soon as DynamoDB answers again.

What a crash can lose: the increments summed since the last flush (`SPEND_FLUSH_SECONDS`), and the writes kept
for retry when the process dies during a DynamoDB outage.

Each runtime has its ledger (runtime.py), handed to whoever adds counters or hands over a write (governance,
day_spend, batches).
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial

from aws_lambda_powertools import Logger

from .aws import AwsCalls, transient
from .settings import Settings
from .storage import holds, spend
from .storage.table import Number

logger = Logger(child=True)

_MAX_RETRY_SECONDS = 30.0
# Counter items per transaction. DynamoDB takes 100 in one; fewer keep what a conflict with a concurrent write to
# one of them retries small, and still make one call of everything a request or two write.
GROUP = 25


@dataclass(frozen=True)
class Write:
    """A write that is safe to repeat (it applies at most once), named for the logs."""

    name: str
    apply: Callable[[], object]  # blocking; raises when it could not be written (what it returns is not used)


Counters = tuple[str, str, Mapping[str, Number], bool]  # pk, sk, increments, only if the item exists


def counters_write(items: Sequence[Counters]) -> Write:
    """ADD each item's increments once, however often the write is retried: one transaction of their updates and
    the operation marker; an item that must exist and is gone is left out."""
    operation = "ctr-" + secrets.token_hex(12)
    marker_ttl = int(time.time()) + spend.OPERATION_MARKER_SECONDS
    changes = [
        holds.Change(
            spend.add(pk, sk, dict(increments), condition="attribute_exists(pk)" if only_if_exists else None),
            counts=True,
            moot=f"counters not recorded: the item was deleted meanwhile ({sk})",
        )
        for pk, sk, increments, only_if_exists in items
    ]
    return Write(
        f"counters of {len(changes)} items", partial(holds.settle, changes, operation=operation, marker_ttl=marker_ttl)
    )


class Ledger:
    """One runtime's counters not written yet, and the writes that failed (see the module's docstring). Its
    writes go through the runtime's AWS calls, which call `retry_now` when DynamoDB answers again."""

    def __init__(self, settings: Settings, aws: AwsCalls) -> None:
        self._settings, self._aws = settings, aws
        # (pk, sk) -> (increments, only if the item exists)
        self._pending: dict[tuple[str, str], tuple[dict[str, Number], bool]] = {}
        self._failed: list[Write] = []  # oldest first
        self._dropped = 0
        self._lock = threading.Lock()
        self._flush_scheduled = False
        self._flush_timer: asyncio.TimerHandle | None = None
        self._retry_delay = 0.0  # 0: no retry scheduled
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
            loop = asyncio.get_running_loop()
            self._flush_timer = loop.call_later(self._settings.spend_flush_seconds, self._flush_in_background)

    def retry_later(self, write: Write) -> None:
        """Keep a write that failed elsewhere (a settle) and retry it with the ledger's; on the loop."""
        self._keep([write])
        self._schedule_retry()

    @property
    def backlog(self) -> int:
        """Writes waiting for a retry (tests and the shutdown log)."""
        with self._lock:
            return len(self._failed)

    def _flush_in_background(self) -> None:
        task = asyncio.ensure_future(self._write_pending())
        self._timed_flushes.add(task)
        task.add_done_callback(self._timed_flushes.discard)

    async def flush(self) -> None:
        """Write every increment queued so far (and retry what failed before), including what a timed flush is
        writing right now. What still fails stays queued for the next retry."""
        await self._write_pending()
        loop = asyncio.get_running_loop()  # tests run several loops, one per server; Lambda one
        while flushes := [t for t in list(self._timed_flushes) if t.get_loop() is loop and not t.done()]:
            await asyncio.gather(*flushes, return_exceptions=True)

    async def _write_pending(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, {}
            self._flush_scheduled = False
            timer, self._flush_timer = self._flush_timer, None
            retries, self._failed = self._failed, []
        if timer is not None:
            # What it would write is taken here: a flush (at shutdown, or a drain) leaves no timer behind to fire
            # while the loop closes and start a write nobody awaits.
            timer.cancel()
        items = [(pk, sk, totals, only) for (pk, sk), (totals, only) in batch.items() if totals]
        writes = retries + [counters_write(items[start : start + GROUP]) for start in range(0, len(items), GROUP)]
        if not writes:
            return
        failed = await self._aws.run(_apply_all, writes)
        self._keep(failed)
        if failed:
            self._schedule_retry()
        else:
            self._retry_delay = 0.0

    def _keep(self, failed: list[Write]) -> None:
        if not failed:
            return
        with self._lock:
            kept = failed + self._failed  # what failed now is older than what failed since it was taken
            limit = self._settings.ledger_max_entries
            dropped = len(kept) - limit
            self._failed = kept[:limit]
            if dropped > 0:
                self._dropped += dropped
        if dropped > 0:
            logger.error(
                "counter writes dropped: the retry queue is full",
                extra={"dropped": dropped, "dropped_total": self._dropped},
            )

    def retry_now(self) -> None:
        """DynamoDB answers again: write what failed at once instead of waiting out the backoff (on the loop)."""
        if self.backlog:
            self._flush_in_background()

    def _schedule_retry(self) -> None:
        if self._retry_delay:  # one retry at a time
            return
        self._retry_delay = self._settings.ledger_retry_seconds
        asyncio.get_running_loop().call_later(self._retry_delay, self._retry)

    def _retry(self) -> None:
        delay = self._retry_delay
        task = asyncio.ensure_future(self._write_pending())
        self._timed_flushes.add(task)
        task.add_done_callback(self._timed_flushes.discard)
        task.add_done_callback(partial(self._after_retry, delay))

    def _after_retry(self, delay: float, _: object) -> None:
        if self.backlog:  # still failing: back off
            self._retry_delay = min(delay * 2, _MAX_RETRY_SECONDS)
            asyncio.get_running_loop().call_later(self._retry_delay, self._retry)
        else:
            self._retry_delay = 0.0


def _apply_all(writes: list[Write]) -> list[Write]:
    """Apply the writes in order (blocking); the ones not written. The first that fails for want of DynamoDB
    stops the run: the rest would each wait out the same timeouts. A write DynamoDB refuses for what it is can
    never succeed: it is logged and dropped instead of blocking the queue."""
    for index, write in enumerate(writes):
        try:
            write.apply()
        except Exception as exc:
            if _refused_for_good(exc):
                logger.exception("counter write refused by DynamoDB; dropped", extra={"write": write.name})
                continue
            logger.warning(
                "counter writes failed; kept for retry",
                extra={"write": write.name, "error": type(exc).__name__, "kept": len(writes) - index},
            )
            return writes[index:]
    return []


def _refused_for_good(exc: Exception) -> bool:
    """DynamoDB refused the write for what it is: a 400 that is not for now (aws.transient). A cancelled
    transaction is kept for a retry as well."""
    from botocore.exceptions import ClientError

    if not isinstance(exc, ClientError) or transient(exc):
        return False
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 500)
    return status == 400 and exc.response.get("Error", {}).get("Code") != "TransactionCanceledException"
