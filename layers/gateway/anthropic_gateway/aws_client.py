"""The gateway's own client for DynamoDB and Secrets Manager: their JSON protocol, one signed POST per call over a
pooled http.client connection.

Why not botocore (issue 21): its import and its two clients' set-up were 100 ms of the streaming door's 300 ms
start (each client decodes the 1.25 MB endpoints.json, lists 440 service directories and builds its class from a
service model), for nine operations whose protocol is one POST of JSON. This module costs a few milliseconds to
import and nothing to set up. aws.py uses it where the AWS set-up is what Lambda provides (`usable`): credentials in
the environment (on demand) or from the container endpoint (SnapStart, Managed Instances), a region with the usual
endpoints, no proxy, no FIPS or dual-stack endpoint. Anything else (a workstation's profile or SSO, a proxy) gets a
botocore client, as before.

What it keeps of botocore, so the storage code and its error handling read the same (tests/test_aws_client.py holds
it to botocore, call by call):
  - the calls: snake_case methods taking the API's parameters (AttributeValues, as botocore's low-level client
    takes them), answering its JSON with binary values as bytes, and `ResponseMetadata`;
  - errors: botocore's `ClientError` with the same `response` (Error.Code and Message, the error's own fields such
    as `CancellationReasons` and `Item`, ResponseMetadata.HTTPStatusCode); no connection, a timeout, a connection
    closed mid-call and a corrupt answer as botocore's BotoCoreErrors, so `aws.transient` reads them as before;
  - retries as botocore's standard mode: throttling and transient codes, 5xx, connection errors and timeouts, and a
    DynamoDB answer whose CRC32 does not match, up to `attempts` in all, each after an exponential backoff with
    jitter (up to 20 s);
  - a TransactWriteItems without a ClientRequestToken gets one, as botocore fills the model's idempotency token, so
    that a retry of a transaction that did apply is not applied again;
  - SigV4, as botocore signs;
  - endpoints: AWS_ENDPOINT_URL_<SERVICE>, then AWS_ENDPOINT_URL, else the region's.
A pooled connection is reused only after a clean exchange (the whole answer read, no `Connection: close`) and only
if nothing arrived on it while it sat idle (a server that closed it).

What it leaves out: parameters are not checked against a model before they are sent (DynamoDB refuses a bad one
with a ValidationException, a ClientError, where botocore raised its ParamValidationError); there is no retry quota
(the request's AWS deadline, aws.py, bounds the retries of one request, and AWS_MAX_ATTEMPTS is 2); every error code
gets a ClientError subclass of its name (botocore names only those its model lists).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import os
import random
import re
import select
import socket
import ssl
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import certifi
from botocore.exceptions import (
    BotoCoreError,
    ChecksumError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    CredentialRetrievalError,
    EndpointConnectionError,
    ReadTimeoutError,
)

_MAX_BACKOFF_SECONDS = 20.0  # botocore's standard mode
_USER_AGENT = "anthropic-gateway"
# botocore's standard mode retries these codes (throttling, then transient), and every 5xx.
_RETRYABLE_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "TransactionInProgressException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "LimitExceededException",
        "RequestThrottled",
        "SlowDown",
        "PriorRequestNotComplete",
        "EC2ThrottledException",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)
_BINARY_VALUE = re.compile(rb'"BS?"\s*:')  # an answer that may hold binary AttributeValues
_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d{1,2}")
# Partitions with endpoints other than <service>.<region>.amazonaws.com(.cn): botocore knows them.
_OTHER_PARTITIONS = ("us-iso", "eu-iso", "us-isob", "us-isof")
# Container credential endpoints botocore accepts over plain HTTP (ECS, EKS Pod Identity, loopback).
_CONTAINER_HOSTS = frozenset({"169.254.170.2", "169.254.170.23", "fd00:ec2::23", "localhost"})
_CONTAINER_RELATIVE_HOST = "http://169.254.170.2"
_CONTAINER_TIMEOUT_SECONDS = 2.0
_CONTAINER_ATTEMPTS = 3
# Renew credentials this long before they expire; past the second bound a failed renewal is an error (botocore's).
_ADVISORY_REFRESH_SECONDS = 15 * 60
_MANDATORY_REFRESH_SECONDS = 10 * 60


@dataclass(frozen=True)
class Service:
    """What differs between the two services' JSON protocols."""

    signing_name: str  # SigV4's service name, and the endpoint's first label
    target_prefix: str  # X-Amz-Target: <prefix>.<Operation>
    json_version: str  # Content-Type: application/x-amz-json-<version>
    endpoint_variable: str  # AWS_ENDPOINT_URL_<this>
    crc32: bool  # answers carry x-amz-crc32 (DynamoDB)
    idempotency_tokens: Mapping[str, str]  # operation -> its token parameter, filled when absent
    operations: Mapping[str, str]  # method name -> operation


