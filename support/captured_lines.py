"""What the gateway writes to stdout (EMF blobs and JSON log lines), collected for assertions; and keys with tags.

Every gateway the tests start writes its EMF blobs and log lines to one `Output` (a runtime's stream); pointing its
`target` at `Lines` sees exactly the bytes Lambda would ship to CloudWatch Logs. Accounting runs in a background
task after the response, so a request's lines are read after draining the gateway (its access log line is the
last of them).
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

from anthropic_gateway import keys
from anthropic_gateway.storage import key_records

ACCESS_MESSAGE = "gateway request"
Record = dict[str, Any]  # one JSON line: an EMF blob or a log record


class Output:
    """The stream the tests' gateways write to: stdout as it was when the tests started (pytest's capture), or
    `target` while a test reads what is written; one whole line per write, as the gateway writes."""

    def __init__(self) -> None:
        self.default: IO[str] = sys.stdout
        self.target: Lines | None = None

    def write(self, text: str) -> int:
        (self.target or self.default).write(text)
        return len(text)

    def flush(self) -> None:
        (self.target or self.default).flush()


@dataclass
class RequestLines:
    blobs: list[Record]  # EMF blobs carrying the request id as metadata, in the order written
    access: Record  # the access log line

    def overall(self) -> Record:
        return self._one(lambda blob: "Model" in blob)

    def by_tag(self) -> dict[str, Record]:
        return {blob["Tag"]: blob for blob in self.blobs if "Tag" in blob}

    def by_status(self) -> Record:
        return self._one(lambda blob: "StatusClass" in blob)

    def _one(self, match: Callable[[Record], bool]) -> Record:
        found = [blob for blob in self.blobs if match(blob)]
        assert len(found) == 1, found
        return found[0]


class Lines:
    def __init__(self, drain: Callable[[], None]) -> None:
        self._drain = drain  # returns once the gateway's accounting has written everything
        self._lock = threading.Lock()
        self._partial = ""
        self.lines: list[str] = []

    # The stream interface Output forwards to.
    def write(self, text: str) -> None:
        with self._lock:
            *complete, self._partial = (self._partial + text).split("\n")
            self.lines.extend(complete)

    def flush(self) -> None:
        pass

    def records(self) -> list[Record]:
        with self._lock:
            lines = list(self.lines)
        return [json.loads(line) for line in lines if line.strip()]

    def text(self) -> str:
        with self._lock:
            return "\n".join([*self.lines, self._partial])

    def for_request(self, request_id: str) -> RequestLines:
        """The request's blobs and access line, once the gateway has settled what it has served."""
        self._drain()
        records = [r for r in self.records() if r.get("request_id") == request_id]
        access = [r for r in records if r.get("message") == ACCESS_MESSAGE]
        assert len(access) == 1, f"{len(access)} access log lines for {request_id}:\n{self.text()[-3000:]}"
        return RequestLines(blobs=[r for r in records if "_aws" in r], access=access[0])


def metric_values(blob: Record) -> dict[str, float]:
    """{metric name: value} of an EMF blob (Powertools writes each value as a one-element list)."""
    names = [metric["Name"] for directive in blob["_aws"]["CloudWatchMetrics"] for metric in directive["Metrics"]]
    values = {}
    for name in names:
        value = blob[name]
        values[name] = value[0] if isinstance(value, list) and len(value) == 1 else value
    return values


def dimension_sets(blob: Record) -> list[list[str]]:
    return [dims for directive in blob["_aws"]["CloudWatchMetrics"] for dims in directive["Dimensions"]]


def stored_key(**fields: Any) -> str:
    """A virtual key whose record (alias, default tags...) is written straight to the table.

    Independent of the key API's request shapes, which these tests are not about. Needs moto (the `aws` fixture).
    """
    plain = keys.new_key()
    now = keys.utcnow().isoformat()
    record = key_records.KeyRecord(
        token=keys.hash_key(plain), key_name=keys.key_name(plain), created_at=now, updated_at=now, **fields
    )
    key_records.put_new(record)  # as another instance's /key/generate stores it: the gateways read it from the table
    return plain
