"""The upstream and master keys come from Secrets Manager, cached per runtime for SECRETS_MAX_AGE seconds."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace

import boto3
import pytest

from anthropic_gateway.aws import AwsCalls
from anthropic_gateway.errors import GatewayError
from anthropic_gateway.secrets import Secrets
from anthropic_gateway.settings import get_settings


@pytest.fixture
def secret(aws):
    name = f"test/rotating-{uuid.uuid4().hex[:8]}"
    client = boto3.client("secretsmanager")
    client.create_secret(Name=name, SecretString="sk-ant-first")
    return name, client


def _secrets(max_age: int) -> Secrets:
    settings = replace(get_settings(), secrets_max_age=max_age)
    return Secrets(settings, AwsCalls(settings))


def test_a_rotated_secret_is_picked_up_once_the_cached_value_expires(secret, monkeypatch):
    name, client = secret
    secrets = _secrets(300)
    assert asyncio.run(secrets.get(name)) == "sk-ant-first"

    client.put_secret_value(SecretId=name, SecretString="sk-ant-second")
    assert asyncio.run(secrets.get(name)) == "sk-ant-first"  # cached: no call to Secrets Manager

    monkeypatch.setitem(secrets._fetched_at, name, secrets._fetched_at[name] - 300)  # the max age has passed
    assert asyncio.run(secrets.get(name)) == "sk-ant-second"


def test_forgotten_secrets_are_read_again(secret):
    """What the SnapStart hooks rely on: after `forget`, the value comes from Secrets Manager, over a new client."""
    name, client = secret
    secrets = _secrets(300)
    assert asyncio.run(secrets.get(name)) == "sk-ant-first"
    first_client = secrets.client()

    client.put_secret_value(SecretId=name, SecretString="sk-ant-second")
    secrets.forget()
    assert asyncio.run(secrets.get(name)) == "sk-ant-second"
    assert secrets.client() is not first_client


def test_a_missing_secret_is_a_503_that_names_no_value(aws):
    with pytest.raises(GatewayError) as refused:
        asyncio.run(_secrets(300).get("test/never-created"))
    assert refused.value.status == 503 and refused.value.error_type == "api_error"
    assert refused.value.message == "The gateway cannot read its configuration secret (ResourceNotFoundException)."
