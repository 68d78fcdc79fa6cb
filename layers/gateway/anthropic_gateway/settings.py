"""Every setting the gateway reads, in one place, read once from the environment.

The SAM template sets these for the Lambda functions and `python -m anthropic_gateway serve` sets them for
local runs. Below the doors no other module of the package reads `os.environ`; the doors do (`local` sets what a
local run needs, `cli` reads its own MASTER_KEY and GATEWAY_URL), and so do the libraries, for their own settings
(the AWS clients, aws_client.py's and botocore's: credentials, AWS_ENDPOINT_URL and the like; Powertools:
POWERTOOLS_* and LOG_LEVEL).
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from types import MappingProxyType
from urllib.parse import urlsplit

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
    aws_client: str  # "gateway": the gateway's own where it serves (aws_client.py), else botocore; "botocore": always
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
    # Single sign-on (OpenID Connect) for the console and personal keys (docs/access.md); off without an issuer.
    oidc: OidcSettings | None = None


# LiteLLM's `user_role` values, from most to least powerful: what a person may do on the admin API.
ROLES = ("proxy_admin", "proxy_admin_viewer", "internal_user", "internal_user_viewer")


@dataclass(frozen=True)
class OidcSettings:
    issuer: str  # the discovery document is at <issuer>/.well-known/openid-configuration
    client_id: str
    client_secret_name: str | None  # Secrets Manager; None for a public client (PKCE alone)
    scopes: str  # asked for at sign-in, space-separated; "openid" always among them
    role_claim: str | None  # an ID-token claim holding a role directly (e.g. a custom claim), over the group mapping
    groups_claim: str  # the ID-token claim listing the person's groups
    group_roles: Mapping[str, str]  # IdP group -> role; a person in several groups gets the most powerful role
    group_teams: Mapping[str, tuple[str, ...]]  # IdP group -> team ids the person joins
    default_role: str  # the role of a person no group maps (a new user's; a known user keeps theirs)
    session_hours: float  # how long a console sign-in lasts
    personal_key_hours: float  # how long a personal key from `anthropic-gateway login` works


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


def _aws_client(value: str) -> str:
    choice = value.strip().lower()
    if choice not in ("gateway", "botocore"):
        raise SettingsError(f"AWS_CLIENT={value[:40]!r}: expected gateway or botocore")
    return choice


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
        aws_client=_aws_client(env("AWS_CLIENT", "gateway")),
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
        oidc=_oidc(),
    )


def _whole_days(name: str, value: float) -> int:
    if not 1 <= value <= 100 * 365 or value != int(value):
        raise SettingsError(f"{name}={value:g}: expected a whole number of days, 1 to 36500")
    return int(value)


def _oidc() -> OidcSettings | None:
    env = os.environ.get
    issuer = (env("OIDC_ISSUER") or "").strip().rstrip("/")
    client_id = (env("OIDC_CLIENT_ID") or "").strip()
    if not issuer:
        if client_id:
            raise SettingsError("OIDC_CLIENT_ID is set but OIDC_ISSUER is not: set both for single sign-on")
        return None
    _check_issuer(issuer)
    if not client_id:
        raise SettingsError("OIDC_ISSUER is set but OIDC_CLIENT_ID is not: set both for single sign-on")
    scopes = (env("OIDC_SCOPES") or "openid email profile").split()
    default_role = (env("OIDC_DEFAULT_ROLE") or "internal_user").strip()
    if default_role not in ROLES:
        raise SettingsError(f"OIDC_DEFAULT_ROLE={default_role[:40]!r}: expected one of {', '.join(ROLES)}")
    oidc = OidcSettings(
        issuer=issuer,
        client_id=client_id,
        client_secret_name=(env("OIDC_CLIENT_SECRET_NAME") or "").strip() or None,
        scopes=" ".join(["openid", *(scope for scope in dict.fromkeys(scopes) if scope != "openid")]),
        role_claim=(env("OIDC_ROLE_CLAIM") or "").strip() or None,
        groups_claim=(env("OIDC_GROUPS_CLAIM") or "groups").strip(),
        group_roles=MappingProxyType(_group_roles(env("OIDC_GROUP_ROLES") or "{}")),
        group_teams=MappingProxyType(_group_teams(env("OIDC_GROUP_TEAMS") or "{}")),
        default_role=default_role,
        session_hours=_float("OIDC_SESSION_HOURS", 8.0),
        personal_key_hours=_float("PERSONAL_KEY_HOURS", 12.0),
    )
    for name, hours in (("OIDC_SESSION_HOURS", oidc.session_hours), ("PERSONAL_KEY_HOURS", oidc.personal_key_hours)):
        if not 0 < hours <= 24 * 90:
            raise SettingsError(f"{name}={hours}: expected more than 0 and at most 2160 hours (90 days)")
    return oidc


def _check_issuer(issuer: str) -> None:
    """https, or http on this machine only (a local test provider): ID tokens and codes must not cross a network
    in the clear, and the issuer must equal the discovery document's `issuer` and every token's `iss` exactly."""
    try:
        parts = urlsplit(issuer)
        host = parts.hostname or ""
    except ValueError:
        raise SettingsError(f"OIDC_ISSUER={issuer[:100]!r}: not a URL") from None
    if parts.scheme == "https" and host:
        return
    if parts.scheme == "http" and (host == "localhost" or _is_loopback_address(host)):
        return
    raise SettingsError(f"OIDC_ISSUER={issuer[:100]!r}: expected an https:// URL (http only on localhost)")


def _is_loopback_address(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _json_object(name: str, raw: str) -> dict[str, object]:
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise SettingsError(f"{name}: not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise SettingsError(f'{name}: expected a JSON object {{"<IdP group>": ...}}')
    return value


def _group_roles(raw: str) -> dict[str, str]:
    roles = _json_object("OIDC_GROUP_ROLES", raw)
    for group, role in roles.items():
        if role not in ROLES:
            raise SettingsError(f"OIDC_GROUP_ROLES[{group[:60]!r}]: expected one of {', '.join(ROLES)}")
    return {group: str(role) for group, role in roles.items()}


def _group_teams(raw: str) -> dict[str, tuple[str, ...]]:
    teams: dict[str, tuple[str, ...]] = {}
    for group, value in _json_object("OIDC_GROUP_TEAMS", raw).items():
        names = [value] if isinstance(value, str) else value
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
            raise SettingsError(f"OIDC_GROUP_TEAMS[{group[:60]!r}]: expected a team id or a list of team ids")
        teams[group] = tuple(dict.fromkeys(names))
    return teams


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
