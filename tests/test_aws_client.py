"""The gateway's own DynamoDB and Secrets Manager client (aws_client.py), held to botocore: the same signature over
the same request, the same answers and errors from moto for the same calls, retries as botocore's standard mode,
and connections reused only after a clean exchange. Then the credentials Lambda provides (environment, container
endpoint), and where botocore serves instead."""

from __future__ import annotations

import base64
import hmac
import http.server
import json
import os
import socket
import ssl
import threading
import zlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import boto3
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotocoreCredentials
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    CredentialRetrievalError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from anthropic_gateway import aws_client, keys, local
from anthropic_gateway.aws import AwsCalls, transient
from anthropic_gateway.aws_client import Credentials, JsonClient, StaticCredentials
from anthropic_gateway.settings import get_settings
from support.waiting import eventually

KEYS = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "session-token-example")


# -- a scripted AWS endpoint over loopback ------------------------------------------------------------------------


class Seen:
    """One request as the endpoint received it."""

    def __init__(self, method: str, path: str, headers: list[tuple[str, str]], body: bytes, peer: int) -> None:
        self.method, self.path, self.headers, self.body, self.peer = method, path, headers, body, peer

    def header(self, name: str) -> str | None:
        return next((value for key, value in self.headers if key.lower() == name.lower()), None)

    @property
    def operation(self) -> str:
        return (self.header("x-amz-target") or "").rsplit(".", 1)[-1]


Reply = tuple[int, dict[str, str], bytes]


class ScriptedAws:
    """`with ScriptedAws(replies) as endpoint:` answers each request with the next reply (status, headers, body;
    the last repeats), over TLS with `tls`, keeping HTTP/1.1 connections open unless a reply's headers hold
    "x-test-close" (the server then closes the connection after answering, without saying so). `seen`: the
    requests, with the client's port."""

    def __init__(self, *replies: Reply | Callable[[Seen], Reply], tls: ssl.SSLContext | None = None) -> None:
        self.replies = list(replies)
        self.seen: list[Seen] = []
        self.closed = threading.Event()
        scripted = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                seen = Seen(self.command, self.path, list(self.headers.items()), body, self.client_address[1])
                scripted.seen.append(seen)
                reply = scripted.replies[min(len(scripted.seen), len(scripted.replies)) - 1]
                status, headers, payload = reply(seen) if callable(reply) else reply
                self.send_response(status)
                close = headers.pop("x-test-close", None) is not None
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                self.wfile.flush()
                if close:
                    self.close_connection = True

            def finish(self) -> None:
                super().finish()
                if self.close_connection:
                    scripted.closed.set()

            do_POST = do_GET = _answer

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> ScriptedAws:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def ok(payload: dict[str, Any], **headers: str) -> Reply:
    body = json.dumps(payload).encode()
    return 200, {"Content-Type": "application/x-amz-json-1.0", "x-amz-crc32": str(zlib.crc32(body)), **headers}, body


def error(status: int, code: str, message: str = "no") -> Reply:
    body = json.dumps({"__type": f"com.amazonaws.dynamodb.v20120810#{code}", "message": message}).encode()
    return status, {"Content-Type": "application/x-amz-json-1.0"}, body


def client_of(url: str, *, attempts: int = 3, read_timeout: float = 5.0, credentials: Any = None) -> JsonClient:
    return JsonClient(
        aws_client.DYNAMODB,
        region="eu-west-1",
        credentials=credentials or StaticCredentials(KEYS),
        endpoint=url,
        connect_timeout=1.0,
        read_timeout=read_timeout,
        attempts=attempts,
    )


# -- SigV4 --------------------------------------------------------------------------------------------------------


def botocore_signature(seen: Seen, endpoint: str, credentials: Credentials, region: str) -> str:
    """The signature botocore computes for the request as it arrived (its own headers, path and body)."""
    authorization = seen.header("authorization") or ""
    signed = authorization.split("SignedHeaders=")[1].split(",")[0].split(";")
    request = AWSRequest(method=seen.method, url=endpoint + seen.path, data=seen.body)
    for name, value in seen.headers:
        if name.lower() in signed:
            request.headers[name] = value
    request.context["timestamp"] = seen.header("x-amz-date")
    signer = SigV4Auth(BotocoreCredentials(credentials.access_key, credentials.secret_key, credentials.token),
                       "dynamodb", region)  # fmt: skip
    return signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)


