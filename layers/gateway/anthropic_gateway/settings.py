"""Every setting the gateway reads, in one place, read once from the environment.

The SAM template sets these for the Lambda functions and `python -m anthropic_gateway serve` sets them for
local runs. Below the doors no other module of the package reads `os.environ`; the doors do (`local` sets what a
local run needs, `cli` reads its own MASTER_KEY and GATEWAY_URL), and so do the libraries, for their own settings
(boto3: credentials and AWS_ENDPOINT_URL; Powertools: POWERTOOLS_* and LOG_LEVEL).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from .bedrock_models import BedrockConfigError, load_model_ids

# Lambda's synchronous invocation payload limit; the local server enforces the same so behaviour matches.
LAMBDA_MAX_REQUEST_BYTES = 6 * 1024 * 1024


@dataclass(frozen=True)
class Settings:
    anthropic_api_base: str
    table_name: str
    upstream_key_secret: str
    master_key_secret: str
    secrets_max_age: int
    key_cache_ttl: float
    audit_retention_days: int
    max_request_bytes: int
    default_anthropic_version: str
    upstream_connect_timeout: float
    upstream_read_timeout: float
    upstream_write_timeout: float
    upstream_pool_timeout: float
    upstream_ca_bundle: str | None
    metrics_namespace: str
    unknown_model_rate: str
    public_base_url: str | None
    spend_flush_seconds: float
    batch_settle_grace_hours: float
    # Amazon Bedrock as a second upstream (docs/bedrock.md).
    default_upstreams: tuple[str, ...]  # a key's failover order when it sets none
    aws_region: str
    bedrock_base_url: str
    bedrock_model_ids: str  # raw JSON merged over the shipped table (bedrock_models.load_model_ids); checked here
    bedrock_api_key_secret: str | None  # a Bedrock API key instead of SigV4 with the function's role
    bedrock_failover_on_429: bool
    # AWS faults (aws.py, ledger.py, keys.py, secrets.py)
    aws_connect_timeout: float
    aws_read_timeout: float
    aws_max_attempts: int
    aws_deadline: float
    aws_threads: int
    stale_seconds: float
    ledger_max_entries: int
    ledger_retry_seconds: float
    shutdown_grace_seconds: float
    # Which request tags get a CloudWatch `Tag` dimension value of their own (metrics.py).
    metric_tags: tuple[str, ...]
    # What a client can cost the uvicorn doors before it is authenticated (server_protocol.py).
    max_request_head_bytes: int
    max_request_headers: int
    request_head_timeout: float
    keep_alive_timeout: float
    max_connections: int


class SettingsError(ValueError):
    """An environment variable the gateway cannot run with; raised when settings are first read."""


# The upstreams a key may list, in any order (the list is its failover order).
UPSTREAM_NAMES = ("anthropic", "bedrock")


def parse_upstreams(names: Iterable[str]) -> list[str]:
    """A failover order as given, checked: known names, at least one, none twice. ValueError says what is wrong."""
    order = list(names)
    if not order:
        raise ValueError(f"name at least one upstream: {', '.join(UPSTREAM_NAMES)}")
    unknown = [name for name in order if name not in UPSTREAM_NAMES]
    if unknown:
        raise ValueError(f"unknown upstream {unknown[0][:40]!r}; expected {' or '.join(UPSTREAM_NAMES)}")
    if len(set(order)) != len(order):
        raise ValueError("each upstream at most once (the list is the failover order)")
    return order


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw[:40]!r}: expected a number") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    env = os.environ.get
    region = env("AWS_REGION") or env("AWS_DEFAULT_REGION") or "us-east-1"  # Lambda sets AWS_REGION
    return Settings(
        anthropic_api_base=env("ANTHROPIC_API_BASE", "https://api.anthropic.com").rstrip("/"),
        table_name=env("GATEWAY_TABLE_NAME", "anthropic-gateway"),
        upstream_key_secret=env("UPSTREAM_KEY_SECRET_NAME", "anthropic-gateway/upstream-key"),
        master_key_secret=env("MASTER_KEY_SECRET_NAME", "anthropic-gateway/master-key"),
        secrets_max_age=int(_float("SECRETS_MAX_AGE", 300)),
        key_cache_ttl=_float("KEY_CACHE_TTL", 10.0),
        # How long the audit log keeps an entry (DynamoDB's TTL deletes it after), in days.
        audit_retention_days=_whole_days("AUDIT_RETENTION_DAYS", _float("AUDIT_RETENTION_DAYS", 365)),
        max_request_bytes=int(_float("MAX_REQUEST_BYTES", LAMBDA_MAX_REQUEST_BYTES)),
        default_anthropic_version=env("DEFAULT_ANTHROPIC_VERSION", "2023-06-01"),
        upstream_connect_timeout=_float("UPSTREAM_CONNECT_TIMEOUT", 10.0),
        # The longest silence between two bytes of the upstream's answer. Long extended-thinking responses can be
        # silent for minutes; it stays under each door's function timeout (template.yaml sets it per door) so the
        # gateway answers 504 and releases the request's holds before Lambda stops the invocation.
        upstream_read_timeout=_float("UPSTREAM_READ_TIMEOUT", 840.0),
        # The longest wait for the upstream to take the request body once it stopped reading.
        upstream_write_timeout=_float("UPSTREAM_WRITE_TIMEOUT", 30.0),
        # The wait for a free upstream connection when all of the pool's are busy.
        upstream_pool_timeout=_float("UPSTREAM_POOL_TIMEOUT", 10.0),
        # A PEM file of CAs the upstream's certificate must chain to instead of certifi's (tests only).
        upstream_ca_bundle=env("UPSTREAM_CA_BUNDLE") or None,
        metrics_namespace=env("POWERTOOLS_METRICS_NAMESPACE", "AnthropicGateway"),
        unknown_model_rate=env("UNKNOWN_MODEL_RATE", "max"),
        public_base_url=env("GATEWAY_PUBLIC_URL") or None,
        # How long per-request counters (spend, tokens, tag spend) are summed in memory before one write.
        spend_flush_seconds=_float("SPEND_FLUSH_SECONDS", 0.5),
        # How long after a batch is seen ended its results may still be fetched to be billed exactly (batches.py).
        batch_settle_grace_hours=_float("BATCH_SETTLE_GRACE_HOURS", 24.0),
        # -- Amazon Bedrock as a second upstream (docs/bedrock.md) --
        # A key's failover order when it sets none.
        default_upstreams=_upstreams("DEFAULT_UPSTREAMS", env("DEFAULT_UPSTREAMS", "anthropic") or "anthropic"),
        aws_region=region,
        # The SigV4 service and region are derived from this host (bedrock.signing_scope), so a fake can stand in.
        bedrock_base_url=(env("BEDROCK_BASE_URL") or f"https://bedrock-mantle.{region}.api.aws/anthropic").rstrip("/"),
        bedrock_model_ids=_model_ids(env("BEDROCK_MODEL_IDS", "")),
        bedrock_api_key_secret=env("BEDROCK_API_KEY_SECRET_NAME") or None,
        # Anthropic's 429 is a rate limit the client (or the organisation) hit, not an outage: failing over spends
        # Bedrock capacity on traffic Anthropic asked to slow down, so the operator opts in.
        bedrock_failover_on_429=_flag("BEDROCK_FAILOVER_ON_429", env("BEDROCK_FAILOVER_ON_429", "false")),
        # AWS faults: one call is bounded by about attempts x (connect + read) s; a request's AWS work by the deadline,
        # after which it answers 503 (docs/operations.md has the measured outage behaviour).
        aws_connect_timeout=_float("AWS_CONNECT_TIMEOUT", 1.0),
        aws_read_timeout=_float("AWS_READ_TIMEOUT", 1.0),
        aws_max_attempts=int(_float("AWS_MAX_ATTEMPTS", 2)),
        aws_deadline=_float("AWS_DEADLINE", 2.5),
        aws_threads=int(_float("AWS_THREADS", 16)),
        # How long past its TTL a cached key record or secret keeps serving while AWS cannot be reached.
        stale_seconds=_float("AWS_STALE_SECONDS", 300.0),
        # Counter writes kept for retry while DynamoDB fails (oldest kept, newer ones dropped and logged beyond).
        ledger_max_entries=int(_float("LEDGER_MAX_ENTRIES", 10_000)),
        ledger_retry_seconds=_float("LEDGER_RETRY_SECONDS", 0.5),  # first retry; doubles up to 30 s
        # SIGTERM: how long open streams may finish before the process flushes and exits (Lambda gives ~2 s).
        shutdown_grace_seconds=_float("SHUTDOWN_GRACE_SECONDS", 1.5),
        # Metric dimensions: which request tags get a `Tag` dimension value of their own (each distinct value is a
        # billed custom metric). Comma-separated tags and `prefix*` patterns, besides each key's default tags.
        metric_tags=tuple(tag.strip() for tag in env("METRIC_TAGS", "").split(",") if tag.strip()),
        # -- the uvicorn doors (run.sh, serve): bounds on an unauthenticated client (docs/operations.md) --
        # A request line and headers larger than this, or with more headers, are refused (431) unread.
        max_request_head_bytes=int(_float("MAX_REQUEST_HEAD_BYTES", 64 * 1024)),
        max_request_headers=int(_float("MAX_REQUEST_HEADERS", 100)),
        # From a connection's first byte (or its opening) to the end of a request's head; then 408 and closed.
        request_head_timeout=_float("REQUEST_HEAD_TIMEOUT", 10.0),
        # An idle keep-alive connection is closed after this long (run.sh sets 900 s: the adapter is its client).
        keep_alive_timeout=_float("KEEP_ALIVE_TIMEOUT", 5.0),
        # Open connections per process; one more is answered 503 and closed.
        max_connections=int(_float("MAX_CONNECTIONS", 2048)),
    )


def _whole_days(name: str, value: float) -> int:
    if not 1 <= value <= 100 * 365 or value != int(value):
        raise SettingsError(f"{name}={value:g}: expected a whole number of days, 1 to 36500")
    return int(value)


def _upstreams(name: str, raw: str) -> tuple[str, ...]:
    try:
        return tuple(parse_upstreams(part.strip() for part in raw.split(",")))
    except ValueError as exc:
        raise SettingsError(f"{name}={raw[:100]!r}: {exc}") from None


def _model_ids(raw: str) -> str:
    """BEDROCK_MODEL_IDS as given, once the table it makes is known to load (a bad one stops the start)."""
    if raw.strip():
        try:
            load_model_ids(raw)
        except BedrockConfigError as exc:
            raise SettingsError(str(exc)) from None
    return raw


def _flag(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise SettingsError(f"{name}={raw[:40]!r}: expected true or false")
