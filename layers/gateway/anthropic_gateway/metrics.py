"""Per-request CloudWatch metrics (EMF on stdout) and the access log line, written once a request is over.

Lambda ships stdout to CloudWatch Logs, which turns every EMF blob into metrics: no agent, no API call, and
nothing in front of the response (accounting writes each request's `lines` after its last byte).

The blobs of one request share a timestamp and carry its request id, key alias, team id and user id as metadata
(searchable in Logs Insights, never dimensions):
  - one with dimension sets [service], [service, Model], [service, Upstream] (anthropic or bedrock: which one
    answered, once a request reached the routing step) and [service, Team] (a request of a team's key): the
    totals, the per-model, per-upstream and per-team view (a request has one team, so it shares this blob);
  - one per tag with [service, Tag]. An EMF blob gives each dimension one value (Powertools merges every
    dimension set into one flat object), so tags cannot share a blob;
  - one with [service, StatusClass] carrying only Requests and the two error counts: errors by 2xx/4xx/5xx
    without multiplying every token metric by the status classes;
  - one with [service, Cause] carrying Failovers = 1 when the request failed over (routing.py). Its own set, so no
    other metric is multiplied by causes.
Dimension values are bounded, whatever clients send (each distinct value is a custom metric, billed monthly):
`Model` is a model id pricing.json knows (`other` for any other, `unknown` when there is none), and `Tag` is a
tag the operator chose (the key's default tags, registered tags, METRIC_TAGS) or `other`, and `Team` a team an admin
created (the runtime's team registry: storage/teams.py, at most MAX_DIMENSION_TEAMS) or `other`; see `model_dimension`,
`tag_dimension`, `team_dimension`.
Blobs and the access line are serialised here, straight to the EMF spec and to the Powertools Logger's JSON shape:
building them through a Powertools provider per blob and the logging machinery cost five times as much CPU per
request (issue 11). Powertools still defines the units (`MetricUnit`), the service name and every other log line;
tests/test_metrics.py checks the blobs against Powertools' own serialisation.

`Metrics` is one runtime's writer (runtime.py): its stream, namespace and service, the Tag values it gave out, and
the runtime's team and tag registries it reads.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from decimal import Decimal
from typing import IO, TYPE_CHECKING, Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.metrics.functions import is_metrics_disabled as _is_metrics_disabled

from . import pricing
from .exchange import Exchange
from .settings import Settings
from .storage.registry import Registry
from .storage.tags import TagRecord
from .storage.teams import TeamRecord
from .usage import Usage

if TYPE_CHECKING:
    from .storage.key_records import KeyRecord

MetricValues = list[tuple[str, float]]  # (metric name, value); a metric's unit is its own (METRIC_UNITS)

# Everything the gateway emits; template.yaml's dashboard is checked against these (tests/test_deploy_*).
METRIC_UNITS = {
    "Requests": MetricUnit.Count,
    "InputTokens": MetricUnit.Count,
    "OutputTokens": MetricUnit.Count,
    "CacheCreationInputTokens": MetricUnit.Count,
    "CacheReadInputTokens": MetricUnit.Count,
    "CostUSD": MetricUnit.NoUnit,
    "Latency": MetricUnit.Milliseconds,
    "TimeToFirstByte": MetricUnit.Milliseconds,
    "UpstreamErrors": MetricUnit.Count,
    "GatewayErrors": MetricUnit.Count,
    "Failovers": MetricUnit.Count,
}
METRIC_NAMES = tuple(METRIC_UNITS)
DIMENSION_NAMES = ("service", "Model", "Tag", "StatusClass", "Upstream", "Cause", "Team")
DIMENSION_SETS = (
    ("service",),
    ("service", "Model"),
    ("service", "Tag"),
    ("service", "StatusClass"),
    ("service", "Upstream"),
    ("service", "Cause"),
    ("service", "Team"),
)
UPSTREAMS = ("anthropic", "bedrock")  # the only Upstream values
FAILOVER_CAUSES = ("status_529", "status_5xx", "status_429", "unreachable", "timeout")  # the only Cause values
STATUS_METRICS = ("Requests", "UpstreamErrors", "GatewayErrors")  # the only ones emitted per StatusClass
UNKNOWN_MODEL = "unknown"  # no model named or answered (a 401, GET /v1/models)
OTHER = "other"  # the one value for every model and tag that does not get its own
# Distinct tags that METRIC_TAGS patterns (`team:*`) may turn into Tag values per runtime; later ones are `other`.
MAX_PATTERN_TAG_VALUES = 100

_TOKENS = (
    ("InputTokens", "input_tokens"),
    ("OutputTokens", "output_tokens"),
    ("CacheCreationInputTokens", "cache_creation_input_tokens"),
    ("CacheReadInputTokens", "cache_read_input_tokens"),
)
logger = Logger(child=True)
ACCESS_MESSAGE = "gateway request"
_LOCATION = "access_line"  # where Powertools says a line was logged (its funcName): the function that builds this one


class Metrics:
    """One runtime's EMF blobs and access log lines: the stream they go to (Lambda ships stdout to CloudWatch),
    the namespace (POWERTOOLS_METRICS_NAMESPACE) and service (POWERTOOLS_SERVICE_NAME) they carry, and the tags a
    METRIC_TAGS pattern gave a Tag value of their own."""

    def __init__(
        self, settings: Settings, stream: IO[str], teams: Registry[TeamRecord], tags: Registry[TagRecord]
    ) -> None:
        self.stream = stream
        self.teams, self.tags = teams, tags  # the runtime's registries (read from memory)
        self.namespace = settings.metrics_namespace
        self.metric_tags = settings.metric_tags
        self.bedrock_model_ids = settings.bedrock_model_ids  # which model a Bedrock id is (the Model dimension)
        self.service = logger.service  # Powertools' own reading of POWERTOOLS_SERVICE_NAME
        # POWERTOOLS_METRICS_DISABLED / POWERTOOLS_DEV, read once like every other setting, not per request.
        self.disabled = _is_metrics_disabled()
        self.max_pattern_tags = MAX_PATTERN_TAG_VALUES
        self._pattern_tags: set[str] = set()
        self._pattern_tags_lock = threading.Lock()
        self._log = logging.getLogger(self.service)  # the Powertools logger of the service: its level is LOG_LEVEL

    def route_logs(self) -> None:
        """Point the service's Powertools logger (every log line of the gateway) at this stream, so log lines and
        EMF blobs share one stream, each written whole. Its handler is set up by whichever Logger of the service
        is created first; logging is the process's, so a process runs one runtime (tests give theirs one stream)."""
        powertools = Logger(service=self.service, stream=self.stream)
        handler = powertools.logger_handler
        if isinstance(handler, logging.StreamHandler) and handler.stream is not self.stream:
            handler.setStream(self.stream)

    def lines(self, exchange: Exchange, cost: Decimal) -> list[str]:
        """The request's EMF blobs, then its access log line (a failure of the first still gives the second), as
        JSON lines for `write`."""
        usd = float(cost)  # exact until here: EMF and the log line are JSON numbers
        lines: list[str] = []
        try:
            if not self.disabled:
                lines += self.emf_blobs(exchange, usd)
        except Exception:
            logger.exception("metrics failed", extra={"request_id": exchange.request_id})
        if self._log.isEnabledFor(logging.INFO):
            lines.append(_json_line(self.access_line(access_fields(exchange, usd))))
        return lines

    def write(self, lines: list[str]) -> None:
        """Write `lines` (of any number of requests) in one write, flushed: on the streaming door stdout is a pipe
        that Python buffers in blocks, and what sits in the buffer reaches CloudWatch only when 8 KB have piled up
        or the process ends (the Powertools logger's handler flushes its own lines; these bypass it)."""
        if lines:
            self.stream.write("".join(lines))
            self.stream.flush()

    def access_line(self, fields: dict[str, Any], now: float | None = None) -> dict[str, Any]:
        """The access log record as the Powertools Logger writes one (its default keys first, None values left
        out), built directly: the logging machinery and Powertools' formatter were most of the cost of a request's
        line."""
        moment = time.time() if now is None else now
        date, zone = _local_second(int(moment))
        stamp = f"{date},{int(moment % 1 * 1000):03d}{zone}"
        line = {
            "level": "INFO",
            "location": _LOCATION,
            "message": ACCESS_MESSAGE,
            "timestamp": stamp,
            "service": self.service,
        }
        for name, value in fields.items():
            if value is not None:
                line[name] = value
        return line

    def emf_blobs(self, exchange: Exchange, cost: float, timestamp_ms: int | None = None) -> list[str]:
        """The request's EMF blobs, one JSON line each (see the module's docstring for which). Its metric values are
        serialised once and shared by the blobs that carry them all."""
        timestamp = timestamp_ms or int(time.time() * 1000)
        shape = (self.namespace, self.service)
        metadata = _metadata(exchange)
        values = _values(exchange, cost)
        names, numbers = _metric_members(values)

        dimensions, sets = {"Model": model_dimension(exchange, self.bedrock_model_ids)}, _MAIN_SETS
        if exchange.upstream in UPSTREAMS:
            dimensions["Upstream"], sets = exchange.upstream, _MAIN_SETS_WITH_UPSTREAM
        if (team := team_dimension(exchange, self.teams)) is not None:
            dimensions["Team"], sets = team, (*sets, _TEAM_SET)
        blobs = [_blob(shape, sets, dimensions, names, metadata + numbers, timestamp)]
        for tag in self.tag_dimensions(exchange):
            blobs.append(_blob(shape, _TAG_SETS, {"Tag": tag}, names, metadata + numbers, timestamp))
        status_names, status_numbers = _metric_members([value for value in values if value[0] in STATUS_METRICS])
        status = {"StatusClass": status_class(exchange.status)}
        blobs.append(_blob(shape, _STATUS_SETS, status, status_names, metadata + status_numbers, timestamp))
        if exchange.failover_cause in FAILOVER_CAUSES:
            failover_names, failover_numbers = _metric_members([("Failovers", 1)])
            cause = {"Cause": exchange.failover_cause}
            blobs.append(_blob(shape, _CAUSE_SETS, cause, failover_names, metadata + failover_numbers, timestamp))
        return blobs

    def tag_dimensions(self, exchange: Exchange) -> list[str]:
        """The request's tags as Tag dimension values, each once (so `other` counts a request once, however many of
        its tags it stands for). The access log and /spend/tags keep every tag as sent."""
        record = _record(exchange)
        defaults = record.tags if record and isinstance(record.tags, list) else []
        return list(dict.fromkeys(self.tag_dimension(tag, defaults) for tag in exchange.tags))

    def tag_dimension(self, tag: str, key_defaults: list[str]) -> str:
        """`tag` when the operator chose it as a metric dimension, else `other`.

        Chosen: the key's default tags (set by an admin), a registered tag (/tag/new; read from memory), a tag
        listed in METRIC_TAGS, or one matching a `prefix*` pattern there while fewer than `max_pattern_tags` distinct
        tags have matched in this runtime.
        """
        allowed = self.metric_tags
        if tag in key_defaults or tag in allowed or tag in self.tags.snapshot():
            return tag
        if not any(pattern.endswith("*") and tag.startswith(pattern[:-1]) for pattern in allowed):
            return OTHER
        with self._pattern_tags_lock:
            if tag in self._pattern_tags or len(self._pattern_tags) < self.max_pattern_tags:
                self._pattern_tags.add(tag)
                return tag
        return OTHER


