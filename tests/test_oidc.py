"""ID-token verification (oidc.py) against the test suite's own OpenID provider over loopback: every way a token
can be wrong is refused, and the provider's keys are fetched again when, and only when, they must be."""

from __future__ import annotations

import asyncio
import time

import httpx
import jwt
import pytest

from anthropic_gateway import oidc
from support.fake_oidc import FakeOidc, OidcUser, new_rsa_key

ALICE = OidcUser("alice-sub", "alice@example.com", "Alice Example", groups=["gw-admins", "search"])


@pytest.fixture(scope="module")
def idp():
    with FakeOidc(client_id="gateway", users=[ALICE]) as fake:
        yield fake


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def client(idp, clock):
    return oidc.OidcClient(idp.issuer, "gateway", clock=clock)


def verify(client: oidc.OidcClient, token: str, nonce: str | None = None) -> dict:
    return asyncio.run(client.verify_id_token(token, nonce=nonce))


def refused(client: oidc.OidcClient, token: str, nonce: str | None = None) -> str:
    with pytest.raises(oidc.InvalidToken) as caught:
        verify(client, token, nonce)
    return str(caught.value)


def test_a_token_from_the_issuer_for_this_client_is_believed(idp, client):
    claims = verify(client, idp.id_token("alice-sub", nonce="n-1"), nonce="n-1")
    assert (claims["sub"], claims["email"], claims["name"]) == ("alice-sub", "alice@example.com", "Alice Example")
    assert claims["groups"] == ["gw-admins", "search"]
    # Without an expected nonce (the device flow has none), the same token is believed too.
    assert verify(client, idp.id_token("alice-sub"))["sub"] == "alice-sub"


def test_discovery_and_keys_are_fetched_once_and_cached(idp, client):
    before = (idp.count("/.well-known/openid-configuration"), idp.count("/jwks"))
    for _ in range(3):
        verify(client, idp.id_token("alice-sub"))
    assert (idp.count("/.well-known/openid-configuration"), idp.count("/jwks")) == (before[0] + 1, before[1] + 1)


def test_a_bad_signature_is_refused(idp, client):
    forged = idp.id_token("alice-sub", key=new_rsa_key(), kid=idp.kid)  # the published kid, another key
    assert "signature" in refused(client, forged)
    header, _, signature = idp.id_token("alice-sub").split(".")
    tampered = idp.id_token("alice-sub", email="mallory@example.com").split(".")[1]
    assert "signature" in refused(client, f"{header}.{tampered}.{signature}")


def test_a_token_for_another_client_or_from_another_issuer_is_refused(idp, client):
    assert "another client" in refused(client, idp.id_token("alice-sub", aud="some-other-app"))
    assert "another issuer" in refused(client, idp.id_token("alice-sub", iss="https://evil.example.com"))
    # Several audiences: this client must be the authorized party.
    assert "azp" in refused(client, idp.id_token("alice-sub", aud=["gateway", "other"], azp="other"))
    assert verify(client, idp.id_token("alice-sub", aud=["gateway", "other"], azp="gateway"))["sub"] == "alice-sub"


def test_an_expired_token_is_refused(idp, client):
    long_ago = int(time.time()) - 7200
    assert "expired" in refused(client, idp.id_token("alice-sub", iat=long_ago, exp=long_ago + 3600))
    assert "invalid" in refused(client, idp.id_token("alice-sub", exp=None))  # no expiry at all


def test_a_token_with_another_sign_ins_nonce_is_refused(idp, client):
    assert "nonce" in refused(client, idp.id_token("alice-sub", nonce="someone-else"), nonce="mine")
    assert "nonce" in refused(client, idp.id_token("alice-sub"), nonce="mine")  # none at all


def test_tokens_not_signed_with_rsa_are_refused(idp, client):
    unsigned = jwt.encode({"sub": "alice-sub", "iss": idp.issuer, "aud": "gateway"}, None, algorithm="none")
    assert "unsupported" in refused(client, unsigned)
    # The classic confusion: HS256 "signed" with the provider's public key as the secret.
    hs256 = jwt.encode(
        {"sub": "alice-sub", "iss": idp.issuer, "aud": "gateway", "exp": int(time.time()) + 60},
        "a-public-key-as-secret-0123456789abcdef",
        algorithm="HS256",
        headers={"kid": idp.kid},
    )
    assert "unsupported" in refused(client, hs256)
    assert "not a JWT" in refused(client, "not-a-token")


def test_an_unknown_key_id_fetches_the_keys_again_at_most_once_per_interval(idp, client, clock):
    verify(client, idp.id_token("alice-sub"))  # keys cached
    fetched = idp.count("/jwks")
    clock.now += oidc.REFETCH_SECONDS  # a while later, the provider rotates its signing key
    idp.rotate_key()
    assert verify(client, idp.id_token("alice-sub"))["sub"] == "alice-sub"
    assert idp.count("/jwks") == fetched + 1

    # Made-up key ids right after: refused from the cache, without asking the provider again.
    for attempt in range(5):
        assert "does not publish" in refused(client, idp.id_token("alice-sub", kid=f"made-up-{attempt}"))
    assert idp.count("/jwks") == fetched + 1
    clock.now += oidc.REFETCH_SECONDS
    assert "does not publish" in refused(client, idp.id_token("alice-sub", kid="made-up-later"))
    assert idp.count("/jwks") == fetched + 2


def test_a_token_without_a_key_id_is_checked_against_the_only_key(idp):
    with FakeOidc(client_id="gateway", users=[ALICE]) as single:  # one signing key
        client = oidc.OidcClient(single.issuer, "gateway")
        assert verify(client, single.id_token("alice-sub", kid=""))["sub"] == "alice-sub"
        assert "signature" in refused(client, single.id_token("alice-sub", kid="", key=new_rsa_key()))
    # Among several keys, a token must say which.
    idp.rotate_key()
    client = oidc.OidcClient(idp.issuer, "gateway")
    assert "does not publish" in refused(client, idp.id_token("alice-sub", kid=""))


def test_a_provider_that_cannot_be_reached_is_unreachable_not_invalid(idp):
    client = oidc.OidcClient("http://127.0.0.1:9", "gateway")  # the discard port: nothing listens
    with pytest.raises(oidc.Unreachable):
        asyncio.run(client.verify_id_token(idp.id_token("alice-sub"), nonce=None))


def test_discovery_for_another_issuer_is_refused(idp):
    client = oidc.OidcClient(idp.issuer + "/tenant", "gateway")  # the provider answers for its own issuer only
    with pytest.raises(oidc.Unreachable):
        asyncio.run(client.discovery())


def test_without_an_issuer_the_gateway_says_sso_is_off(gateway):
    """(Here, not in test_sso.py, whose module turns single sign-on on.)"""
    assert httpx.get(f"{gateway.url}/sso/config").json() == {"enabled": False}
    response = httpx.get(f"{gateway.url}/sso/login")
    assert response.status_code == 404 and "OIDC_ISSUER" in response.json()["error"]["message"]
    assert httpx.post(f"{gateway.url}/sso/personal-key").status_code == 404
