"""The upstream Anthropic key and the master key, from Secrets Manager through Powertools Parameters.

Values are cached per process for `SECRETS_MAX_AGE` seconds, so a rotated secret is picked up without a
redeploy. Only a cache miss does network I/O, and that runs in a worker thread, off the event loop, under the
request's AWS deadline (aws.py). When Secrets Manager cannot be read at a refresh, the value in hand keeps
serving for up to `AWS_STALE_SECONDS` past its age (a rotation then waits as long); with no value in hand (a cold
start during an outage) the request gets a 503.
"""

from __future__ import annotations

import time
from functools import lru_cache, partial
from typing import TYPE_CHECKING

from aws_lambda_powertools import Logger

from . import aws
from .errors import GatewayError
from .settings import get_settings

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.parameters import SecretsProvider

logger = Logger(child=True)
_fetched_at: dict[str, float] = {}
_last_good: dict[str, str] = {}


@lru_cache(maxsize=1)
def _provider() -> SecretsProvider:
    """One Powertools provider over a Secrets Manager client with the gateway's bounded config."""
    import boto3
    from aws_lambda_powertools.utilities.parameters import SecretsProvider

    with aws.boto3_lock:
        return SecretsProvider(boto3_client=boto3.client("secretsmanager", config=aws.config()))


def _fetch(name: str) -> str:
    started = time.monotonic()
    value = _provider().get(name, max_age=get_settings().secrets_max_age, force_fetch=True)
    text = value if isinstance(value, str) else bytes(value).decode() if isinstance(value, bytes) else str(value)
    _fetched_at[name] = started  # Powertools' entry expires max_age after a moment no earlier than this
    _last_good[name] = text
    return text


async def _secret(name: str) -> str:
    fetched = _fetched_at.get(name)
    max_age = get_settings().secrets_max_age
    servable = fetched is not None and name in _last_good and time.monotonic() - fetched < max_age + _stale_seconds()
    try:
        if fetched is not None and time.monotonic() - fetched < max_age - 1:
            # What Powertools' cache holds too, read from here: its lookup cost more than the rest of a request's
            # authentication (issue 11).
            return _last_good[name]
        if servable and aws.recently_failed():
            return _last_good[name]  # AWS failed a moment ago: serve what we have instead of waiting again
        return await aws.call_shared(("secret", name), partial(_fetch, name))
    except Exception as exc:  # the reason may name the secret; never its value
        reason = "timeout" if isinstance(exc, aws.Unavailable) else type(exc).__name__
        if servable:
            aws.note_failure()
            logger.warning("secret served past its max age", extra={"error": reason})
            return _last_good[name]
        raise GatewayError(503, f"The gateway cannot read its configuration secret ({reason}).") from None


def _stale_seconds() -> float:
    return get_settings().stale_seconds


def clear() -> None:
    """Forget every value (tests)."""
    _fetched_at.clear()
    _last_good.clear()
    _provider().clear_cache()  # type: ignore[no-untyped-call]


async def get(name: str) -> str:
    """Any other secret the gateway is configured with (e.g. BEDROCK_API_KEY_SECRET_NAME), cached the same way."""
    return await _secret(name)


async def upstream_key() -> str:
    return await _secret(get_settings().upstream_key_secret)


async def master_key() -> str:
    return await _secret(get_settings().master_key_secret)
