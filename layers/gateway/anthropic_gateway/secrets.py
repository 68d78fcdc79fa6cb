"""The upstream Anthropic key and the master key, from Secrets Manager through Powertools Parameters.

Values are cached per process for `SECRETS_MAX_AGE` seconds, so a rotated secret is picked up without a
redeploy. Only a cache miss does network I/O, and that runs in a worker thread, off the event loop.
"""

from __future__ import annotations

import time
from functools import partial

import anyio.to_thread

from .errors import GatewayError
from .settings import get_settings

_fetched_at: dict[str, float] = {}


def _get(name: str, *, fetch: bool) -> str:
    from aws_lambda_powertools.utilities import parameters  # deferred: pulls in boto3, not needed for /health

    started = time.monotonic()
    value = parameters.get_secret(name, max_age=get_settings().secrets_max_age, force_fetch=fetch)
    if fetch:  # Powertools' entry now expires max_age after a moment no earlier than `started`
        _fetched_at[name] = started
    return value if isinstance(value, str) else value.decode()


async def _secret(name: str) -> str:
    fetched = _fetched_at.get(name)
    try:
        if fetched is not None and time.monotonic() - fetched < get_settings().secrets_max_age - 1:
            return _get(name, fetch=False)  # in Powertools' in-memory cache: no I/O, no thread hop
        return await anyio.to_thread.run_sync(partial(_get, name, fetch=True))
    except Exception as exc:  # the reason may name the secret; never its value
        raise GatewayError(503, f"The gateway cannot read its configuration secret ({type(exc).__name__}).") from None


async def get(name: str) -> str:
    """Any other secret the gateway is configured with (e.g. BEDROCK_API_KEY_SECRET_NAME), cached the same way."""
    return await _secret(name)


async def upstream_key() -> str:
    return await _secret(get_settings().upstream_key_secret)


async def master_key() -> str:
    return await _secret(get_settings().master_key_secret)
