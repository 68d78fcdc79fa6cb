"""The pass-through over real TLS: the fake Anthropic upstream on HTTPS with a CA made at test time (trustme)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anthropic
import pytest
import trustme

from support.fake_anthropic import FakeAnthropic
from tests.conftest import UPSTREAM_KEY


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory) -> tuple[str, str, str]:
    """(CA bundle, certificate chain, private key) PEM files for 127.0.0.1."""
    folder: Path = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    leaf.private_key_pem.write_to_path(str(folder / "key.pem"))
    for blob in leaf.cert_chain_pems:
        blob.write_to_path(str(folder / "chain.pem"), append=True)
    return str(folder / "ca.pem"), str(folder / "chain.pem"), str(folder / "key.pem")


@pytest.fixture(scope="module")
def https_upstream(tls_files) -> Iterator[FakeAnthropic]:
    with FakeAnthropic(api_key=UPSTREAM_KEY, tls=(tls_files[1], tls_files[2])) as fake:
        yield fake


@pytest.fixture(autouse=True)
def _fresh_https_upstream(https_upstream) -> None:
    https_upstream.reset()


def test_sdk_through_the_gateway_to_an_https_upstream(gateway_with, virtual_key, https_upstream, tls_files):
    assert https_upstream.url.startswith("https://")
    gateway = gateway_with(anthropic_api_base=https_upstream.url, upstream_ca_bundle=tls_files[0])
    client = anthropic.Anthropic(base_url=gateway.url + "/anthropic", api_key=virtual_key, max_retries=0)

    message = client.messages.create(
        model="claude-sonnet-4-5", max_tokens=16, messages=[{"role": "user", "content": "Hi"}]
    )
    with client.messages.stream(
        model="claude-sonnet-4-5", max_tokens=16, messages=[{"role": "user", "content": "Hi"}]
    ) as stream:
        streamed = "".join(stream.text_stream)

    assert message.content[0].type == "text" and message.content[0].text == "Echo: Hi"
    assert streamed == "Echo: Hi"
    assert [r.path for r in https_upstream.requests] == ["/v1/messages", "/v1/messages"]


def test_the_default_trust_store_refuses_an_unknown_ca(gateway_with, virtual_key, https_upstream):
    gateway = gateway_with(anthropic_api_base=https_upstream.url, upstream_ca_bundle=None)
    client = anthropic.Anthropic(base_url=gateway.url + "/anthropic", api_key=virtual_key, max_retries=0)

    with pytest.raises(anthropic.APIStatusError) as refused:
        client.messages.create(model="claude-sonnet-4-5", max_tokens=16, messages=[{"role": "user", "content": "Hi"}])

    assert refused.value.status_code == 502
    assert refused.value.body == {
        "type": "error",
        "error": {"type": "api_error", "message": "The upstream Anthropic API could not be reached (ConnectError)."},
    }
    assert https_upstream.requests == []
