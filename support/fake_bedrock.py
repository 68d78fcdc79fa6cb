"""A fake of Amazon Bedrock's Anthropic Messages endpoint (bedrock-mantle), served by uvicorn over loopback.

    with FakeBedrock() as fake:
        bedrock = Bedrock(region=fake.region, base_url=fake.base_url, credentials=fake.credentials)
        url, headers, body = await prepare(bedrock, "POST", "/v1/messages", b"", headers, body)
        ...
        assert fake.requests[-1].auth == "sigv4"

It checks what the real endpoint checks before answering: a real SigV4 signature, recomputed with botocore from the
known test credentials for the service `bedrock-mantle` and this fake's region over the body that arrived (so a body
changed after signing is refused), or a Bedrock API key as `authorization: Bearer`; and a `model` that is a Bedrock
id it serves. Failures get Bedrock's error shape: status, `x-amzn-ErrorType` header and a `{"message": ...}` body.

The answers themselves (JSON messages, SSE streams with message_start / content_block_delta / message_delta usage,
count_tokens, Anthropic-shaped validation errors) come from the fake Anthropic's own handlers, so both upstreams
answer with the same shapes; its x-fake-* test-control headers work here too.

Bedrock errors on demand: the request header `x-fake-bedrock-error: ThrottlingException` (any type in ERRORS), or
`fake.fail_next("ServiceUnavailableException", times=2)` from the test.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import re
import threading
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from anthropic_gateway.bedrock import Bedrock
from anthropic_gateway.request_body import RequestBody
from support.fake_anthropic import ApiError, FakeAnthropic, RecordedRequest, _error_body, _error_headers
from support.servers import ThreadedUvicorn

ACCESS_KEY = "AKIAFAKEBEDROCKTEST1"
SECRET_KEY = "fake/bedrock+secret-access-key-for-tests"
SESSION_TOKEN = "fake-bedrock-session-token"
SERVICE = "bedrock-mantle"
MAX_SKEW = dt.timedelta(minutes=5)
# Bedrock's error types with the status the runtime API gives them.
ERRORS = {
    "ValidationException": 400,
    "ServiceQuotaExceededException": 400,
    "AccessDeniedException": 403,
    "UnrecognizedClientException": 403,
    "InvalidSignatureException": 403,
    "ResourceNotFoundException": 404,
    "FTUFormNotFilled": 404,
    "ModelTimeoutException": 408,
    "ModelErrorException": 424,
    "ThrottlingException": 429,
    "ModelNotReadyException": 429,
    "InternalServerException": 500,
    "ServiceUnavailableException": 503,
}
_AUTH = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<day>\d{8})/(?P<region>[^/]+)/(?P<service>[^/]+)/aws4_request, "
    r"SignedHeaders=(?P<signed>[a-z0-9;-]+), Signature=(?P<signature>[0-9a-f]{64})"
)


async def prepare(
    bedrock: Bedrock, method: str, path: str, query: bytes, headers: list[tuple[bytes, bytes]], body: bytes
) -> tuple[str, list[tuple[bytes, bytes]], bytes]:
    """What the gateway sends Bedrock for `body` (`Bedrock.prepare`), its model found as the pass-through finds it."""
    return await bedrock.prepare(method, path, query, headers, body, await RequestBody(body).model_span())


def shipped_bedrock_ids() -> set[str]:
    table = Path(__file__).parents[1] / "layers/gateway/anthropic_gateway/bedrock_models.json"
    return {entry["id"] for entry in json.loads(table.read_text())["models"].values()}


@dataclasses.dataclass(frozen=True)
class BedrockRequest:
    request: RecordedRequest  # as it arrived: raw path, headers, body bytes
    auth: str | None  # "sigv4" or "bearer" once verified, else None
    error: str | None  # the Bedrock error type it was refused with
    signed_headers: tuple[str, ...] = ()
    payload_hash: str | None = None  # the hash in the verified canonical request: sha256 of the body that arrived

    def json(self) -> object:
        return self.request.json()


class BedrockError(Exception):
    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type, self.message = error_type, message


class FakeBedrock:
    def __init__(
        self,
        *,
        region: str = "us-east-1",
        access_key: str = ACCESS_KEY,
        secret_key: str = SECRET_KEY,
        token: str | None = SESSION_TOKEN,
        api_key: str | None = None,
        models: set[str] | None = None,
        stream_delay_ms: float = 1.0,
        port: int = 0,
    ) -> None:
        self.region, self.api_key = region, api_key
        self.credentials = Credentials(access_key, secret_key, token)
        self.models = shipped_bedrock_ids() if models is None else models
        self.url = ""
        # Its handlers produce the answers; it never listens itself. The key is its own, checked by nobody.
        self._anthropic = FakeAnthropic(stream_delay_ms=stream_delay_ms)
        self._lock = threading.Lock()
        self._records: list[BedrockRequest] = []
        self._faults: list[tuple[str, str]] = []  # (error type, message), one per request to refuse
        self._port = port
        self._server: ThreadedUvicorn | None = None
        self.app = Starlette(
            routes=[
                Route("/anthropic/v1/messages", self._messages, methods=["POST"]),
                Route("/anthropic/v1/messages/count_tokens", self._count_tokens, methods=["POST"]),
            ]
        )

    # Lifecycle and test API -----------------------------------------------------------------------------------

    def __enter__(self) -> FakeBedrock:
        self._server = ThreadedUvicorn(self.app, port=self._port, lifespan="off", http="h11").__enter__()
        self.url = self._server.url
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._anthropic._stopping = True  # open streams end at their next event
        if self._server:
            self._server.__exit__()
        self._server = None

    @property
    def base_url(self) -> str:
        """What BEDROCK_BASE_URL is set to for this fake."""
        return self.url + "/anthropic"

    @property
    def requests(self) -> list[BedrockRequest]:
        with self._lock:
            return list(self._records)

    def reset(self) -> None:
        with self._lock:
            self._records.clear()
            self._faults.clear()

    def fail_next(self, error_type: str = "ThrottlingException", *, message: str | None = None, times: int = 1) -> None:
        """Refuse the next `times` authenticated requests with this Bedrock error (status from ERRORS)."""
        if error_type not in ERRORS:
            raise ValueError(f"unknown Bedrock error type {error_type!r}")
        with self._lock:
            self._faults.extend([(error_type, message or f"Fake {error_type}")] * times)

    # Handlers -------------------------------------------------------------------------------------------------

    async def _messages(self, request: Request) -> Response:
        return await self._answer(request, self._anthropic._create_message)

    async def _count_tokens(self, request: Request) -> Response:
        return await self._answer(request, self._anthropic._count_tokens)

    async def _answer(self, request: Request, handler: Callable[[RecordedRequest], Awaitable[Response]]) -> Response:
        record = RecordedRequest(
            method=request.method,
            path=request.scope["raw_path"].decode("latin-1"),
            query=request.scope["query_string"].decode("latin-1"),
            headers=[(n.decode("latin-1").lower(), v.decode("latin-1")) for n, v in request.headers.raw],
            body=await request.body(),
        )
        signed: tuple[str, ...] = ()
        auth, payload_hash = None, None
        try:
            auth, signed, payload_hash = self._authenticate(record)
            self._check_model(record)
            self._injected_fault(record)
        except BedrockError as error:
            self._record(BedrockRequest(record, auth, error.error_type, signed, payload_hash))
            return _bedrock_error(error)
        self._record(BedrockRequest(record, auth, None, signed, payload_hash))
        try:
            response: Response = await handler(record)
        except ApiError as error:  # a malformed Messages request: the Anthropic-native endpoint answers like Anthropic
            body = _error_body(error.status, error.message, "req_bedrock")
            response = JSONResponse(body, error.status, {**_error_headers(error.status), **error.headers})
        response.headers["x-amzn-requestid"] = str(uuid.uuid4())
        return response

    def _record(self, entry: BedrockRequest) -> None:
        with self._lock:
            self._records.append(entry)

    def _authenticate(self, record: RecordedRequest) -> tuple[str, tuple[str, ...], str | None]:
        authorization = record.header("authorization") or ""
        if authorization.startswith("Bearer "):
            if self.api_key is None or not hmac.compare_digest(authorization[7:], self.api_key):
                raise BedrockError(
                    "UnrecognizedClientException", "Invalid API Key format: Must start with pre-defined prefix"
                )
            return "bearer", (), None
        if not authorization:
            raise BedrockError("MissingAuthenticationTokenException", "Missing Authentication Token")
        match = _AUTH.fullmatch(authorization)
        if match is None:
            raise BedrockError(
                "IncompleteSignature", "Authorization header requires Credential, SignedHeaders, Signature."
            )
        creds = self.credentials
        if match["key"] != creds.access_key:
            raise BedrockError("UnrecognizedClientException", "The security token included in the request is invalid.")
        if match["service"] != SERVICE or match["region"] != self.region:
            raise BedrockError(
                "InvalidSignatureException",
                f"Credential should be scoped to correct service: '{SERVICE}' in region '{self.region}'.",
            )
        signed = tuple(match["signed"].split(";"))
        timestamp = record.header("x-amz-date") or ""
        try:
            moment = dt.datetime.strptime(timestamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
        except ValueError:
            raise BedrockError("IncompleteSignature", "X-Amz-Date is missing or malformed.") from None
        if abs(dt.datetime.now(dt.UTC) - moment) > MAX_SKEW or match["day"] != timestamp[:8]:
            raise BedrockError("InvalidSignatureException", "Signature expired or credential date mismatch.")
        must_sign = {"host", "x-amz-date"} | ({"x-amz-security-token"} if creds.token else set())
        if not must_sign <= set(signed):
            raise BedrockError("InvalidSignatureException", f"SignedHeaders must include {sorted(must_sign)}.")
        if creds.token and record.header("x-amz-security-token") != creds.token:
            raise BedrockError("UnrecognizedClientException", "The security token included in the request is invalid.")
        # Recompute the signature over what arrived: its signed headers, raw path, query and body bytes.
        query = f"?{record.query}" if record.query else ""
        recomputed = AWSRequest(method=record.method, url=f"http://{record.header('host')}{record.path}{query}")
        recomputed.data = record.body
        for name in signed:
            values = [value for key, value in record.headers if key == name]
            if not values:
                raise BedrockError("IncompleteSignature", f"Signed header {name} is missing.")
            for value in values:
                recomputed.headers[name] = value  # repeated names are appended, as SigV4 canonicalises them
        recomputed.context["timestamp"] = timestamp
        signer = SigV4Auth(creds, SERVICE, self.region)
        canonical = signer.canonical_request(recomputed)
        payload_hash = canonical.rsplit("\n", 1)[1]
        if payload_hash != hashlib.sha256(record.body).hexdigest():
            raise BedrockError("InvalidSignatureException", "The payload hash is not the hash of the body.")
        expected = signer.signature(signer.string_to_sign(recomputed, canonical), recomputed)
        if not hmac.compare_digest(expected, match["signature"]):
            raise BedrockError(
                "InvalidSignatureException",
                "The request signature we calculated does not match the signature you provided. "
                f"The Canonical String for this request should have been\n'{canonical}'",
            )
        return "sigv4", signed, payload_hash

    def _check_model(self, record: RecordedRequest) -> None:
        try:
            model = json.loads(record.body).get("model")
        except (ValueError, AttributeError):
            raise BedrockError("ValidationException", "Malformed input request, please reformat your input.") from None
        if model not in self.models:
            raise BedrockError("ValidationException", "The provided model identifier is invalid.")

    def _injected_fault(self, record: RecordedRequest) -> None:
        injected = record.header("x-fake-bedrock-error")
        if injected:
            raise BedrockError(injected, f"Injected {injected}")
        with self._lock:
            fault = self._faults.pop(0) if self._faults else None
        if fault:
            raise BedrockError(*fault)


def _bedrock_error(error: BedrockError) -> Response:
    status = ERRORS.get(error.error_type, 400 if error.error_type == "IncompleteSignature" else 403)
    headers = {
        "x-amzn-ErrorType": f"{error.error_type}:http://internal.amazon.com/coral/com.amazon.bedrock/",
        "x-amzn-RequestId": str(uuid.uuid4()),
    }
    return JSONResponse({"message": error.message}, status, headers)