@functools.lru_cache(maxsize=2)  # formatted once per second, not per request
def _local_second(second: int) -> tuple[str, str]:
    local = time.localtime(second)
    return time.strftime("%Y-%m-%d %H:%M:%S", local), time.strftime("%z", local)


# One encoder for every line: json.dumps with separators builds a new JSONEncoder per call. No circular check: the
# records are built here, flat.
_encoder = json.JSONEncoder(separators=(",", ":"), check_circular=False)
_quote = json.encoder.encode_basestring_ascii  # a str as a JSON string, as the encoder writes it (C)


def _json_line(record: dict[str, Any]) -> str:
    return _encoder.encode(record) + "\n"


DimensionSets = tuple[tuple[str, ...], ...]
_MAIN_SETS: DimensionSets = (("service",), ("service", "Model"))
_MAIN_SETS_WITH_UPSTREAM: DimensionSets = (*_MAIN_SETS, ("service", "Upstream"))
_TEAM_SET = ("service", "Team")
_TAG_SETS: DimensionSets = (("service", "Tag"),)
_STATUS_SETS: DimensionSets = (("service", "StatusClass"),)
_CAUSE_SETS: DimensionSets = (("service", "Cause"),)


def _blob(
    shape: tuple[str, str],
    sets: DimensionSets,
    dimensions: dict[str, str],
    names: tuple[str, ...],
    rest: str,
    timestamp: int,
) -> str:
    """One blob: the `_aws` directive for its shape (namespace, service), service and the `dimensions`' values, then
    `rest` (metadata and values, already serialised)."""
    members = "".join([f",{_quote(name)}:{_quote(value)}" for name, value in dimensions.items()])
    return _aws_prefix(*shape, sets, names) % timestamp + members + rest


