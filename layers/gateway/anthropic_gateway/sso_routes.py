"""/sso/*: single sign-on with the company's identity provider (OpenID Connect), for the console and for developers.

    GET  /sso/config          public: whether SSO is on, and what `anthropic-gateway login` needs (issuer, client id)
    GET  /sso/login           the console's "Sign in with SSO": to the provider (authorization code flow with PKCE)
    GET  /sso/callback        back from the provider: the ID token verified, the user made or synced, the session set
    GET  /sso/session         who the console session is, and its CSRF token (401 without one)
    POST /sso/logout          ends the console session (deletes the cookie)
    POST /sso/personal-key    an ID token (Authorization: Bearer) for a short-lived personal key (the CLI's login)

The callback ends on the console (../ui) whatever happened; a failure shows there as a message (#/sign-in/<why>),
and is logged with its reason (never a code or a token).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from typing import Annotated
from urllib.parse import urlencode

from aws_lambda_powertools import Logger
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.responses import JSONResponse, RedirectResponse, Response

from . import oidc, sso, sso_session
from .auth import presented_key, runtime_of
from .aws import Unavailable
from .errors import GatewayError, invalid_request
from .front_door import Arrival
from .settings import OidcSettings
from .sso_session import SignIn
from .storage import users

logger = Logger(child=True)
router = APIRouter(prefix="/sso", include_in_schema=False)
CALLBACK_PATH = "/sso/callback"
_NO_STORE = {"cache-control": "no-store"}


@router.get("/config")
async def sso_config(request: Request) -> Response:
    oidc_settings = runtime_of(request).settings.oidc
    if oidc_settings is None:
        return JSONResponse({"enabled": False})
    return JSONResponse(
        {
            "enabled": True,
            "issuer": oidc_settings.issuer,
            "client_id": oidc_settings.client_id,
            "scopes": oidc_settings.scopes,
            "personal_key_hours": oidc_settings.personal_key_hours,
        }
    )


# -- the console: authorization code flow with PKCE -----------------------------------------------------------------


@router.get("/login")
async def login(request: Request) -> Response:
    oidc_settings = sso.configured(runtime_of(request).settings)
    try:
        discovery = await sso.client(oidc_settings).discovery()
    except oidc.OidcError as exc:
        logger.warning("sso sign-in: provider unreachable", extra={"reason": str(exc)})
        return _back_to_console("unavailable")
    verifier = secrets.token_urlsafe(64)
    sign_in = SignIn(
        state=secrets.token_urlsafe(32),
        nonce=secrets.token_urlsafe(32),
        code_verifier=verifier,
        redirect_uri=public_base(request) + CALLBACK_PATH,
    )
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    params = {
        "response_type": "code",
        "client_id": oidc_settings.client_id,
        "redirect_uri": sign_in.redirect_uri,
        "scope": oidc_settings.scopes,
        "state": sign_in.state,
        "nonce": sign_in.nonce,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    endpoint = discovery.authorization_endpoint
    response = RedirectResponse(
        f"{endpoint}{'&' if '?' in endpoint else '?'}{urlencode(params)}", status_code=302, headers=_NO_STORE
    )
    await sso_session.start_sign_in(runtime_of(request).secrets, response, sign_in)
    return response


@router.get("/callback")
async def callback(request: Request) -> Response:
    runtime: sso.Parts = runtime_of(request)
    oidc_settings = sso.configured(runtime.settings)
    query = request.query_params
    sign_in = await sso_session.sign_in_of(runtime.secrets, request.cookies)
    outcome, reason = "expired", "no sign-in in progress in this browser (or it took over 10 minutes)"
    response: Response | None = None
    if sign_in is not None and not secrets.compare_digest(query.get("state", "").encode(), sign_in.state.encode()):
        reason = "state does not match this browser's sign-in"
    elif sign_in is not None and query.get("error"):
        outcome = "denied" if query["error"] == "access_denied" else "refused"
        reason = f"the provider answered {query['error'][:100]!r}: {query.get('error_description', '')[:300]}"
    elif sign_in is not None:
        try:
            response = await _signed_in(runtime, oidc_settings, sign_in, query.get("code", ""))
        except GatewayError as exc:
            outcome = {401: "refused", 403: "blocked"}.get(exc.status, "unavailable")
            reason = exc.message
    if response is None:
        logger.warning("sso sign-in failed", extra={"outcome": outcome, "reason": reason})
        response = _back_to_console(outcome)
    sso_session.end_sign_in(response)
    return response


async def _signed_in(runtime: sso.Parts, oidc_settings: OidcSettings, sign_in: SignIn, code: str) -> Response:
    client = sso.client(oidc_settings)
    try:
        tokens = await client.exchange_code(
            code,
            redirect_uri=sign_in.redirect_uri,
            code_verifier=sign_in.code_verifier,
            client_secret=await sso.client_secret(runtime.secrets, oidc_settings),
        )
    except oidc.OidcError as exc:
        raise sso.provider_error(exc) from None
    identity = await sso.verified_identity(oidc_settings, tokens["id_token"], nonce=sign_in.nonce)
    user = await sso.signed_in_user(runtime, identity)
    response = RedirectResponse("../ui#/keys", status_code=303, headers=_NO_STORE)
    await sso_session.start_session(
        runtime.secrets,
        response,
        user.user_id,
        identity.email,
        identity.name or user.user_alias,
        oidc_settings.session_hours,
    )
    logger.info("sso sign-in", extra={"user_id": user.user_id, "role": user.user_role})
    return response


def _back_to_console(outcome: str) -> Response:
    return RedirectResponse(f"../ui#/sign-in/{outcome}", status_code=303, headers=_NO_STORE)


def public_base(request: Request) -> str:
    """The gateway's public base URL, as the provider must redirect back to it (a REST API's stage included)."""
    configured = runtime_of(request).settings.public_base_url
    if configured:
        return configured.rstrip("/")
    stage = Arrival.of(request.scope).front_door().path_prefix
    return str(request.base_url).rstrip("/") + stage


# -- the console session --------------------------------------------------------------------------------------------


@router.get("/session")
async def session(request: Request) -> Response:
    runtime: sso.Parts = runtime_of(request)
    found = await sso_session.session_of(runtime.secrets, request.cookies)
    if found is None:
        raise GatewayError(401, "Not signed in with single sign-on.")
    try:
        user = await runtime.aws.call(users.get, found.user_id)
    except Unavailable:
        raise GatewayError(503, "The gateway cannot read its users right now; retry.") from None
    if user is None or user.deleting or user.blocked:
        raise GatewayError(401, "Your user is blocked or no longer exists.")
    return JSONResponse(
        {
            "user_id": user.user_id,
            "email": found.email or user.user_email,
            "name": found.name or user.user_alias,
            "role": user.user_role,
            "teams": user.teams,
            "csrf_token": found.csrf_token,
            "expires_at": found.expires_at,
        },
        headers=_NO_STORE,
    )


@router.post("/logout")
async def logout(request: Request) -> Response:
    found = await sso_session.session_of(runtime_of(request).secrets, request.cookies)
    if found is not None and not sso_session.csrf_ok(found, "POST", request.headers.get(sso_session.CSRF_HEADER)):
        raise GatewayError(403, f"Missing or wrong {sso_session.CSRF_HEADER} header.")
    response = JSONResponse({"signed_out": True}, headers=_NO_STORE)
    sso_session.end_session(response)
    return response


# -- developers: an ID token for a personal key ---------------------------------------------------------------------


class PersonalKeyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    team_id: Annotated[str, Field(min_length=1, max_length=256)] | None = None


@router.post("/personal-key")
async def personal_key(request: Request) -> Response:
    """A personal key for the person whose ID token (from the provider, for this gateway's client id) is sent as
    Authorization: Bearer; optionally in one of their teams ({"team_id": ...})."""
    runtime: sso.Parts = runtime_of(request)
    oidc_settings = sso.configured(runtime.settings)
    token = presented_key(request.headers)
    if token is None:
        raise GatewayError(401, "Send an ID token from the identity provider as Authorization: Bearer <id token>.")
    raw = await request.body()
    try:
        body = PersonalKeyRequest.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        raise invalid_request(exc.errors()) from None
    identity = await sso.verified_identity(oidc_settings, token, nonce=None)
    user = await sso.signed_in_user(runtime, identity)
    issued = await sso.issue_personal_key(runtime, user, body.team_id)
    record = issued.record
    logger.info("personal key issued", extra={"user_id": user.user_id, "token": record.token})
    return JSONResponse(
        {
            "key": issued.key,
            "key_name": record.key_name,
            "token": record.token,
            "key_alias": record.key_alias,
            "expires": record.expires,
            "user_id": user.user_id,
            "team_id": record.team_id,
            "user_role": user.user_role,
        },
        headers=_NO_STORE,
    )
