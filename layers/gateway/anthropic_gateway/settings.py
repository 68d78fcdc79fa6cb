"""Every setting the gateway reads, in one place, read once from the environment.

The SAM template sets these for the Lambda functions and `python -m anthropic_gateway serve` sets them for
local runs; nothing else in the package touches `os.environ`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

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
    max_request_bytes: int
    default_anthropic_version: str
    upstream_connect_timeout: float
    upstream_read_timeout: float
    metrics_namespace: str
    unknown_model_rate: str
    public_base_url: str | None
    spend_flush_seconds: float
    metric_tags: tuple[str, ...]


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    return float(raw) if raw not in (None, "") else default


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    env = os.environ.get
    return Settings(
        anthropic_api_base=env("ANTHROPIC_API_BASE", "https://api.anthropic.com").rstrip("/"),
        table_name=env("GATEWAY_TABLE_NAME", "anthropic-gateway"),
        upstream_key_secret=env("UPSTREAM_KEY_SECRET_NAME", "anthropic-gateway/upstream-key"),
        master_key_secret=env("MASTER_KEY_SECRET_NAME", "anthropic-gateway/master-key"),
        secrets_max_age=int(_float("SECRETS_MAX_AGE", 300)),
        key_cache_ttl=_float("KEY_CACHE_TTL", 10.0),
        max_request_bytes=int(_float("MAX_REQUEST_BYTES", LAMBDA_MAX_REQUEST_BYTES)),
        default_anthropic_version=env("DEFAULT_ANTHROPIC_VERSION", "2023-06-01"),
        upstream_connect_timeout=_float("UPSTREAM_CONNECT_TIMEOUT", 10.0),
        # Long extended-thinking responses can be silent for minutes; Lambda's own cap is 15 minutes.
        upstream_read_timeout=_float("UPSTREAM_READ_TIMEOUT", 900.0),
        metrics_namespace=env("POWERTOOLS_METRICS_NAMESPACE", "AnthropicGateway"),
        unknown_model_rate=env("UNKNOWN_MODEL_RATE", "max"),
        public_base_url=env("GATEWAY_PUBLIC_URL") or None,
        # How long per-request counters (spend, tokens, tag spend) are summed in memory before one write.
        spend_flush_seconds=_float("SPEND_FLUSH_SECONDS", 0.5),
        # Metric dimensions: which request tags get a `Tag` dimension value of their own (each distinct value is a
        # billed custom metric). Comma-separated tags and `prefix*` patterns, besides each key's default tags.
        metric_tags=tuple(tag.strip() for tag in env("METRIC_TAGS", "").split(",") if tag.strip()),
    )
