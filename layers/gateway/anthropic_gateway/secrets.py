"""The upstream Anthropic key and the master key, from Secrets Manager (GetSecretValue on a client of the runtime's).

Values are cached per runtime for `SECRETS_MAX_AGE` seconds, so a rotated secret is picked up without a
redeploy. Only a cache miss does network I/O, and that runs in a worker thread, off the event loop, under the
request's AWS deadline (aws.py). When Secrets Manager cannot be read at a refresh, the value in hand keeps
serving for up to `AWS_STALE_SECONDS` past its age (a rotation then waits as long); with no value in hand (a cold
start during an outage) the request gets a 503.

`Secrets` holds one runtime's values (runtime.py); whoever reads a secret is handed the runtime's `Secrets`.
"""

from __future__ import annotations

import threading
import time
from functools import partial
from typing import Any

from aws_lambda_powertools import Logger

from .aws import AwsCalls, Unavailable
from .errors import GatewayError
from .settings import Settings

logger = Logger(child=True)


class Secrets:
    """The secrets of one runtime: a Secrets Manager client of the runtime's, and the values read, with the moment
    each was read. (Powertools' SecretsProvider is not used: its cache would only repeat this one, and its import
    brings boto3 and Powertools' other providers into the start.)"""

    def __init__(self, settings: Settings, aws: AwsCalls) -> None:
        self._settings, self._aws = settings, aws
        self._fetched_at: dict[str, float] = {}
        self._last_good: dict[str, str] = {}
        self._client: Any = None
        self._lock = threading.Lock()

    def client(self) -> Any:
        """Blocking: the Secrets Manager client, made on first use (the runtime's start makes it, `Runtime.warm`)."""
        with self._lock:
            if self._client is None:
                self._client = self._aws.client("secretsmanager")
            return self._client

    def forget(self) -> None:
        """Forget every value and the client: the next read goes to Secrets Manager over a new connection."""
        with self._lock:
            self._fetched_at.clear()
            self._last_good.clear()
            client, self._client = self._client, None
        if client is not None:
            client.close()  # its pooled connections

    async def upstream_key(self) -> str:
        return await self.get(self._settings.upstream_key_secret)

    async def master_key(self) -> str:
        return await self.get(self._settings.master_key_secret)

    async def get(self, name: str) -> str:
        """Secret `name` (the two keys, or another the gateway is configured with, e.g. BEDROCK_API_KEY_SECRET_NAME),
        from the cache while it is younger than SECRETS_MAX_AGE."""
        fetched = self._fetched_at.get(name)
        max_age = self._settings.secrets_max_age
        servable = (
            fetched is not None
            and name in self._last_good
            and time.monotonic() - fetched < max_age + self._settings.stale_seconds
        )
        try:
            if fetched is not None and time.monotonic() - fetched < max_age - 1:
                return self._last_good[name]
            if servable and self._aws.recently_failed():
                return self._last_good[name]  # AWS failed a moment ago: serve what we have instead of waiting again
            return await self._aws.call_shared(("secret", name), partial(self._fetch, name))
        except Exception as exc:  # the reason may name the secret; never its value
            reason = "timeout" if isinstance(exc, Unavailable) else type(exc).__name__
            if servable:
                self._aws.note_failure()
                logger.warning("secret served past its max age", extra={"error": reason})
                return self._last_good[name]
            raise GatewayError(503, f"The gateway cannot read its configuration secret ({reason}).") from None

    def _fetch(self, name: str) -> str:
        started = time.monotonic()
        answer = self.client().get_secret_value(SecretId=name)
        text = answer["SecretString"] if "SecretString" in answer else bytes(answer["SecretBinary"]).decode()
        self._fetched_at[name] = started  # the value's age counts from before it was asked for
        self._last_good[name] = text
        return text