@pytest.mark.parametrize("token", ["session-token-example", None])
def test_a_call_is_signed_as_botocore_signs_it(token):
    credentials = Credentials(KEYS.access_key, KEYS.secret_key, token)
    with ScriptedAws(ok({"Item": {"pk": {"S": "a"}}})) as endpoint:
        client = client_of(endpoint.url, credentials=StaticCredentials(credentials))
        answer = client.get_item(TableName="t", Key={"pk": {"S": "a"}, "sk": {"S": "é ü"}})

    (seen,) = endpoint.seen
    assert answer["Item"] == {"pk": {"S": "a"}}
    assert seen.header("x-amz-target") == "DynamoDB_20120810.GetItem"
    assert seen.header("content-type") == "application/x-amz-json-1.0"
    assert seen.header("x-amz-security-token") == token
    assert json.loads(seen.body) == {"TableName": "t", "Key": {"pk": {"S": "a"}, "sk": {"S": "é ü"}}}
    authorization = seen.header("authorization") or ""
    assert authorization.startswith(f"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/{seen.header('x-amz-date')[:8]}/")
    signature = authorization.rsplit("Signature=", 1)[1]
    assert hmac.compare_digest(signature, botocore_signature(seen, endpoint.url, credentials, "eu-west-1"))


# -- the same answers and errors as botocore's, from moto ---------------------------------------------------------


@pytest.fixture
def two_clients(aws):
    """botocore's DynamoDB client and ours, on the same fresh table of the session's moto server."""
    name = f"aws-client-{keys.new_key()[-8:]}"
    botocore_client = boto3.client("dynamodb")
    botocore_client.create_table(TableName=name, **local.TABLE_SCHEMA)
    ours = AwsCalls(get_settings()).client("dynamodb")
    assert isinstance(ours, JsonClient)
    yield name, botocore_client, ours
    botocore_client.delete_table(TableName=name)


def without_metadata(answer: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in answer.items() if name != "ResponseMetadata"}


def raised(call: Callable[[], object]) -> tuple[str, dict[str, Any]]:
    """The error's class name and response. Its message is compared as Error.Message: botocore repeats it at the
    top for the errors its model lists, the gateway's client for every error."""
    with pytest.raises(ClientError) as caught:
        call()
    response = {name: value for name, value in without_metadata(caught.value.response).items() if name != "message"}
    return type(caught.value).__name__, response


def test_answers_and_errors_are_botocore_s(two_clients):
    name, theirs, ours = two_clients
    item = {
        "pk": {"S": "k"},
        "sk": {"S": "KEY"},
        "spend": {"N": "0.0000001"},
        "blob": {"B": b"\x00\xffbinary"},
        "blobs": {"BS": [b"one", b"\x00two"]},
        "nested": {"M": {"B": {"S": "a map attribute named B"}, "list": {"L": [{"BOOL": True}, {"NULL": True}]}}},
    }
    ours.put_item(TableName=name, Item=item)
    key = {"pk": {"S": "k"}, "sk": {"S": "KEY"}}

    for call in (
        lambda client: client.get_item(TableName=name, Key=key, ConsistentRead=True),
        lambda client: client.query(
            TableName=name, KeyConditionExpression="pk = :pk", ExpressionAttributeValues={":pk": {"S": "k"}}
        ),
        lambda client: client.batch_get_item(RequestItems={name: {"Keys": [key], "ConsistentRead": True}}),
        lambda client: client.update_item(
            TableName=name,
            Key=key,
            UpdateExpression="SET spend = :spend",
            ExpressionAttributeValues={":spend": {"N": "0.0000003"}},
            ReturnValues="ALL_NEW",
        ),
    ):
        assert without_metadata(call(ours)) == without_metadata(call(theirs))
    assert ours.get_item(TableName=name, Key=key)["Item"]["blob"] == {"B": b"\x00\xffbinary"}

    # Errors: a failed condition with the item as it was, a cancelled transaction with its reasons, a missing table,
    # a request DynamoDB refuses; each as botocore raises it.
    check = {"TableName": name, "ConditionExpression": "attribute_not_exists(pk)"}
    failing_calls = {
        "put_item": {**check, "Item": item, "ReturnValuesOnConditionCheckFailure": "ALL_OLD"},
        "transact_write_items": {
            "TransactItems": [
                {"ConditionCheck": {**check, "Key": key, "ReturnValuesOnConditionCheckFailure": "ALL_OLD"}},
                {"Put": {"TableName": name, "Item": {"pk": {"S": "other"}, "sk": {"S": "KEY"}}}},
            ]
        },
        "get_item": {"TableName": "no-such-table", "Key": key},
        "query": {"TableName": name, "KeyConditionExpression": "pk = :missing"},
    }
    failures = {}
    for method, params in failing_calls.items():
        (ours_class, failures[method]), (_, theirs_raised) = (
            raised(partial(getattr(ours, method), **params)),
            raised(partial(getattr(theirs, method), **params)),
        )
        assert failures[method] == theirs_raised
    assert failures["put_item"]["Item"]["blob"] == {"B": b"\x00\xffbinary"}
    assert failures["transact_write_items"]["CancellationReasons"][0]["Item"]["sk"] == {"S": "KEY"}
    # botocore names the errors its model lists (ConditionalCheckFailedException...) and raises the others as a
    # plain ClientError; the gateway's own client names each after its code.
    assert ours_class == "ValidationException"


