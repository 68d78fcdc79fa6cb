"""One pass-through request from arrival to its last byte, in phases: what accounting, metrics and logs are built
from.

What is known about a request grows as `app.anthropic_passthrough` takes it through; each fact is written where it
becomes known, by one module:
  - its arrival: method, request id, start, front door (the app makes the Exchange);
  - the request as every check reads it, in turn (app.py): the principal once authenticated, the canonical path,
    the tags, and once the checks and routing are done reading the body, the model it names as they read it
    (request_body.RequestBody.model). A request refused midway keeps what was known by then: its access log line
    shows it;
  - admission: what governance.admit holds (`admission`) and a Message Batches request's state (`batch`,
    batches.py);
  - the upstream: which one is asked and why the one before was left (`trying`, `failing_over`: routing.py), the
    answer the client gets and the tap that reads its body (`answered`: forwarding.respond);
  - the end: status and who failed the request, first byte, last byte, whether the body ended normally.
Upstream and end change as the request goes on: they are written only by this class's methods, each named for what
happened (`refused`, `client_left`, `first_byte`, `body_ended`, `broke_off`, `finished`...). Readers use the fields
and the properties built on them (`usage`, `forwarded`, `response_model`, latency).
"""

from __future__ import annotations

import asyncio
import os
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
    # Unique, not secret (it is in every response's headers, and names the request's budget reservation): 96 bits
    # from os.urandom, never from `random`, whose state every environment restored from one SnapStart snapshot
    # shares (a system call of about a microsecond).
    return "gwreq_" + os.urandom(12).hex()


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
    # -- its arrival
    method: str
    path: str = ""  # the canonical upstream path, e.g. /v1/messages ("": refused before it was checked)
    request_id: str = field(default_factory=new_request_id)
    started: float = field(default_factory=time.perf_counter)
    arrival: Arrival | None = None  # which front door, from which client (front_door.py)
    # -- the request as every check reads it, each set once (app.py)
    principal: Principal | None = None
    tags: list[str] = field(default_factory=list)
    model: str | None = None  # the one the body names, as the checks and routing read it (None: none, or unread)
    # -- admission
    admission: Admission | None = None  # what governance.admit reserved for this request, released at settle
    batch: BatchState | None = None  # a batch create's reservation, batches seen ended, or a results tap (batches.py)
    # -- the upstream and the end: written only by the methods below
    upstream: str | None = field(default=None, init=False)  # "anthropic"/"bedrock": answered (or was tried last)
    failover_cause: str | None = field(default=None, init=False)  # why the first upstream's answer was not used
    tap: UsageTap | None = field(default=None, init=False)  # reads the answer's body as it goes to the client
    status: int | None = field(default=None, init=False)  # what the client was sent
    error_source: ErrorSource | None = field(default=None, init=False)  # None: the request did not fail
    first_byte_at: float | None = field(default=None, init=False)
    finished_at: float | None = field(default=None, init=False)
    completed: bool = field(default=False, init=False)  # the upstream body ended normally (not cut off)

    # -- what happens: the upstream (routing.py, forwarding.respond) ----------------------------------------------

    def trying(self, upstream: str) -> None:
        """The request goes to `upstream` ("anthropic" or "bedrock"): the one that answers, or was tried last."""
        self.upstream = upstream

    def failing_over(self, cause: str) -> None:
        """The upstream tried is left for the next one, for `cause` (routing.failover_cause's, `unreachable` or
        `timeout`): nothing of its answer went to the client."""
        self.failover_cause = cause

    def answered(self, status: int, tap: UsageTap | None) -> None:
        """The upstream's answer is the client's: its status (an error status: the upstream failed the request) and
        the tap that reads its body (None: a Bedrock error, read whole and translated)."""
        self.status, self.tap = status, tap
        if status >= 400:
            self.error_source = "upstream"

    # -- what happens: the gateway's own answers (app.py) ----------------------------------------------------------

    def refused(self, status: int) -> None:
        """The gateway answers with its own error: it refused the request, or could not serve it."""
        self.status, self.error_source = status, "gateway"

    def client_left(self) -> None:
        """The client disconnected before the upstream's answer began: nobody failed it (nginx's 499)."""
        self.status, self.error_source = 499, None

    def cancelled(self) -> None:
        """Cancelled before any response existed (the server is stopping, or anything else that is not an
        Exception): unless something failed it before, the gateway did not serve it."""
        self.status = self.status or 499
        self.error_source = self.error_source or "gateway"

    # -- what happens: the answer's body (responses.py, forwarding.respond) ----------------------------------------

    def first_byte(self) -> None:
        """A byte of the answer's body goes to the client; the first one is the time to first byte."""
        if self.first_byte_at is None:
            self.first_byte_at = time.perf_counter()

    def body_ended(self) -> None:
        """The upstream's body ended normally: all of it went to the client (unless the client left)."""
        self.completed = True

    def broke_off(self) -> None:
        """The upstream broke off or fell silent mid-body: unless something failed it before, the upstream did."""
        self.error_source = self.error_source or "upstream"

    def finished(self) -> None:
        """The response's last byte went out, or it ended without it: the end of its latency (the first call
        counts)."""
        if self.finished_at is None:
            self.finished_at = time.perf_counter()

    # -- what readers read -------------------------------------------------------------------------------------

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