def _metadata(exchange: Exchange) -> str:
    """The blob members after its dimensions: request id, key alias, team and user ids (plain members, never
    dimensions: any number of values costs nothing more)."""
    members = ',"request_id":' + _quote(exchange.request_id)
    if (record := _record(exchange)) is not None:
        for name, value in (("key_alias", record.key_alias), ("team_id", record.team_id), ("user_id", record.user_id)):
            if value:
                members += f',"{name}":' + _quote(value)
    return members


def _metric_members(values: MetricValues) -> tuple[tuple[str, ...], str]:
    """The metrics' names (for the blob's directive) and their members with the blob's end: each value a
    one-element list of a float, as Powertools writes it."""
    names = tuple(name for name, _ in values)
    return names, _numbers_format(names) % tuple(value for _, value in values)


@functools.lru_cache(maxsize=64)
def _numbers_format(names: tuple[str, ...]) -> str:
    """A format for the values of `names`: counts are whole numbers, written as json writes their float (1 is
    1.0, below 2**53); the others are floats, %r as json writes them. Names are ours: nothing to escape."""
    return "".join(f',"{name}":[%d.0]' if name in _COUNTS else f',"{name}":[%r]' for name in names) + "}\n"


_COUNTS = frozenset(name for name, unit in METRIC_UNITS.items() if unit is MetricUnit.Count)


