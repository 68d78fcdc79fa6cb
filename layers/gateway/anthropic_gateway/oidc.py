"""The gateway as an OpenID Connect relying party: the issuer's discovery document and signing keys, its token
endpoint, and ID-token verification.

ID tokens are verified with PyJWT (issuer, audience, expiry, issued-at, the nonce, `azp` when there are several
audiences) against the issuer's JWKS. The RSA signature itself is checked by python-rsa through a PyJWT algorithm
(`_RsaPkcs1`): PyJWT's own RSA needs `cryptography`, whose OpenSSL build is 14 MB per architecture, and the layer
holds both architectures within 30 MB. RS256 is the algorithm every OpenID provider must offer (OIDC Core 15.1),
and the one Okta, Entra ID, Cognito and Google sign with.

Discovery and keys are cached (`CACHE_SECONDS`); a token signed with a key the cache does not know makes one new
fetch of the key set (a provider rotated its keys), at most once per `REFETCH_SECONDS`, so tokens with made-up key
ids cannot make the gateway hammer the provider. Every fetch runs in a worker thread under a deadline.
Failures are exceptions of this module (`Unreachable`, `InvalidToken`, `Refused`); policy (sso.py) answers them.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import certifi
import jwt
from jwt.algorithms import Algorithm

from . import http_json

if TYPE_CHECKING:
    import rsa

CACHE_SECONDS = 3600.0
REFETCH_SECONDS = 30.0
LEEWAY_SECONDS = 60  # clock skew allowed between the provider and the gateway
TIMEOUT_SECONDS = 5.0  # one socket operation with the provider
DEADLINE_SECONDS = 8.0  # one whole call to the provider, as the caller waits for it
MIN_KEY_BITS = 2048
_HASHES = {"RS256": "SHA-256", "RS384": "SHA-384", "RS512": "SHA-512"}
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


class OidcError(Exception):
    """Something the identity provider or a token did wrong; the message is safe to show (never a token)."""


class Unreachable(OidcError):
    """The provider did not answer in time, or answered something unusable."""


class InvalidToken(OidcError):
    """An ID token that must not be believed."""


class Refused(OidcError):
    """The token endpoint refused the request (OAuth `error`, e.g. invalid_grant)."""

    def __init__(self, error: str, description: str | None) -> None:
        super().__init__(f"{error}: {description}" if description else error)
        self.error = error


@dataclass(frozen=True)
class Discovery:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    device_authorization_endpoint: str | None
    end_session_endpoint: str | None
    token_auth_methods: tuple[str, ...]
    scopes_supported: tuple[str, ...]

    @classmethod
    def of(cls, document: dict[str, Any], issuer: str) -> Discovery:
        # OpenID Connect Discovery 4.3: the document's issuer must be exactly the one it was fetched for.
        if document.get("issuer") != issuer:
            raise Unreachable(f"the discovery document names issuer {str(document.get('issuer'))[:200]!r}")
        required = ("authorization_endpoint", "token_endpoint", "jwks_uri")
        missing = [name for name in required if not isinstance(document.get(name), str)]
        if missing:
            raise Unreachable(f"the discovery document lacks {', '.join(missing)}")

        def text(name: str) -> str | None:
            value = document.get(name)
            return value if isinstance(value, str) and value else None

        def texts(name: str, default: tuple[str, ...]) -> tuple[str, ...]:
            value = document.get(name)
            return tuple(v for v in value if isinstance(v, str)) if isinstance(value, list) else default

        return cls(
            issuer=issuer,
            authorization_endpoint=document["authorization_endpoint"],
            token_endpoint=document["token_endpoint"],
            jwks_uri=document["jwks_uri"],
            device_authorization_endpoint=text("device_authorization_endpoint"),
            end_session_endpoint=text("end_session_endpoint"),
            # OIDC Discovery 3: client_secret_basic when the provider says nothing.
            token_auth_methods=texts("token_endpoint_auth_methods_supported", ("client_secret_basic",)),
            scopes_supported=texts("scopes_supported", ()),
        )


class _RsaPkcs1(Algorithm):
    """RSASSA-PKCS1-v1_5 verification (RS256/384/512) by python-rsa, for PyJWT. Verifies only: the gateway never
    signs with an RSA key."""

    def __init__(self, alg: str) -> None:
        self.hash_name = _HASHES[alg]

    def prepare_key(self, key: Any) -> rsa.PublicKey:
        import rsa

        if not isinstance(key, rsa.PublicKey):
            raise InvalidToken("not an RSA public key")
        return key

    def verify(self, msg: bytes, key: Any, sig: bytes) -> bool:
        import rsa

        try:
            # rsa.verify reads the hash from the signature: the token's alg must name that same hash.
            return bool(rsa.verify(msg, sig, key) == self.hash_name)
        except rsa.VerificationError:
            return False

    def sign(self, msg: bytes, key: Any) -> bytes:
        raise NotImplementedError("verification only")

    @staticmethod
    def to_jwk(key_obj: Any, as_dict: bool = False) -> Any:
        raise NotImplementedError("verification only")

    @staticmethod
    def from_jwk(jwk: Any) -> Any:
        raise NotImplementedError("keys come from the provider's JWKS (OidcClient)")


class _IdTokenDecoder(jwt.PyJWT):
    """PyJWT's decoder and claim checks, with a JWS that knows only the RSA verification above: no `none`, no
    HMAC (a token "signed" with the public key as an HMAC secret is refused, whatever it claims)."""

    def __init__(self) -> None:
        super().__init__(options={"require": ["iss", "aud", "exp", "iat", "sub"]})
        self._jws = jwt.PyJWS(algorithms=[])  # PyJWT's extension point: its decoder verifies through this
        for alg in _HASHES:
            self._jws.register_algorithm(alg, _RsaPkcs1(alg))


def _b64_int(text: object) -> int:
    if not isinstance(text, str):
        raise ValueError("not a string")
    return int.from_bytes(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)), "big")


_Keys = dict[str | None, tuple["rsa.PublicKey", str | None]]


def _public_keys(jwks: dict[str, Any]) -> _Keys:
    """The RSA signing keys of a JWKS by kid: (key, the alg it is for, if it says)."""
    import rsa

    found: dict[str | None, tuple[rsa.PublicKey, str | None]] = {}
    for jwk in jwks.get("keys") or []:
        if not isinstance(jwk, dict) or jwk.get("kty") != "RSA" or jwk.get("use", "sig") != "sig":
            continue
        try:
            key = rsa.PublicKey(_b64_int(jwk.get("n")), _b64_int(jwk.get("e")))
        except (ValueError, TypeError):
            continue
        if key.n.bit_length() < MIN_KEY_BITS:
            continue
        kid = jwk.get("kid")
        alg = jwk.get("alg")
        found[kid if isinstance(kid, str) else None] = (key, alg if isinstance(alg, str) else None)
    return found


def _key_for(keys: _Keys, kid: str | None) -> tuple[rsa.PublicKey, str | None] | None:
    if kid is None and len(keys) == 1:  # a provider with one key may leave kid out of its tokens
        return next(iter(keys.values()))
    return keys.get(kid)


class OidcClient:
    """One issuer and one client id: what the gateway fetched from the provider, cached, and what it checks.

    clock: monotonic seconds (tests move it to expire caches and the refetch limit).
    """

    def __init__(
        self,
        issuer: str,
        client_id: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.issuer, self.client_id = issuer, client_id
        self._clock = clock
        self._opener = http_json.opener(ssl_context or ssl.create_default_context(cafile=certifi.where()))
        self._decoder = _IdTokenDecoder()
        self._lock = threading.Lock()  # one fetch at a time; callers waiting on it then read what it fetched
        self._discovery: tuple[float, Discovery] | None = None
        self._keys: tuple[float, _Keys] | None = None

    # -- the provider's documents ---------------------------------------------------------------------------------

    async def discovery(self) -> Discovery:
        cached = self._discovery
        if cached is not None and self._clock() - cached[0] < CACHE_SECONDS:
            return cached[1]
        return await self._off_loop(self._fetch_discovery)

    def _fetch_discovery(self) -> Discovery:
        with self._lock:
            cached = self._discovery
            if cached is not None and self._clock() - cached[0] < CACHE_SECONDS:
                return cached[1]  # fetched by whoever held the lock before us
            started = self._clock()
            answer = self._get(f"{self.issuer}/.well-known/openid-configuration")
            discovery = Discovery.of(answer, self.issuer)
            self._discovery = (started, discovery)
            return discovery

    async def _signing_key(self, kid: str | None) -> tuple[rsa.PublicKey, str | None]:
        cached = self._keys
        if cached is not None and self._clock() - cached[0] < CACHE_SECONDS:
            found = _key_for(cached[1], kid)
            if found is not None:
                return found
        jwks_uri = (await self.discovery()).jwks_uri
        found = _key_for(await self._off_loop(self._fetch_keys, jwks_uri, kid), kid)
        if found is None:
            raise InvalidToken("the token is signed with a key the issuer does not publish")
        return found

    def _fetch_keys(self, jwks_uri: str, kid: str | None) -> _Keys:
        with self._lock:
            cached = self._keys
            now = self._clock()
            if cached is not None:
                fresh = now - cached[0] < CACHE_SECONDS
                if (fresh and _key_for(cached[1], kid) is not None) or (now - cached[0] < REFETCH_SECONDS):
                    return cached[1]  # known, or fetched a moment ago: an unknown kid is then simply unknown
            keys = _public_keys(self._get(jwks_uri))
            self._keys = (now, keys)
            return keys

    def _get(self, url: str) -> dict[str, Any]:
        try:
            answer = http_json.request(self._opener, url, timeout=TIMEOUT_SECONDS)
        except http_json.HttpError as exc:
            raise Unreachable(f"{url}: {exc}") from None
        if answer.status != 200:
            raise Unreachable(f"{url}: HTTP {answer.status}")
        return answer.body

    async def _off_loop[T](self, function: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.wait_for(asyncio.to_thread(function, *args), DEADLINE_SECONDS)
        except TimeoutError:
            raise Unreachable(f"{self.issuer} did not answer within {DEADLINE_SECONDS:g} s") from None

    # -- ID tokens ------------------------------------------------------------------------------------------------

    async def verify_id_token(self, token: str, *, nonce: str | None) -> dict[str, Any]:
        """The claims of an ID token issued by the issuer to this client, signed with one of its keys, not expired;
        with the `nonce` the authorization request sent, when given. InvalidToken says why not."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidToken("not a JWT") from None
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in _HASHES:
            raise InvalidToken(f"unsupported signature algorithm {str(alg)[:20]!r} (RS256, RS384, RS512)")
        key, key_alg = await self._signing_key(kid if isinstance(kid, str) else None)
        if key_alg is not None and key_alg != alg:
            raise InvalidToken(f"the key is for {key_alg}, the token says {alg}")
        verifying_key: Any = key  # _RsaPkcs1 takes python-rsa's key; PyJWT's annotation lists cryptography's
        try:
            claims: dict[str, Any] = self._decoder.decode(
                token,
                verifying_key,
                algorithms=[alg],
                audience=self.client_id,
                issuer=self.issuer,
                leeway=LEEWAY_SECONDS,
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken("the ID token has expired") from None
        except jwt.InvalidAudienceError:
            raise InvalidToken("the ID token was issued to another client") from None
        except jwt.InvalidIssuerError:
            raise InvalidToken("the ID token was issued by another issuer") from None
        except jwt.InvalidSignatureError:
            raise InvalidToken("the ID token's signature does not verify") from None
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"the ID token is invalid ({str(exc)[:200]})") from None
        audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        # OIDC Core 3.1.3.7: with several audiences, the authorized party must be this client.
        if len(audiences) > 1 and claims.get("azp") != self.client_id:
            raise InvalidToken("the ID token was issued to another client (azp)")
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise InvalidToken("the ID token has no subject")
        if nonce is not None and not hmac.compare_digest(str(claims.get("nonce", "")).encode(), nonce.encode()):
            raise InvalidToken("the ID token's nonce is not this sign-in's")
        return claims

    # -- the token endpoint ---------------------------------------------------------------------------------------

    async def exchange_code(
        self, code: str, *, redirect_uri: str, code_verifier: str, client_secret: str | None
    ) -> dict[str, Any]:
        """The token response for an authorization code (PKCE: the verifier of the request's challenge)."""
        discovery = await self.discovery()
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": code_verifier,
            "client_id": self.client_id,
        }
        headers: dict[str, str] = {}
        if client_secret is not None:
            if "client_secret_basic" in discovery.token_auth_methods:
                # RFC 6749 2.3.1: both form-encoded before they are joined
                pair = f"{_form_encode(self.client_id)}:{_form_encode(client_secret)}"
                headers["authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
            else:
                form["client_secret"] = client_secret
        answer = await self._off_loop(self._post, discovery.token_endpoint, form, headers)
        if answer.status != 200 or not isinstance(answer.body.get("id_token"), str):
            error = answer.body.get("error")
            if isinstance(error, str):
                description = answer.body.get("error_description")
                raise Refused(error[:100], str(description)[:300] if description else None)
            raise Unreachable(f"the token endpoint answered HTTP {answer.status} without an ID token")
        return answer.body

    def _post(self, url: str, form: dict[str, str], headers: dict[str, str]) -> http_json.JsonAnswer:
        try:
            return http_json.request(self._opener, url, form=form, headers=headers, timeout=TIMEOUT_SECONDS)
        except http_json.HttpError as exc:
            raise Unreachable(f"{url}: {exc}") from None


def _form_encode(text: str) -> str:
    from urllib.parse import quote_plus

    return quote_plus(text)