def test_a_secret_reads_as_botocore_reads_it(aws):
    theirs = boto3.client("secretsmanager")
    name = f"aws-client-{keys.new_key()[-8:]}"
    theirs.create_secret(Name=name, SecretBinary=b"\x00binary secret")
    ours = aws_calls_client("secretsmanager")

    answer = ours.get_secret_value(SecretId=name)

    expected = theirs.get_secret_value(SecretId=name)
    assert answer["SecretBinary"] == expected["SecretBinary"] == b"\x00binary secret"
    assert answer["ARN"] == expected["ARN"] and answer["VersionId"] == expected["VersionId"]
    assert raised(lambda: ours.get_secret_value(SecretId=name + "-missing")) == raised(
        lambda: theirs.get_secret_value(SecretId=name + "-missing")
    )


def aws_calls_client(service: str) -> JsonClient:
    client = AwsCalls(get_settings()).client(service)
    assert isinstance(client, JsonClient)
    return client


# -- retries, as botocore's standard mode -------------------------------------------------------------------------


def test_a_5xx_and_throttling_are_retried_with_the_same_transaction_token():
    with ScriptedAws(error(500, "InternalServerError"), error(400, "ThrottlingException"), ok({})) as endpoint:
        answer = client_of(endpoint.url, attempts=3).transact_write_items(TransactItems=[])

    assert answer["ResponseMetadata"]["RetryAttempts"] == 2
    tokens = {json.loads(seen.body)["ClientRequestToken"] for seen in endpoint.seen}
    assert len(endpoint.seen) == 3 and len(tokens) == 1  # one token: a retry of an applied transaction is a no-op
    assert len(tokens.pop()) == 36


def test_attempts_end_with_the_last_error_and_a_client_error_is_not_retried():
    with (
        ScriptedAws(error(400, "ProvisionedThroughputExceededException")) as endpoint,
        pytest.raises(ClientError) as caught,
    ):
        client_of(endpoint.url, attempts=2).get_item(TableName="t", Key={})
    assert caught.value.response["Error"]["Code"] == "ProvisionedThroughputExceededException"
    assert len(endpoint.seen) == 2 and transient(caught.value)

    with ScriptedAws(error(400, "ValidationException", "bad")) as endpoint, pytest.raises(ClientError) as caught:
        client_of(endpoint.url, attempts=3).get_item(TableName="t", Key={})
    assert caught.value.response["Error"] == {"Code": "ValidationException", "Message": "bad"}
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert len(endpoint.seen) == 1 and not transient(caught.value)


def test_an_answer_that_fails_its_crc32_is_retried():
    good = ok({"Item": {"pk": {"S": "a"}}})
    corrupt = (200, {**good[1], "x-amz-crc32": str(zlib.crc32(good[2]) ^ 1)}, good[2])
    with ScriptedAws(corrupt, good) as endpoint:
        answer = client_of(endpoint.url).get_item(TableName="t", Key={})
    assert answer["Item"] == {"pk": {"S": "a"}} and len(endpoint.seen) == 2


def test_no_endpoint_and_no_answer_are_transient_botocore_errors():
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # bound, not listening: connections are refused
        with pytest.raises(EndpointConnectionError) as refused:
            client_of(f"http://127.0.0.1:{port}", attempts=1).get_item(TableName="t", Key={})
    assert transient(refused.value)

    with socket.socket() as silent:  # listens, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(ReadTimeoutError) as timed_out:
            client_of(url, attempts=1, read_timeout=0.2).get_item(TableName="t", Key={})
    assert isinstance(timed_out.value, BotoCoreError) and transient(timed_out.value)
    assert issubclass(ConnectTimeoutError, BotoCoreError)