@functools.lru_cache(maxsize=256)  # shapes: the dimension sets times the metric lists (TimeToFirstByte or not)
def _aws_prefix(namespace: str, service: str, dimension_sets: DimensionSets, metrics: tuple[str, ...]) -> str:
    """A blob's JSON (https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Specification.html)
    up to the service member, with `%d` where the timestamp goes: the `_aws` directive depends only on the blob's
    shape, so it is built once per shape. Members follow in the order Powertools' provider writes them: dimensions,
    metadata, metrics."""
    directive = {
        "Namespace": namespace,
        "Dimensions": [list(names) for names in dimension_sets],
        "Metrics": [{"Name": name, "Unit": METRIC_UNITS[name].value} for name in metrics],
    }
    directive_json = _encoder.encode(directive).replace("%", "%%")
    service_json = _quote(service).replace("%", "%%")
    return '{"_aws":{"Timestamp":%d,"CloudWatchMetrics":[' + directive_json + ']},"service":' + service_json


def _values(exchange: Exchange, cost: float) -> MetricValues:
    usage = exchange.usage or Usage()
    values: MetricValues = [("Requests", 1)]
    values += [(metric, getattr(usage, field)) for metric, field in _TOKENS]
    values += [("CostUSD", cost), ("Latency", exchange.latency_ms)]
    # Only streams: for a JSON body the first byte comes with the last, and would blur the streaming percentiles.
    if is_stream(exchange) and exchange.time_to_first_byte_ms is not None:
        values.append(("TimeToFirstByte", exchange.time_to_first_byte_ms))
    values.append(("UpstreamErrors", int(exchange.error_source == "upstream")))
    values.append(("GatewayErrors", int(exchange.error_source == "gateway")))
    return values


