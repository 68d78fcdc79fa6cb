"""A small OpenID Connect provider, served by uvicorn over loopback for the single sign-on tests.

    with FakeOidc(users=[OidcUser("alice", "alice@example.com", "Alice", groups=["gw-admins"])]) as idp:
        idp.issuer                      # http://localhost:<port>: what OIDC_ISSUER names
        idp.sign_in_as = "alice"        # who /authorize signs in (or ?login_hint=alice on the request)
        idp.approve(user_code, "alice")  # a person entering the device code (or GET verification_uri_complete&user=)

What it serves, as Okta, Entra ID or Cognito do (the parts a relying party and a device client use):
    GET  /.well-known/openid-configuration   discovery
    GET  /jwks                                the signing keys (RSA, made at start; `rotate_key` adds one)
    GET  /authorize                           authorization code flow with PKCE (S256 only); no UI: the user is
                                              preset or named by login_hint; `deny_next` answers access_denied
    POST /token                               authorization_code (code_verifier checked), device_code (RFC 8628:
                                              authorization_pending, slow_down, expired_token, access_denied) and
                                              refresh_token grants
    POST /device_authorization                RFC 8628 device authorization: device_code, user_code, verification_uri
    GET  /device?user_code=&user=             the verification page: approves the code for that user

Device codes expire and polls come too soon by `clock` (time.monotonic unless a test sets its own).

ID tokens carry iss, sub, aud, exp, iat, auth_time, email, name, the nonce of the authorization request and the
user's groups (claim `groups_claim`). `id_token(...)` mints any token a test needs, valid or not. `requests` lists
(method, path) of every request served, to see when the relying party fetched the keys again.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from support.servers import ThreadedUvicorn

Json = dict[str, Any]
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


@dataclass
class OidcUser:
    sub: str
    email: str
    name: str
    groups: list[str] = field(default_factory=list)


@dataclass
class _Code:
    user: OidcUser
    client_id: str
    redirect_uri: str
    challenge: str
    nonce: str | None
    scope: str


@dataclass
class _Device:
    client_id: str
    user_code: str
    scope: str
    expires_at: float
    interval: float
    user: OidcUser | None = None
    denied: bool = False
    last_poll: float | None = None


def new_rsa_key() -> RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _b64(number: int) -> str:
    raw = number.to_bytes((number.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def public_jwk(key: RSAPrivateKey, kid: str) -> Json:
    numbers = key.public_key().public_numbers()
    return {"kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid, "n": _b64(numbers.n), "e": _b64(numbers.e)}


class FakeOidc:
    def __init__(
        self,
        *,
        client_id: str = "gateway",
        client_secret: str | None = None,
        users: list[OidcUser] | None = None,
        groups_claim: str = "groups",
        device_interval: float = 5,
        device_expires_in: int = 600,
        id_token_seconds: int = 3600,
        host: str = "localhost",
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret  # None: a public client (PKCE alone)
        self.users = {user.sub: user for user in users or []}
        self.groups_claim = groups_claim
        self.device_interval = device_interval
        self.device_expires_in = device_expires_in
        self.id_token_seconds = id_token_seconds
        self.sign_in_as: str | None = None
        self.deny_next = False
        self.refresh_tokens_work = True  # False: every refresh_token grant is invalid_grant (a revoked session)
        # Device codes' lifetimes and polling intervals are counted on this clock (tests move it with the waits
        # they stand in for).
        self.clock: Callable[[], float] = time.monotonic
        self.requests: list[tuple[str, str]] = []
        self.token_requests: list[Json] = []  # the form of each /token request, client secret removed
        self._host = host
        self._lock = threading.Lock()
        self._keys: dict[str, RSAPrivateKey] = {}
        self.kid = ""
        self.rotate_key()
        self._codes: dict[str, _Code] = {}
        self._devices: dict[str, _Device] = {}  # by device_code
        self._refresh: dict[str, tuple[OidcUser, str]] = {}  # refresh token -> (user, client_id)
        self._slow_downs = 0
        self._server: ThreadedUvicorn | None = None
        self.issuer = ""

    # -- lifecycle ----------------------------------------------------------------------------------------------

    def __enter__(self) -> FakeOidc:
        routes = [
            Route("/.well-known/openid-configuration", self._discovery),
            Route("/jwks", self._jwks),
            Route("/authorize", self._authorize),
            Route("/token", self._token, methods=["POST"]),
            Route("/device_authorization", self._device_authorization, methods=["POST"]),
            Route("/device", self._verify_device),
        ]
        app = Starlette(routes=routes)

        async def recorded(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http":
                with self._lock:
                    self.requests.append((scope["method"], scope["path"]))
            await app(scope, receive, send)

        self._server = ThreadedUvicorn(recorded).__enter__()
        self.issuer = f"http://{self._host}:{self._server.port}"
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._server is not None:
            self._server.__exit__(*exc_info)

    # -- test controls ------------------------------------------------------------------------------------------

    def rotate_key(self) -> str:
        """A new signing key, published beside the old ones; tokens are signed with it from now on."""
        kid = f"key-{len(self._keys) + 1}-{secrets.token_hex(4)}"
        self._keys[kid] = new_rsa_key()
        self.kid = kid
        return kid

    def approve(self, user_code: str, sub: str) -> None:
        device = self._device_by_user_code(user_code)
        device.user = self.users[sub]

    def deny(self, user_code: str) -> None:
        self._device_by_user_code(user_code).denied = True

    def expire_devices(self) -> None:
        """Every device code issued so far is past its lifetime."""
        with self._lock:
            for device in self._devices.values():
                device.expires_at = 0

    def slow_down_next(self, times: int) -> None:
        """The next `times` device-code polls are answered slow_down (as if they came too fast)."""
        self._slow_downs = times

    def count(self, path: str) -> int:
        with self._lock:
            return sum(1 for _, seen in self.requests if seen == path)

    def id_token(
        self,
        sub: str,
        *,
        nonce: str | None = None,
        key: RSAPrivateKey | None = None,
        kid: str | None = None,
        algorithm: str = "RS256",
        **claims: Any,
    ) -> str:
        """An ID token for `sub`, signed with the current key unless `key`/`kid` say otherwise (kid="": none in the
        header); `claims` override or add claims (aud, iss, exp, ...; a value of None removes the claim)."""
        user = self.users[sub]
        now = int(time.time())
        payload: Json = {
            "iss": self.issuer,
            "sub": user.sub,
            "aud": self.client_id,
            "iat": now,
            "auth_time": now,
            "exp": now + self.id_token_seconds,
            "email": user.email,
            "email_verified": True,
            "name": user.name,
            self.groups_claim: list(user.groups),
        }
        if nonce is not None:
            payload["nonce"] = nonce
        payload.update(claims)
        payload = {name: value for name, value in payload.items() if value is not None}
        signing_kid = self.kid if kid is None else kid
        signing_key = key or self._keys[self.kid]
        headers = {"kid": signing_kid} if signing_kid else None  # kid="": a token without one
        return jwt.encode(payload, signing_key, algorithm=algorithm, headers=headers)

    # -- endpoints ----------------------------------------------------------------------------------------------

    async def _discovery(self, request: Request) -> Response:
        base = self.issuer
        return JSONResponse(
            {
                "issuer": base,
                "authorization_endpoint": f"{base}/authorize",
                "token_endpoint": f"{base}/token",
                "jwks_uri": f"{base}/jwks",
                "device_authorization_endpoint": f"{base}/device_authorization",
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "scopes_supported": ["openid", "email", "profile", "groups", "offline_access"],
                "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
                "code_challenge_methods_supported": ["S256"],
                "grant_types_supported": ["authorization_code", "refresh_token", DEVICE_GRANT],
            }
        )

    async def _jwks(self, request: Request) -> Response:
        return JSONResponse({"keys": [public_jwk(key, kid) for kid, key in self._keys.items()]})

    async def _authorize(self, request: Request) -> Response:
        query = request.query_params
        if query.get("client_id") != self.client_id:
            return PlainTextResponse("unknown client_id", status_code=400)
        redirect_uri = query.get("redirect_uri") or ""
        if not redirect_uri.startswith(("http://", "https://")):
            return PlainTextResponse("redirect_uri required", status_code=400)
        state = query.get("state")
        if self.deny_next:
            self.deny_next = False
            return _redirect(redirect_uri, error="access_denied", error_description="The user said no.", state=state)
        if query.get("response_type") != "code":
            return _redirect(redirect_uri, error="unsupported_response_type", state=state)
        if query.get("code_challenge_method") != "S256" or not query.get("code_challenge"):
            return _redirect(redirect_uri, error="invalid_request", error_description="PKCE S256 required", state=state)
        if "openid" not in (query.get("scope") or "").split():
            return _redirect(redirect_uri, error="invalid_scope", state=state)
        sub = query.get("login_hint") or self.sign_in_as
        user = self.users.get(sub or "")
        if user is None:
            return _redirect(redirect_uri, error="login_required", state=state)
        code = secrets.token_urlsafe(24)
        self._codes[code] = _Code(
            user, self.client_id, redirect_uri, query["code_challenge"], query.get("nonce"), query.get("scope") or ""
        )
        return _redirect(redirect_uri, code=code, state=state)

    async def _token(self, request: Request) -> Response:
        form = await _form(request)
        with self._lock:
            self.token_requests.append({name: value for name, value in form.items() if name != "client_secret"})
        client_id, secret = _client_credentials(request, form)
        if client_id != self.client_id:
            return _oauth_error("invalid_client", status=401)
        grant = form.get("grant_type")
        if grant == "authorization_code":
            if self.client_secret is not None and secret != self.client_secret:
                return _oauth_error("invalid_client", status=401)
            return self._code_grant(form)
        if secret is not None and secret != self.client_secret:
            return _oauth_error("invalid_client", status=401)
        if grant == DEVICE_GRANT:
            return self._device_grant(form)
        if grant == "refresh_token":
            found = self._refresh.pop(form.get("refresh_token", ""), None)
            if found is None or not self.refresh_tokens_work:
                return _oauth_error("invalid_grant")
            return self._tokens(found[0], nonce=None, scope="openid offline_access")
        return _oauth_error("unsupported_grant_type")

    def _code_grant(self, form: dict[str, str]) -> Response:
        code = self._codes.pop(form.get("code", ""), None)  # a code works once
        if code is None or code.redirect_uri != form.get("redirect_uri"):
            return _oauth_error("invalid_grant")
        verifier = form.get("code_verifier", "")
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        if not verifier or challenge != code.challenge:
            return _oauth_error("invalid_grant", "PKCE verification failed")
        return self._tokens(code.user, nonce=code.nonce, scope=code.scope)

    def _device_grant(self, form: dict[str, str]) -> Response:
        device = self._devices.get(form.get("device_code", ""))
        if device is None:
            return _oauth_error("invalid_grant")
        now = self.clock()
        if now >= device.expires_at:
            return _oauth_error("expired_token")
        if device.denied:
            return _oauth_error("access_denied")
        too_soon = device.last_poll is not None and now - device.last_poll < device.interval
        device.last_poll = now
        if self._slow_downs > 0 or too_soon:
            self._slow_downs = max(0, self._slow_downs - 1)
            device.interval += 5  # RFC 8628 3.5: the client adds 5 s too
            return _oauth_error("slow_down")
        if device.user is None:
            return _oauth_error("authorization_pending")
        del self._devices[form["device_code"]]
        return self._tokens(device.user, nonce=None, scope=device.scope)

    def _tokens(self, user: OidcUser, *, nonce: str | None, scope: str) -> Response:
        answer: Json = {
            "access_token": secrets.token_urlsafe(24),
            "token_type": "Bearer",
            "expires_in": self.id_token_seconds,
            "id_token": self.id_token(user.sub, nonce=nonce),
            "scope": scope,
        }
        if "offline_access" in scope.split():
            refresh = secrets.token_urlsafe(24)
            self._refresh[refresh] = (user, self.client_id)
            answer["refresh_token"] = refresh
        return JSONResponse(answer, headers={"cache-control": "no-store"})

    async def _device_authorization(self, request: Request) -> Response:
        form = await _form(request)
        if form.get("client_id") != self.client_id:
            return _oauth_error("invalid_client", status=401)
        device_code = secrets.token_urlsafe(24)
        user_code = "-".join(secrets.token_hex(2).upper() for _ in range(2))
        self._devices[device_code] = _Device(
            client_id=self.client_id,
            user_code=user_code,
            scope=form.get("scope", ""),
            expires_at=self.clock() + self.device_expires_in,
            interval=self.device_interval,
        )
        verification = f"{self.issuer}/device"
        return JSONResponse(
            {
                "device_code": device_code,
                "user_code": user_code,
                "verification_uri": verification,
                "verification_uri_complete": f"{verification}?{urlencode({'user_code': user_code})}",
                "expires_in": self.device_expires_in,
                "interval": self.device_interval,
            }
        )

    async def _verify_device(self, request: Request) -> Response:
        user_code, sub = request.query_params.get("user_code", ""), request.query_params.get("user", "")
        if sub not in self.users:
            return PlainTextResponse("name the user: &user=<sub>", status_code=400)
        try:
            self.approve(user_code, sub)
        except KeyError:
            return PlainTextResponse("unknown code", status_code=404)
        return PlainTextResponse(f"Signed in as {sub}; you may close this page.")

    def _device_by_user_code(self, user_code: str) -> _Device:
        for device in self._devices.values():
            if device.user_code == user_code:
                return device
        raise KeyError(user_code)


async def _form(request: Request) -> dict[str, str]:
    """An application/x-www-form-urlencoded body (parsed here: Starlette's form parsing needs python-multipart)."""
    return dict(parse_qsl((await request.body()).decode()))


def _client_credentials(request: Request, form: dict[str, str]) -> tuple[str | None, str | None]:
    """(client_id, secret) from HTTP Basic (client_secret_basic) or the form (client_secret_post, or none)."""
    scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "basic":
        client_id, _, secret = base64.b64decode(encoded).decode().partition(":")
        return client_id, secret
    return form.get("client_id"), form.get("client_secret")


def _redirect(uri: str, **params: str | None) -> Response:
    parts = urlsplit(uri)
    added = urlencode({name: value for name, value in params.items() if value is not None})
    query = f"{parts.query}&{added}" if parts.query else added
    return RedirectResponse(urlunsplit(parts._replace(query=query)), status_code=302)


def _oauth_error(error: str, description: str | None = None, *, status: int = 400) -> Response:
    body = {"error": error} | ({"error_description": description} if description else {})
    return JSONResponse(body, status_code=status, headers={"cache-control": "no-store"})