DYNAMODB = Service(
    signing_name="dynamodb",
    target_prefix="DynamoDB_20120810",
    json_version="1.0",
    endpoint_variable="DYNAMODB",
    crc32=True,
    idempotency_tokens={"TransactWriteItems": "ClientRequestToken"},
    operations={
        "get_item": "GetItem",
        "put_item": "PutItem",
        "update_item": "UpdateItem",
        "delete_item": "DeleteItem",
        "query": "Query",
        "batch_get_item": "BatchGetItem",
        "batch_write_item": "BatchWriteItem",
        "transact_write_items": "TransactWriteItems",
        "delete_table": "DeleteTable",
    },
)
SECRETS_MANAGER = Service(
    signing_name="secretsmanager",
    target_prefix="secretsmanager",
    json_version="1.1",
    endpoint_variable="SECRETS_MANAGER",
    crc32=False,
    idempotency_tokens={},
    operations={"get_secret_value": "GetSecretValue"},
)
SERVICES = {"dynamodb": DYNAMODB, "secretsmanager": SECRETS_MANAGER}


# -- credentials --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str
    token: str | None = None
    expires_at: float | None = None  # epoch seconds; None: they do not expire


class StaticCredentials:
    """Credentials given once: Lambda's on-demand environment (AWS_ACCESS_KEY_ID...), or a test's."""

    def __init__(self, credentials: Credentials) -> None:
        self._credentials = credentials

    def get(self) -> Credentials:
        return self._credentials


class ContainerCredentials:
    """Credentials from the container endpoint (AWS_CONTAINER_CREDENTIALS_FULL_URI with its authorization token:
    Lambda SnapStart and Managed Instances, ECS, EKS), renewed 15 minutes before they expire, as botocore does.
    Thread-safe: one renewal at a time, while the others keep the credentials in hand."""

    def __init__(self, url: str, token: str | None, token_file: str | None) -> None:
        self.url, self._token, self._token_file = url, token, token_file
        self._credentials: Credentials | None = None
        self._lock = threading.Lock()

    def get(self) -> Credentials:
        held = self._credentials
        if held is not None and not _expiring(held, _ADVISORY_REFRESH_SECONDS):
            return held
        with self._lock:
            held = self._credentials
            if held is not None and not _expiring(held, _ADVISORY_REFRESH_SECONDS):
                return held
            try:
                self._credentials = self._fetch()
            except CredentialRetrievalError:
                if held is None or _expiring(held, _MANDATORY_REFRESH_SECONDS):
                    raise
                return held  # still valid for ten minutes: try again on the next call
            return self._credentials

    def _fetch(self) -> Credentials:
        headers = {"Accept": "application/json", "User-Agent": _USER_AGENT}
        token = self._authorization()
        if token:
            headers["Authorization"] = token
        reason = ""
        for _ in range(_CONTAINER_ATTEMPTS):
            try:
                status, body = _get(self.url, headers)
            except OSError as exc:
                reason = type(exc).__name__
                continue
            if status != 200:
                reason = f"HTTP {status}"
                if status < 500:
                    break
                continue
            try:
                data = json.loads(body)
                expiration = data.get("Expiration")
                return Credentials(
                    access_key=data["AccessKeyId"],
                    secret_key=data["SecretAccessKey"],
                    token=data.get("Token"),
                    expires_at=None if expiration is None else _epoch(expiration),
                )
            except (ValueError, KeyError, TypeError, AttributeError):
                reason = "unreadable answer"
                break
        raise CredentialRetrievalError(provider="container-role", error_msg=reason)

    def _authorization(self) -> str | None:
        if self._token_file:
            try:
                with open(self._token_file) as file:  # read each time: the token file is rotated
                    return file.read().strip()
            except OSError as exc:
                raise CredentialRetrievalError(provider="container-role", error_msg=type(exc).__name__) from None
        return self._token