def model_dimension(exchange: Exchange, bedrock_model_ids: str) -> str:
    """The model as a dimension value: the pricing.json id of the model the upstream answered with (else of the
    one requested); `other` for a model pricing.json does not know, `unknown` when there is none
    (`bedrock_model_ids`: as for `pricing.resolve_model`).

    Never arbitrary input, from the client or echoed by the upstream: every distinct value is a billed custom metric.
    """
    model = exchange.response_model
    if not model:
        return UNKNOWN_MODEL
    return pricing.resolve_model(model[:256], bedrock_model_ids) or OTHER


def team_dimension(exchange: Exchange, teams: Registry[TeamRecord]) -> str | None:
    """The Team value of a request of a team's key: its team id when the team is in `teams`, the registry of teams
    admins created (read from memory), else `other`; None for a key without a team (and the master key). CloudWatch
    takes only ASCII dimension values: a team id with other characters is `other` too (the access log keeps it)."""
    record = _record(exchange)
    if record is None or not record.team_id:
        return None
    team_id = record.team_id
    return team_id if team_id.isascii() and team_id in teams.snapshot() else OTHER


def status_class(status: int | None) -> str:
    return f"{status // 100}xx" if status else "unknown"


def is_stream(exchange: Exchange) -> bool:
    content_type = exchange.tap.content_type if exchange.tap else ""
    return content_type.split(";", 1)[0].strip().lower() == "text/event-stream"


def _record(exchange: Exchange) -> KeyRecord | None:
    return exchange.principal.record if exchange.principal else None


def access_fields(exchange: Exchange, cost: float) -> dict[str, Any]:
    """The access log line's fields: what happened and what it cost; never a key, a secret or a body."""
    usage = exchange.usage or Usage()
    record = _record(exchange)
    ttfb = exchange.time_to_first_byte_ms
    principal = exchange.principal
    return {
        "request_id": exchange.request_id,
        "method": exchange.method,
        "route": exchange.path or None,  # None when the request failed before its path was checked
        "status": exchange.status,
        "error_source": exchange.error_source,
        "stream": is_stream(exchange),
        "completed": exchange.completed,  # False: the body was cut off (client gone, upstream broke off)
        "model": (exchange.response_model or "")[:200] or None,
        "latency_ms": round(exchange.latency_ms, 1),
        "time_to_first_byte_ms": round(ttfb, 1) if ttfb is not None else None,
        **{field: getattr(usage, field) for _, field in _TOKENS},
        "usage_estimated": bool(exchange.tap and exchange.tap.usage_estimated),  # the tokens: an upper bound
        "cost_usd": cost,
        "tags": list(exchange.tags),
        "auth": None if principal is None else "master" if principal.is_master else "virtual_key",
        "key_alias": record.key_alias if record else None,
        "key_hash_prefix": record.token[:12] if record else None,  # of the SHA-256 hash, never of the key
        "team_id": record.team_id if record else None,
        "user_id": record.user_id if record else None,
        "session_id": exchange.arrival.client_session() if exchange.arrival else None,  # Claude Code's session
        "upstream": exchange.upstream,  # anthropic or bedrock: which answered (None: refused before routing)
        "failover_cause": exchange.failover_cause,  # set when the first upstream's answer was not used
        **_front_door_fields(exchange),
    }


def _front_door_fields(exchange: Exchange) -> dict[str, str | None]:
    """Which door (function_url, rest_api, http_api, direct), the client's address as that door saw it, and the
    door's own request id (its logs show it): front_door.py."""
    door = exchange.arrival.front_door() if exchange.arrival else None
    if door is None:
        return {"door": None, "client_ip": None, "edge_request_id": None}
    return {"door": door.door, "client_ip": door.client_ip, "edge_request_id": door.edge_request_id}
