"""The console's single sign-on cookies: the signed session a sign-in leaves, and the sign-in in progress.

A session is a JWT (HS256, PyJWT) in an HttpOnly, Secure, SameSite=Strict cookie named with the `__Host-` prefix
(the browser then keeps it to this host and path /, over HTTPS or localhost only). It holds who signed in (the
user id and what the ID token said of them) and a CSRF token, for `OIDC_SESSION_HOURS`; never the ID token. What
the person may do is read from their user at each request (auth.py), so a changed role or a blocked user applies
at once. A session cannot be ended on the server: signing out deletes the cookie from the browser, and a copy
taken before stops working at its expiry, or when the master key rotates (below).

A sign-in in progress (state, nonce, PKCE verifier) is a second cookie, SameSite=Lax (it must come back on the
identity provider's top-level redirect to /sso/callback, which Strict would drop), for 10 minutes.

The signing key is derived from the master key (HMAC-SHA256 with a fixed label per purpose), not a secret of its
own: nothing more to provision or rotate, the derivation is one-way (the key tells nothing of the master key), and
rotating the master key, what an operator does after a leak, ends every console session with it.

State-changing requests made with the session cookie must carry its CSRF token in `x-csrf-token` (the console
reads it from GET /sso/session, which only a page of the gateway's own origin can read): SameSite=Strict already
keeps other sites' requests from carrying the cookie; the token still holds if a browser or a subdomain does not.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets as random
import time
from dataclasses import dataclass
from typing import Any

from starlette.responses import Response

from .secrets import Secrets

SESSION_COOKIE = "__Host-gateway-session"
FLOW_COOKIE = "__Host-gateway-sign-in"
CSRF_HEADER = "x-csrf-token"
FLOW_SECONDS = 600
_ISSUER = "anthropic-gateway"
_SESSION_AUDIENCE = "anthropic-gateway/console-session"
_FLOW_AUDIENCE = "anthropic-gateway/sign-in"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class Session:
    user_id: str
    email: str | None
    name: str | None
    csrf_token: str
    expires_at: int  # Unix time


@dataclass(frozen=True)
class SignIn:
    """A sign-in in progress: what /sso/callback must find again."""

    state: str
    nonce: str
    code_verifier: str
    redirect_uri: str


async def _key(secrets: Secrets, purpose: bytes) -> bytes:
    master = await secrets.master_key()
    return hmac.new(master.encode(), b"anthropic-gateway/" + purpose, hashlib.sha256).digest()


async def _sign(secrets: Secrets, purpose: bytes, audience: str, claims: dict[str, Any], seconds: float) -> str:
    import jwt  # deferred: the console's sessions alone use it, and a process that only relays never imports it

    now = int(time.time())
    payload = {**claims, "iss": _ISSUER, "aud": audience, "iat": now, "exp": now + int(seconds)}
    return jwt.encode(payload, await _key(secrets, purpose), algorithm="HS256")


async def _read(secrets: Secrets, purpose: bytes, audience: str, value: str | None) -> dict[str, Any] | None:
    if not value:
        return None
    import jwt  # deferred, as in _sign

    try:
        claims: dict[str, Any] = jwt.decode(
            value,
            await _key(secrets, purpose),
            algorithms=["HS256"],
            audience=audience,
            issuer=_ISSUER,
            options={"require": ["exp", "iat", "iss", "aud"]},
        )
    except jwt.PyJWTError:
        return None  # forged, expired, signed before the master key rotated, or not ours at all
    return claims


# -- the session ---------------------------------------------------------------------------------------------------


async def start_session(
    secrets: Secrets, response: Response, user_id: str, email: str | None, name: str | None, hours: float
) -> None:
    """Sign `user_id` in: set the session cookie on `response` (signed with a key derived from the master key)."""
    seconds = hours * 3600
    claims = {"sub": user_id, "email": email, "name": name, "csrf": random.token_urlsafe(32)}
    value = await _sign(secrets, b"console-session/v1", _SESSION_AUDIENCE, claims, seconds)
    _set(response, SESSION_COOKIE, value, max_age=int(seconds), same_site="strict")


async def session_of(secrets: Secrets, cookies: dict[str, str]) -> Session | None:
    """The signed-in session the request's cookies carry, or None."""
    claims = await _read(secrets, b"console-session/v1", _SESSION_AUDIENCE, cookies.get(SESSION_COOKIE))
    if claims is None or not isinstance(claims.get("sub"), str) or not isinstance(claims.get("csrf"), str):
        return None
    return Session(
        user_id=claims["sub"],
        email=_text(claims.get("email")),
        name=_text(claims.get("name")),
        csrf_token=claims["csrf"],
        expires_at=int(claims["exp"]),
    )


def csrf_ok(session: Session, method: str, header: str | None) -> bool:
    """Whether a request made with `session` may go on: reads always; anything else only with its CSRF token."""
    if method in _SAFE_METHODS:
        return True
    return header is not None and hmac.compare_digest(header.encode(), session.csrf_token.encode())


def end_session(response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True, samesite="strict")


# -- a sign-in in progress -----------------------------------------------------------------------------------------


async def start_sign_in(secrets: Secrets, response: Response, sign_in: SignIn) -> None:
    claims = {
        "state": sign_in.state,
        "nonce": sign_in.nonce,
        "verifier": sign_in.code_verifier,
        "redirect_uri": sign_in.redirect_uri,
    }
    value = await _sign(secrets, b"sign-in/v1", _FLOW_AUDIENCE, claims, FLOW_SECONDS)
    _set(response, FLOW_COOKIE, value, max_age=FLOW_SECONDS, same_site="lax")


async def sign_in_of(secrets: Secrets, cookies: dict[str, str]) -> SignIn | None:
    claims = await _read(secrets, b"sign-in/v1", _FLOW_AUDIENCE, cookies.get(FLOW_COOKIE))
    names = ("state", "nonce", "verifier", "redirect_uri")
    if claims is None or not all(isinstance(claims.get(name), str) for name in names):
        return None
    return SignIn(claims["state"], claims["nonce"], claims["verifier"], claims["redirect_uri"])


def end_sign_in(response: Response) -> None:
    response.delete_cookie(FLOW_COOKIE, path="/", secure=True, httponly=True, samesite="lax")


# -----------------------------------------------------------------------------------------------------------------


def _set(response: Response, name: str, value: str, *, max_age: int, same_site: Any) -> None:
    # `__Host-` cookies must be Secure, Path=/ and without Domain, or browsers refuse them.
    response.set_cookie(name, value, max_age=max_age, path="/", secure=True, httponly=True, samesite=same_site)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