def _expiring(credentials: Credentials, within: float) -> bool:
    return credentials.expires_at is not None and credentials.expires_at - time.time() < within


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _get(url: str, headers: Mapping[str, str]) -> tuple[int, bytes]:
    parts = urlsplit(url)
    connection_type = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = connection_type(parts.hostname or "", parts.port, timeout=_CONTAINER_TIMEOUT_SECONDS)
    try:
        connection.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""), headers=dict(headers))
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


CredentialSource = StaticCredentials | ContainerCredentials


def credentials_from_environment(environ: Mapping[str, str]) -> CredentialSource | None:
    """Where Lambda puts the function role's credentials: the environment (on demand), else the container endpoint
    (SnapStart, Managed Instances). None when neither is there (botocore's chain then looks further)."""
    access_key, secret_key = environ.get("AWS_ACCESS_KEY_ID"), environ.get("AWS_SECRET_ACCESS_KEY")
    if access_key and secret_key:
        token = environ.get("AWS_SESSION_TOKEN") or environ.get("AWS_SECURITY_TOKEN") or None
        return StaticCredentials(Credentials(access_key, secret_key, token))
    relative, full = (
        environ.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"),
        environ.get("AWS_CONTAINER_CREDENTIALS_FULL_URI"),
    )
    url = _CONTAINER_RELATIVE_HOST + relative if relative else full
    if not url or not _container_url_allowed(url):
        return None
    token_file = environ.get("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE") or None
    return ContainerCredentials(url, environ.get("AWS_CONTAINER_AUTHORIZATION_TOKEN") or None, token_file)


