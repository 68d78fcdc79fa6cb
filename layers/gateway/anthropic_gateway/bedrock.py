"""Amazon Bedrock as a second upstream for the same native Messages API (bedrock-mantle's /anthropic endpoint).

A request goes to Bedrock as the client sent it, byte for byte, except for two things: the `model` value becomes
Bedrock's id for it (only the bytes of that one JSON string change), and the credentials are AWS SigV4 over the
exact bytes sent (or a Bedrock API key as a bearer token). `Bedrock.prepare` does both for the pass-through.
Bedrock's own errors are translated to Anthropic's shape in `bedrock_errors`.
"""

from __future__ import annotations

import json
import re
import threading
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread

from .bedrock_models import BedrockConfigError, ModelTable, model_table
from .errors import GatewayError
from .secrets import Secrets
from .settings import Settings

if TYPE_CHECKING:  # botocore is imported on first use: it would add a third to the cold start of every request
    from botocore.credentials import Credentials, ReadOnlyCredentials

Headers = list[tuple[bytes, bytes]]

_MANTLE_HOST = re.compile(r"(bedrock-mantle)\.([a-z0-9-]+)\.api\.aws")
_RUNTIME_HOST = re.compile(r"bedrock-runtime(?:-fips)?\.([a-z0-9-]+)\.amazonaws\.com")
# Bedrock serves these and nothing else of the Anthropic API (no batches, files or models).
PATHS = frozenset({"/v1/messages", "/v1/messages/count_tokens"})
# Never sent to Bedrock: the client's and Anthropic's credentials, what the HTTP client sets, and (by prefix) any
# x-amz-* header, which only the signer may set, and any x-amzn-* one: Bedrock's own request options (service tier,
# guardrail, performance) are the operator's to choose, not a client's (a priority tier changes a price the gateway
# does not know; a guardrail is billed too), and Lambda's invocation headers name the account.
_DROP = frozenset({"host", "content-length", "authorization", "x-api-key"})
_DROP_PREFIXES = ("x-amz-", "x-amzn-")
# Signed besides host and the x-amz-* headers botocore adds: what changes the meaning of the request. The rest is
# sent unsigned, which SigV4 allows, so a header a proxy may rewrite cannot break the signature.
_SIGNED = frozenset({"content-type", "anthropic-version", "anthropic-beta"})
_CREDENTIALS_WAIT = 10.0  # seconds; botocore's providers have their own, shorter, timeouts


# -- the body -----------------------------------------------------------------------------------------------------


# (model, start, end): the request's top-level "model" string and the byte span of its JSON value, quotes included
# (request_body.RequestBody.model_span finds it).
ModelSpan = tuple[str, int, int]


def _splice(body: bytes, span: ModelSpan, model_id: str) -> bytes:
    """The body with only the value at `span` replaced by `model_id`: bytes are spliced, not text re-encoded, so
    every byte before and after the value is the client's."""
    return body[: span[1]] + json.dumps(model_id).encode() + body[span[2] :]


# -- signing ------------------------------------------------------------------------------------------------------


def signing_scope(base_url: str, region: str | None) -> tuple[str, str]:
    """(SigV4 service, region) for a base URL: from the host for Bedrock's endpoints, else bedrock-mantle."""
    host = re.sub(r"^[a-z]+://", "", base_url.lower()).split("/", 1)[0].split(":", 1)[0]
    if mantle := _MANTLE_HOST.fullmatch(host):
        return mantle.group(1), mantle.group(2)
    if runtime := _RUNTIME_HOST.fullmatch(host):
        return "bedrock", runtime.group(1)
    return "bedrock-mantle", region or "us-east-1"  # a fake or a proxy in front of bedrock-mantle