# -- connections --------------------------------------------------------------------------------------------------


def test_a_connection_is_reused_after_a_clean_exchange_and_not_after_the_server_closed_it():
    item = ok({"Item": {}})
    closing = (item[0], {**item[1], "x-test-close": "1"}, item[2])
    with ScriptedAws(item, closing, item, item) as endpoint:
        client = client_of(endpoint.url, attempts=1)
        client.get_item(TableName="t", Key={})
        client.get_item(TableName="t", Key={})  # same connection; the server then closes it, silently
        eventually(endpoint.closed.is_set, what="the server closed the connection")
        answer = client.get_item(TableName="t", Key={})  # a new connection, not a failed attempt on the old one
        client.get_item(TableName="t", Key={})

    peers = [seen.peer for seen in endpoint.seen]
    assert peers[0] == peers[1] != peers[2] == peers[3]
    assert answer["ResponseMetadata"]["RetryAttempts"] == 0


def test_an_answer_saying_connection_close_is_not_pooled():
    item = ok({}, Connection="close")
    with ScriptedAws(item) as endpoint:
        client = client_of(endpoint.url)
        client.get_item(TableName="t", Key={})
        client.get_item(TableName="t", Key={})
    assert endpoint.seen[0].peer != endpoint.seen[1].peer


# -- credentials --------------------------------------------------------------------------------------------------


def container_reply(expires_in: timedelta, access_key: str = "ASIACONTAINER") -> Callable[[Seen], Reply]:
    def reply(seen: Seen) -> Reply:
        expiration = (datetime.now(UTC) + expires_in).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {"AccessKeyId": access_key, "SecretAccessKey": "secret", "Token": "container-token"}
        body["Expiration"] = expiration
        return 200, {"Content-Type": "application/json"}, json.dumps(body).encode()

    return reply