def _container_url_allowed(url: str) -> bool:
    """As botocore: any host over HTTPS; over HTTP, loopback and the container endpoints' own addresses only."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme == "https":
        return bool(host)
    return parts.scheme == "http" and (host in _CONTAINER_HOSTS or host.startswith("127.") or host == "::1")


# -- where the client applies -------------------------------------------------------------------------------------


def usable(environ: Mapping[str, str], region: str) -> bool:
    """Whether this client can serve the process's AWS set-up: credentials where Lambda puts them, a region with
    the usual endpoint names, no proxy, no FIPS or dual-stack endpoints. Otherwise botocore serves it."""
    if credentials_from_environment(environ) is None:
        return False
    if any(environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")):
        return False
    if any(environ.get(name, "").lower() == "true" for name in ("AWS_USE_FIPS_ENDPOINT", "AWS_USE_DUALSTACK_ENDPOINT")):
        return False
    return bool(_REGION.fullmatch(region)) and not region.startswith(_OTHER_PARTITIONS)


def endpoint_url(service: Service, region: str, environ: Mapping[str, str]) -> str:
    configured = environ.get(f"AWS_ENDPOINT_URL_{service.endpoint_variable}") or environ.get("AWS_ENDPOINT_URL")
    if configured:
        return configured.rstrip("/")
    suffix = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return f"https://{service.signing_name}.{region}.{suffix}"


# -- SigV4 --------------------------------------------------------------------------------------------------------


def sign(
    headers: dict[str, str],
    body: bytes,
    *,
    path: str,
    credentials: Credentials,
    service: str,
    region: str,
    now: datetime,
) -> None:
    """Add X-Amz-Date, the session token if any, and SigV4's Authorization to `headers` (which hold Host) for a POST
    of `body` to `path` with no query. Every header given is signed."""
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    day = stamp[:8]
    headers["X-Amz-Date"] = stamp
    if credentials.token:
        headers["X-Amz-Security-Token"] = credentials.token
    canonical = {name.lower(): " ".join(value.split()) for name, value in headers.items()}
    names = sorted(canonical)
    signed_names = ";".join(names)
    request = "\n".join(
        (
            "POST",
            path,
            "",
            "".join(f"{name}:{canonical[name]}\n" for name in names),
            signed_names,
            hashlib.sha256(body).hexdigest(),
        )
    )
    scope = f"{day}/{region}/{service}/aws4_request"
    to_sign = f"AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{hashlib.sha256(request.encode()).hexdigest()}"
    signature = hmac.new(_signing_key(credentials.secret_key, day, region, service), to_sign.encode(), hashlib.sha256)
    headers["Authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={credentials.access_key}/{scope}, "
        f"SignedHeaders={signed_names}, Signature={signature.hexdigest()}"
    )


_signing_keys: dict[tuple[str, str, str, str], bytes] = {}


def _signing_key(secret: str, day: str, region: str, service: str) -> bytes:
    """The day's derived key (four HMACs), kept for the day: every call of a day signs with the same one."""
    cache_key = (secret, day, region, service)
    key = _signing_keys.get(cache_key)
    if key is None:
        key = ("AWS4" + secret).encode()
        for part in (day, region, service, "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        if len(_signing_keys) > 16:  # yesterday's, rotated credentials'
            _signing_keys.clear()
        _signing_keys[cache_key] = key
    return key


# -- the client ---------------------------------------------------------------------------------------------------


class UnreadableAnswer(BotoCoreError):
    """A success status whose body is not the service's JSON (botocore raises its ResponseParserError)."""

    fmt = "Unable to parse the answer of {endpoint_url} to {operation} (HTTP {status})"


class _Retry(Exception):
    """An attempt that failed in a way the next attempt may not: the error to raise if it was the last."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class JsonClient:
    """A client of one service: `client.get_item(TableName=..., Key=...)` and the other methods `service` names, or
    `client.call("GetItem", {...})`. Thread-safe: each call takes an idle pooled connection or opens one.

    `observers`: functions called with each call's operation and request body before it is sent (tests count the
    calls a request makes with it, as they did with botocore's before-call event)."""

    def __init__(
        self,
        service: Service,
        *,
        region: str,
        credentials: CredentialSource,
        endpoint: str,
        connect_timeout: float,
        read_timeout: float,
        attempts: int,
        max_pool: int = 16,
    ) -> None:
        self.service, self.region, self.endpoint = service, region, endpoint
        self._credentials = credentials
        self._connect_timeout, self._read_timeout = connect_timeout, read_timeout
        self._attempts = max(1, attempts)
        self._max_pool = max_pool
        parts = urlsplit(endpoint)
        self._https = parts.scheme == "https"
        default_port = 443 if self._https else 80
        self._host, self._port = parts.hostname or "", parts.port or default_port
        host = f"[{self._host}]" if ":" in self._host else self._host  # an IPv6 address
        self._host_header = host if self._port == default_port else f"{host}:{self._port}"
        self._path = parts.path or "/"
        self._idle: list[http.client.HTTPConnection] = []
        self._pool_lock = threading.Lock()
        self.observers: list[Callable[[str, bytes], None]] = []

    def __getattr__(self, name: str) -> Callable[..., dict[str, Any]]:
        operation = self.service.operations.get(name)
        if operation is None:
            raise AttributeError(f"{self.service.signing_name} client has no operation {name!r}")
        return lambda **params: self.call(operation, params)

    def close(self) -> None:
        """Close the idle connections (one in use is closed by its call's end)."""
        with self._pool_lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    def call(self, operation: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """One operation, retried as botocore's standard mode retries; its answer, or ClientError/BotoCoreError."""
        token_name = self.service.idempotency_tokens.get(operation)
        if token_name and token_name not in params:
            params = {**params, token_name: _new_token()}  # one token for every attempt of this call
        body = json.dumps(params, separators=(",", ":"), default=_blob).encode()
        for observe in self.observers:
            observe(operation, body)
        for attempt in range(1, self._attempts + 1):
            try:
                answer = self._attempt(operation, body)
            except _Retry as retry:
                if attempt == self._attempts:
                    raise retry.error from None
                time.sleep(min(random.random() * 2 ** (attempt - 1), _MAX_BACKOFF_SECONDS))
                continue
            answer["ResponseMetadata"]["RetryAttempts"] = attempt - 1
            return answer
        raise AssertionError("unreachable")

    def _attempt(self, operation: str, body: bytes) -> dict[str, Any]:
        """One HTTP exchange: the parsed answer; ClientError for an error that retrying cannot help; _Retry else."""
        headers = {
            "Host": self._host_header,
            "Content-Type": f"application/x-amz-json-{self.service.json_version}",
            "X-Amz-Target": f"{self.service.target_prefix}.{operation}",
        }
        try:
            credentials = self._credentials.get()
        except CredentialRetrievalError as exc:
            raise _Retry(exc) from None
        sign(
            headers,
            body,
            path=self._path,
            credentials=credentials,
            service=self.service.signing_name,
            region=self.region,
            now=datetime.now(UTC),
        )
        headers["Content-Length"] = str(len(body))
        headers["User-Agent"] = _USER_AGENT
        status, response_headers, raw = self._exchange(headers, body)
        if self.service.crc32 and "x-amz-crc32" in response_headers:
            expected = response_headers["x-amz-crc32"]
            actual = str(zlib.crc32(raw))
            if expected != actual:
                raise _Retry(ChecksumError(checksum_type="crc32", expected_checksum=expected, actual_checksum=actual))
        metadata = {
            "RequestId": response_headers.get("x-amzn-requestid", ""),
            "HTTPStatusCode": status,
            "HTTPHeaders": response_headers,
            "RetryAttempts": 0,
        }
        if status < 300:
            try:
                answer = self._parse(raw) if raw else {}
            except ValueError:
                answer = None
            if not isinstance(answer, dict):  # not the service's JSON (a proxy's page?): not retried, as botocore
                raise UnreadableAnswer(endpoint_url=self.endpoint, operation=operation, status=status)
            answer["ResponseMetadata"] = metadata
            return answer
        response = self._error(status, response_headers, raw, metadata)
        code = response["Error"]["Code"]
        error = _error_class(code)(response, operation)  # type: ignore[arg-type]  # botocore's TypedDict, same keys
        if status >= 500 or code in _RETRYABLE_CODES:
            raise _Retry(error)
        raise error

    def _exchange(self, headers: Mapping[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        connection = self._take()
        try:
            connection.putrequest("POST", self._path, skip_host=True, skip_accept_encoding=True)
            for name, value in headers.items():
                connection.putheader(name, value)
            connection.endheaders(body)
            response = connection.getresponse()
            raw = response.read()
        except TimeoutError:
            connection.close()
            raise _Retry(ReadTimeoutError(endpoint_url=self.endpoint)) from None
        except (OSError, http.client.HTTPException):
            connection.close()
            raise _Retry(ConnectionClosedError(endpoint_url=self.endpoint)) from None
        except BaseException:
            connection.close()
            raise
        if response.will_close:
            connection.close()
        else:
            self._give(connection)
        return response.status, {name.lower(): value for name, value in response.getheaders()}, raw

    def _take(self) -> http.client.HTTPConnection:
        """An idle connection that nothing arrived on while it waited (a server that closed it sent its FIN), else
        a new one."""
        while True:
            with self._pool_lock:
                connection = self._idle.pop() if self._idle else None
            if connection is None:
                return self._connect()
            sock = connection.sock
            if sock is not None and not select.select([sock], [], [], 0)[0]:
                return connection
            connection.close()

    def _give(self, connection: http.client.HTTPConnection) -> None:
        with self._pool_lock:
            if len(self._idle) < self._max_pool:
                self._idle.append(connection)
                return
        connection.close()

    def _connect(self) -> http.client.HTTPConnection:
        connection: http.client.HTTPConnection
        if self._https:
            connection = http.client.HTTPSConnection(
                self._host, self._port, timeout=self._connect_timeout, context=_tls_context()
            )
        else:
            connection = http.client.HTTPConnection(self._host, self._port, timeout=self._connect_timeout)
        try:
            connection.connect()
        except TimeoutError:
            connection.close()
            raise _Retry(ConnectTimeoutError(endpoint_url=self.endpoint)) from None
        except OSError:
            connection.close()
            raise _Retry(EndpointConnectionError(endpoint_url=self.endpoint)) from None
        sock = connection.sock
        sock.settimeout(self._read_timeout)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return connection

    def _parse(self, raw: bytes) -> dict[str, Any]:
        # Binary values are base64 in JSON, and bytes in botocore's answers: decoded where the service has them.
        if self.service is DYNAMODB and _BINARY_VALUE.search(raw):
            answer: dict[str, Any] = json.loads(raw, object_hook=_attribute_value_blobs)
            return answer
        parsed: dict[str, Any] = json.loads(raw)
        if isinstance(parsed.get("SecretBinary"), str):
            parsed["SecretBinary"] = base64.b64decode(parsed["SecretBinary"])
        return parsed

    def _error(self, status: int, headers: Mapping[str, str], raw: bytes, metadata: dict[str, Any]) -> dict[str, Any]:
        """botocore's error response: Error.Code (the part of `__type` after '#', else x-amzn-errortype's before
        ':'), Error.Message, the error's own fields at the top (`CancellationReasons`, `Item`), ResponseMetadata."""
        try:
            body = self._parse(raw) if raw else {}
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        code = str(body.pop("__type", "") or headers.get("x-amzn-errortype", "")).split(":")[0].rsplit("#", 1)[-1]
        message = body.get("message", body.get("Message", ""))
        if not code:
            code, message = str(status), message or http.client.responses.get(status, "")
        return {**body, "Error": {"Message": str(message), "Code": code}, "ResponseMetadata": metadata}


_error_classes: dict[str, type[ClientError]] = {}


def _error_class(code: str) -> type[ClientError]:
    """A ClientError subclass named after the error's code, as botocore raises its modeled errors (what a log
    line's `type(exc).__name__` names): ResourceNotFoundException, ConditionalCheckFailedException..."""
    if not code.isidentifier():
        return ClientError
    error_class = _error_classes.get(code)
    if error_class is None:
        error_class = type(code, (ClientError,), {})
        if len(_error_classes) < 256:  # AWS's codes are few; anything past that is not worth a class each
            _error_classes[code] = error_class
    return error_class


def _attribute_value_blobs(value: dict[str, Any]) -> dict[str, Any]:
    """DynamoDB's binary AttributeValues ({"B": base64}, {"BS": [base64...]}) with bytes, as botocore answers them.
    Only an AttributeValue holds "B" or "BS" as its only key with a string or list of strings: a map whose one
    attribute is named B holds an AttributeValue (a dict) under it."""
    if len(value) == 1:
        if isinstance(blob := value.get("B"), str):
            return {"B": base64.b64decode(blob)}
        if isinstance(blobs := value.get("BS"), list) and all(isinstance(b, str) for b in blobs):
            return {"BS": [base64.b64decode(b) for b in blobs]}
    return value


def _blob(value: object) -> str:
    """JSON for what json cannot write: binary values as base64, as the protocol carries blobs."""
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _new_token() -> str:
    """A unique idempotency token, a version-4 UUID as botocore's: uuid4 draws from os.urandom (never `random`,
    whose state restored SnapStart snapshots share)."""
    import uuid  # deferred: only a transaction without a token needs it, never the start

    return str(uuid.uuid4())


_context: ssl.SSLContext | None = None
_context_lock = threading.Lock()


def _tls_context() -> ssl.SSLContext:
    """One verifying TLS context for the process (loading the CA bundle costs milliseconds), with the CAs botocore
    trusts: AWS_CA_BUNDLE's, else certifi's (as the upstream client's; Lambda's image may not have the system's
    where OpenSSL looks)."""
    global _context
    with _context_lock:
        if _context is None:
            _context = ssl.create_default_context(cafile=os.environ.get("AWS_CA_BUNDLE") or certifi.where())
        return _context
