"""What a Message Batches request carries from its answer to its accounting (batches.py): `Exchange.batch`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from decimal import Decimal

from . import pricing
from .storage.scopes import Scope
from .storage.spend import TOKEN_COUNTERS
from .usage import Usage, UsageTap

_ZERO = Decimal(0)


@dataclass
class CreateHold:
    """A batch create in flight: what it reserved, and what became of it."""

    key_id: str
    estimate: Decimal
    reserved: Decimal  # on each budget of `held`; 0 without one
    reservation_id: str  # names the holds (governance.reserve_budget)
    scopes: tuple[Scope, ...] = ()  # the create's scopes (governance.scopes): its cost is recorded on each
    held: tuple[Scope, ...] = ()  # those whose budget holds `reserved`
    batch_id: str | None = None
    remembered: bool = False


@dataclass
class ResultsTap(UsageTap):
    """Sums the usage of a batch's JSONL results as they are relayed. Its own `usage` stays unseen: fetching
    results costs nothing; the batch's cost is settled on the batch (batches.settle)."""

    batch_id: str = ""
    standard_cost: Decimal = _ZERO  # at standard prices; the batch multiplier applies once, at settle
    total: Usage = field(default_factory=Usage)
    unknown_models: pricing.UnknownModels = field(kw_only=True)  # the runtime's price of models pricing.json lacks
    _line: bytearray = field(default_factory=bytearray)

    def feed(self, chunk: bytes) -> None:
        self._line += chunk
        end = self._line.rfind(b"\n")
        if end < 0:
            return
        lines, self._line = bytes(self._line[:end]), self._line[end + 1 :]
        for line in lines.split(b"\n"):
            self._result(line)

    def close(self) -> None:
        if self._line:
            self._result(bytes(self._line))
            self._line.clear()

    def _result(self, line: bytes) -> None:
        if b'"succeeded"' not in line:  # errored, canceled, expired: not billed
            return
        try:
            entry = json.loads(line)
            result = entry["result"]
            message = result["message"]
            if result["type"] != "succeeded" or not isinstance(message["usage"], dict):
                return
        except (ValueError, TypeError, KeyError, RecursionError):
            return
        usage = Usage()
        usage.update(message["usage"])
        model = message.get("model") if isinstance(message.get("model"), str) else None
        self.standard_cost += pricing.cost_usd(model, usage, self.unknown_models)
        for name in TOKEN_COUNTERS:
            setattr(self.total, name, getattr(self.total, name) + getattr(usage, name))


@dataclass
class BatchState:
    """What a Message Batches request carries from its answer to its accounting, `Exchange.batch`. A request is
    one of a create (`hold`), a retrieve or list whose answer showed batches ended (`seen_ended`: their grace
    period starts) or a results fetch (`results`), so one member is set; batches.settle acts on each that is."""

    hold: CreateHold | None = None
    seen_ended: list[str] = field(default_factory=list)
    results: ResultsTap | None = None
