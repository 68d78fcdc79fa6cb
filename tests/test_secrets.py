"""The upstream and master keys come from Secrets Manager, cached per process for SECRETS_MAX_AGE seconds."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace

import boto3
import pytest

from anthropic_gateway import secrets
from anthropic_gateway.errors import GatewayError


@pytest.fixture
def secret(aws):
    name = f"test/rotating-{uuid.uuid4().hex[:8]}"
    client = boto3.client("secretsmanager")
    client.create_secret(Name=name, SecretString="sk-ant-first")
    return name, client


def _use_max_age(monkeypatch, seconds: int) -> None:
    settings = replace(secrets.get_settings(), secrets_max_age=seconds)
    monkeypatch.setattr(secrets, "get_settings", lambda: settings)


def test_a_rotated_secret_is_picked_up_once_the_cached_value_expires(secret, monkeypatch):
    name, client = secret
    _use_max_age(monkeypatch, 300)
    assert asyncio.run(secrets._secret(name)) == "sk-ant-first"

    client.put_secret_value(SecretId=name, SecretString="sk-ant-second")
    assert asyncio.run(secrets._secret(name)) == "sk-ant-first"  # cached: no call to Secrets Manager

    monkeypatch.setitem(secrets._fetched_at, name, secrets._fetched_at[name] - 300)  # the max age has passed
    assert asyncio.run(secrets._secret(name)) == "sk-ant-second"


def test_a_missing_secret_is_a_503_that_names_no_value(aws, monkeypatch):
    _use_max_age(monkeypatch, 300)
    with pytest.raises(GatewayError) as refused:
        asyncio.run(secrets._secret("test/never-created"))
    assert refused.value.status == 503 and refused.value.error_type == "api_error"
    assert refused.value.message == "The gateway cannot read its configuration secret (GetParameterError)."
