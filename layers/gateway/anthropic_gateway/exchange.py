"""One pass-through request from arrival to its last byte: what accounting, metrics and logs are built from."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal

from .auth import Principal
from .batch_state import BatchState
from .front_door import Arrival
from .storage.scopes import Scope
from .usage import Usage, UsageTap

# Who failed a request: the gateway refused or could not serve it, or the upstream answered with an error or broke off.
ErrorSource = Literal["gateway", "upstream"]


def new_request_id() -> str:
    # Unique, not secret (it is in every response's headers): 96 bits from `random`, seeded from os.urandom at
    # start, instead of a system call per request.
    return f"gwreq_{random.getrandbits(96):024x}"


@dataclass
class Admission:
    """What a request holds between admission (governance.admit) and settle: the same reservation and the same
    parallel slot on each of its scopes that has a budget or a parallel limit."""

    request_id: str  # names its budget reservations and its parallel slots
    scopes: tuple[Scope, ...] = ()  # every scope the request belongs to, as admitted: settle writes on these
    reserved: Decimal | None = None  # the estimate held on each budget (None: nothing held)
    slot: str | None = None  # the parallel slot held on each parallel limit (None: none)
    late: asyncio.Future[object] | None = None  # admission work still running after the deadline answered 503


@dataclass
class Exchange:
    method: str
    path: str  # the upstream path, e.g. /v1/messages
    request_id: str = field(default_factory=new_request_id)
    started: float = field(default_factory=time.perf_counter)
    principal: Principal | None = None
    model: str | None = None  # from the request body when it names one
    tags: list[str] = field(default_factory=list)
    status: int | None = None
    error_source: ErrorSource | None = None  # None: the request did not fail
    first_byte_at: float | None = None
    finished_at: float | None = None
    tap: UsageTap | None = None
    completed: bool = False  # the upstream body ended normally (not cut off)
    admission: Admission | None = None  # what governance.admit reserved for this request, released at settle
    batch: BatchState | None = None  # a batch create's reservation, batches seen ended, or a results tap (batches.py)
    upstream: str | None = None  # "anthropic" or "bedrock": the one that answered (or was tried last)
    failover_cause: str | None = None  # why the first upstream's answer was not used (routing.py), else None
    arrival: Arrival | None = None  # which front door, from which client (front_door.py)

    @property
    def usage(self) -> Usage | None:
        return self.tap.usage if self.tap and self.tap.seen_usage else None

    @property
    def forwarded(self) -> bool:
        """Whether an upstream had the request: it ended with a status the gateway did not produce by refusing or
        failing it (a client that left before the answer counts: the upstream had it). Only these count as
        `requests` in every spend counter (keys, tags, teams, users)."""
        return self.status is not None and self.error_source != "gateway"

    @property
    def response_model(self) -> str | None:
        """The model as Anthropic names it. Bedrock answers with its own id for the model the client asked for,
        so for Bedrock that is the client's model (what prices, budgets and logs know)."""
        if self.upstream == "bedrock" and self.model:
            return self.model
        return (self.tap.model if self.tap else None) or self.model

    @property
    def latency_ms(self) -> float:
        return ((self.finished_at or time.perf_counter()) - self.started) * 1000

    @property
    def time_to_first_byte_ms(self) -> float | None:
        return (self.first_byte_at - self.started) * 1000 if self.first_byte_at else None