def test_container_credentials_sign_calls_with_the_endpoint_s_token_read_from_its_file(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("container-authorization\n")
    with ScriptedAws(container_reply(timedelta(hours=6))) as credentials_endpoint, ScriptedAws(ok({})) as dynamodb:
        source = aws_client.credentials_from_environment(
            {
                "AWS_CONTAINER_CREDENTIALS_FULL_URI": credentials_endpoint.url + "/2021-04-23/credentials",
                "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": str(token_file),
            }
        )
        assert isinstance(source, aws_client.ContainerCredentials)
        client = client_of(dynamodb.url, credentials=source)
        client.get_item(TableName="t", Key={})
        client.get_item(TableName="t", Key={})

    (fetch,) = credentials_endpoint.seen  # fetched once, then held until 15 minutes before they expire
    assert fetch.path == "/2021-04-23/credentials" and fetch.header("authorization") == "container-authorization"
    for seen in dynamodb.seen:
        assert seen.header("x-amz-security-token") == "container-token"
        assert "Credential=ASIACONTAINER/" in (seen.header("authorization") or "")


def test_container_credentials_are_renewed_before_they_expire_and_kept_while_renewal_fails():
    expiring = container_reply(timedelta(minutes=12))
    with ScriptedAws(expiring, (500, {}, b"down")) as endpoint:
        source = aws_client.ContainerCredentials(endpoint.url, "token", None)
        first = source.get()
        # 12 minutes left: renewal is attempted on each use, and while it fails the credentials in hand serve.
        assert source.get() == first and len(endpoint.seen) == 1 + 3  # three attempts at the renewal

    with ScriptedAws(container_reply(timedelta(minutes=5)), (500, {}, b"down")) as endpoint:
        source = aws_client.ContainerCredentials(endpoint.url, "token", None)
        source.get()
        with pytest.raises(CredentialRetrievalError):  # 5 minutes left: unusable soon, so the failure is an error
            source.get()


LAMBDA = {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "s", "AWS_SESSION_TOKEN": "t"}  # on demand


@pytest.mark.parametrize(
    ("environ", "region", "expected"),
    [
        (LAMBDA, "eu-west-1", True),
        ({"AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://127.0.0.1:9001/creds"}, "us-east-1", True),
        ({"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "/v2/credentials/x"}, "us-east-1", True),
        ({"AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://example.com/creds"}, "us-east-1", False),  # botocore refuses
        ({"AWS_PROFILE": "work"}, "us-east-1", False),  # a workstation: botocore's chain
        ({**LAMBDA, "HTTPS_PROXY": "http://proxy:3128"}, "us-east-1", False),
        ({**LAMBDA, "AWS_USE_FIPS_ENDPOINT": "true"}, "us-east-1", False),
        (LAMBDA, "us-iso-east-1", False),
        (LAMBDA, "cn-north-1", True),
    ],
)
def test_the_own_client_serves_what_lambda_provides_and_botocore_the_rest(environ, region, expected):
    assert aws_client.usable(environ, region) is expected


def test_endpoints_are_the_region_s_unless_configured():
    dynamodb, secrets = aws_client.DYNAMODB, aws_client.SECRETS_MANAGER
    assert aws_client.endpoint_url(dynamodb, "eu-west-1", {}) == "https://dynamodb.eu-west-1.amazonaws.com"
    assert aws_client.endpoint_url(secrets, "cn-north-1", {}) == "https://secretsmanager.cn-north-1.amazonaws.com.cn"
    configured = {"AWS_ENDPOINT_URL": "http://all:1/", "AWS_ENDPOINT_URL_DYNAMODB": "http://ddb:2"}
    assert aws_client.endpoint_url(dynamodb, "eu-west-1", configured) == "http://ddb:2"
    assert aws_client.endpoint_url(secrets, "eu-west-1", configured) == "http://all:1"


def test_the_runtime_makes_its_own_clients_where_lambda_s_credentials_are(aws, monkeypatch):
    assert os.environ["AWS_ACCESS_KEY_ID"]  # as Lambda on demand sets them (and `make dev`)
    calls = AwsCalls(get_settings())
    assert isinstance(calls.client("dynamodb"), JsonClient)
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    assert not isinstance(calls.client("dynamodb"), JsonClient)
    monkeypatch.delenv("HTTPS_PROXY")
    monkeypatch.setenv("AWS_CLIENT", "botocore")  # the operator's choice
    get_settings.cache_clear()
    try:
        assert not isinstance(AwsCalls(get_settings()).client("dynamodb"), JsonClient)
    finally:
        monkeypatch.delenv("AWS_CLIENT")
        get_settings.cache_clear()


def test_a_binary_value_decodes_only_where_it_is_an_attribute_value():
    payload = {
        "Item": {
            "b": {"B": base64.b64encode(b"\x01").decode()},
            "bs": {"BS": [base64.b64encode(b"\x02").decode()]},
            "m": {"M": {"B": {"S": "text"}, "BS": {"L": []}}},
            "n": {"N": "1"},
        }
    }
    with ScriptedAws(ok(payload)) as endpoint:
        item = client_of(endpoint.url).get_item(TableName="t", Key={})["Item"]
    assert item["b"] == {"B": b"\x01"} and item["bs"] == {"BS": [b"\x02"]}
    assert item["m"] == {"M": {"B": {"S": "text"}, "BS": {"L": []}}} and item["n"] == {"N": "1"}


def test_an_answer_that_is_not_the_service_s_json_is_a_botocore_error():
    page = (200, {"Content-Type": "text/html"}, b"<html>captive portal</html>")
    with ScriptedAws(page) as endpoint, pytest.raises(BotoCoreError) as caught:
        client_of(endpoint.url).get_item(TableName="t", Key={})
    assert len(endpoint.seen) == 1 and transient(caught.value)


@pytest.fixture
def tls_endpoint(tmp_path):
    """A ScriptedAws answering over TLS with a certificate of a CA made now (trustme), and that CA's file."""
    import trustme

    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    with ScriptedAws(ok({"Item": {"pk": {"S": "over TLS"}}}), tls=context) as endpoint:
        yield endpoint.url, ca_file


def test_tls_is_verified_and_aws_ca_bundle_s_ca_is_trusted(tls_endpoint, monkeypatch):
    url, ca_file = tls_endpoint
    monkeypatch.setattr(aws_client, "_context", None)  # made once per process: made again for each case here
    with pytest.raises(EndpointConnectionError):  # a CA that the default bundle (certifi's) does not hold
        client_of(url, attempts=1).get_item(TableName="t", Key={})

    monkeypatch.setattr(aws_client, "_context", None)
    monkeypatch.setenv("AWS_CA_BUNDLE", str(ca_file))
    answer = client_of(url, attempts=1).get_item(TableName="t", Key={})
    assert answer["Item"] == {"pk": {"S": "over TLS"}}