def sign(
    method: str, url: str, headers: Headers, body: bytes, *, credentials: ReadOnlyCredentials, service: str, region: str
) -> Headers:
    """`headers` plus SigV4 authorization for exactly these method, URL and body bytes. Pure CPU, no I/O."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest

    signed = AWSRequest(method=method, url=url, data=body)
    for name, value in headers:
        if name.decode("latin-1").lower() in _SIGNED:
            signed.headers[name.decode("latin-1")] = value.decode("latin-1")
    SigV4Auth(credentials, service, region).add_auth(signed)
    added = [
        (name.encode(), value.encode())
        for name, value in signed.headers.items()
        if name.lower() in ("authorization", "x-amz-date", "x-amz-security-token")
    ]
    return [*headers, *added]


class Bedrock:
    """One configured Bedrock upstream, created once per runtime from settings (`from_settings`).

    region: the stack's region (AWS_REGION); base_url: BEDROCK_BASE_URL, by default the region's bedrock-mantle
    endpoint; model_ids: BEDROCK_MODEL_IDS (raw JSON, merged over the shipped table); api_key_secret: the Secrets
    Manager name of a Bedrock API key, used instead of SigV4 when given, read through `secrets` (the runtime's);
    credentials: tests only, instead of the default credential chain (resolved on first use, then renewed by
    botocore itself).
    """

    def __init__(
        self,
        *,
        region: str | None,
        base_url: str | None = None,
        model_ids: str | None = None,
        api_key_secret: str | None = None,
        secrets: Secrets | None = None,
        credentials: Credentials | None = None,
    ) -> None:
        self.base_url = (base_url or f"https://bedrock-mantle.{region or 'us-east-1'}.api.aws/anthropic").rstrip("/")
        if not re.match(r"https?://[^/?#]+", self.base_url):
            raise BedrockConfigError("BEDROCK_BASE_URL must be an http(s) URL")
        self.service, self.region = signing_scope(self.base_url, region)
        self.models = model_table(model_ids)
        self.api_key_secret = api_key_secret or None
        if self.api_key_secret and secrets is None:
            raise ValueError("a Bedrock API key secret is read through the runtime's secrets: pass them")
        self._secrets = secrets
        self._given_credentials = credentials
        self._credentials = credentials
        self._credentials_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, secrets: Secrets) -> Bedrock:
        return cls(
            region=settings.aws_region,
            base_url=settings.bedrock_base_url,
            model_ids=settings.bedrock_model_ids,
            api_key_secret=settings.bedrock_api_key_secret,
            secrets=secrets,
        )

    def forget_credentials(self) -> None:
        """Resolve the credential chain again on next use (a restored SnapStart snapshot gets new credentials)."""
        with self._credentials_lock:
            self._credentials = self._given_credentials

    def serves(self, method: str, path: str) -> bool:
        return method == "POST" and path in PATHS

    def model_id(self, model: str) -> str | None:
        return self.models.bedrock_id(model)

    async def prepare(
        self, method: str, path: str, query: bytes, headers: Headers, body: bytes, model: ModelSpan | None
    ) -> tuple[str, Headers, bytes]:
        """(URL, headers, body) to send to Bedrock for a request the gateway already checked and would forward.

        `path` is below /anthropic (e.g. /v1/messages), `headers` what would go to Anthropic (its key is dropped),
        `model` where `body` names its model (None: it names none, or not exactly one).
        Raises GatewayError for what Bedrock cannot serve: the integration decides whether that means failing over
        never happens (failover) or the client gets it (a Bedrock-only key).
        """
        if not self.serves(method, path):
            raise GatewayError(
                404, f"Amazon Bedrock does not serve {method} {path}; only POST {', '.join(sorted(PATHS))}."
            )
        rewritten = _rewrite_for_bedrock(body, model, self.models)
        url = self.base_url + path + ("?" + query.decode("latin-1") if query else "")
        kept = [(n, v) for n, v in headers if not _dropped(n.decode("latin-1").lower())]
        if self.api_key_secret and self._secrets is not None:
            key = await self._secrets.get(self.api_key_secret)
            return url, [*kept, (b"authorization", b"Bearer " + key.encode())], rewritten
        credentials = await self._frozen_credentials()
        return (
            url,
            sign(method, url, kept, rewritten, credentials=credentials, service=self.service, region=self.region),
            rewritten,
        )

    def _default_credentials(self) -> Credentials | None:
        """The default credential chain, resolved once (may do I/O: call it off the event loop).

        In Lambda these are the function role's credentials from the environment; elsewhere botocore's chain
        (profile, container, instance metadata) with refreshing credentials that botocore renews itself.
        """
        with self._credentials_lock:
            if self._credentials is None:
                import botocore.session

                self._credentials = botocore.session.Session().get_credentials()
            return self._credentials

    async def _frozen_credentials(self) -> ReadOnlyCredentials:
        credentials = self._credentials
        try:
            with anyio.fail_after(_CREDENTIALS_WAIT):
                if credentials is None:
                    credentials = await anyio.to_thread.run_sync(self._default_credentials, abandon_on_cancel=True)
                from botocore.credentials import RefreshableCredentials

                if isinstance(credentials, RefreshableCredentials) and credentials.refresh_needed():
                    # botocore renews them on this call: network I/O, so in a worker thread.
                    return await anyio.to_thread.run_sync(credentials.get_frozen_credentials, abandon_on_cancel=True)
        except Exception as exc:  # the reason may name the provider; never a credential
            raise GatewayError(503, f"The gateway cannot obtain its AWS credentials ({type(exc).__name__}).") from None
        if credentials is None:
            raise GatewayError(503, "The gateway has no AWS credentials to call Amazon Bedrock with.")
        return credentials.get_frozen_credentials()


def _dropped(name: str) -> bool:
    return name in _DROP or name.startswith(_DROP_PREFIXES)


def _rewrite_for_bedrock(body: bytes, span: ModelSpan | None, models: ModelTable) -> bytes:
    if span is None:
        raise GatewayError(400, 'Requests sent to Amazon Bedrock need a JSON body with one top-level "model" string.')
    model_id = models.bedrock_id(span[0])
    if model_id is None:
        raise GatewayError(400, f"Model {span[0][:100]!r} is not available on Amazon Bedrock through this gateway.")
    return _splice(body, span, model_id)
