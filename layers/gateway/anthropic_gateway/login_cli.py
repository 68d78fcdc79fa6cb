"""`anthropic-gateway login` and `anthropic-gateway key`: a developer's short-lived personal key, from single
sign-on with the company's identity provider.

    anthropic-gateway login --url https://gateway.example.com     # once: sign in on the provider's page
    anthropic-gateway key                                          # prints the current key, renewing it as needed

`login` asks the gateway which provider and client it uses (GET /sso/config), runs the OAuth device authorization
flow (RFC 8628) against that provider (open a page, enter a code), and exchanges the ID token it gets for a
personal key (POST /sso/personal-key), which expires after the gateway's PERSONAL_KEY_HOURS. The key, its expiry
and the provider's refresh token (when it gives one) are kept in <config dir>/anthropic-gateway/credentials.json,
readable by the user alone (0600).

`key` prints that key. Within RENEW_BEFORE of its expiry (or after it), it gets a new one first: with the refresh
token, without asking anything; when there is none or the provider refuses it, through the device flow again, whose
instructions go to stderr. Claude Code runs it as its apiKeyHelper ({"apiKeyHelper": "anthropic-gateway key"} in
settings.json), so every session has a working key without anyone copying keys around. Concurrent runs renew once
(a lock file beside the credentials).

A client, like cli.py: it talks HTTP to the gateway and the provider (standard library only, so a developer's
install needs nothing more), and reads its own environment (GATEWAY_URL, ANTHROPIC_GATEWAY_CONFIG_DIR). The admin
commands (`keys`, `teams`, `users`, `tags`, `audit`) use the saved key too when no key is in their environment
(cli.py's `admin_credentials`), so a person acts on the admin API with their own role.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from . import http_json

RENEW_BEFORE = timedelta(minutes=15)  # Claude Code keeps a helper's key for 5 minutes: it must outlive that
TIMEOUT = 30.0
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
sleep = time.sleep  # tests wait without waiting


class LoginError(Exception):
    """Why no key could be had, worded for the developer."""


def now() -> datetime:
    return datetime.now(UTC)


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- where the credentials live -------------------------------------------------------------------------------------


def config_dir() -> Path:
    explicit = os.environ.get("ANTHROPIC_GATEWAY_CONFIG_DIR")
    if explicit:
        return Path(explicit)
    if sys.platform == "win32" and os.environ.get("APPDATA"):
        return Path(os.environ["APPDATA"]) / "anthropic-gateway"
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "anthropic-gateway"


def credentials_path() -> Path:
    return config_dir() / "credentials.json"


def _load() -> dict[str, Any]:
    try:
        data = json.loads(credentials_path().read_text())
    except FileNotFoundError:
        return {"gateways": {}}
    except (OSError, ValueError) as exc:
        raise LoginError(f"cannot read {credentials_path()}: {exc}") from None
    return data if isinstance(data, dict) and isinstance(data.get("gateways"), dict) else {"gateways": {}}


def _save(data: dict[str, Any]) -> None:
    """Written whole to a new file readable by the user alone, then renamed over the old one."""
    directory = config_dir()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=".credentials-", suffix=".json")  # mode 0600
    try:
        with os.fdopen(handle, "w") as file:
            json.dump(data, file, indent=2)
            file.write("\n")
        os.chmod(temporary, 0o600)
        os.replace(temporary, credentials_path())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """One renewal at a time across processes (every Claude Code session runs the helper on its own)."""
    directory = config_dir()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(directory / "credentials.lock", "a") as lock_file:
        if sys.platform != "win32":
            import fcntl

            fcntl.flock(lock_file, fcntl.LOCK_EX)
        yield


# -- talking to the gateway and the provider ------------------------------------------------------------------------


def check_url(url: str, what: str) -> str:
    """https, or http to this machine: an ID token or a key must not cross a network in the clear."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    loopback = host == "localhost" or _is_loopback_address(host)
    if not (parts.scheme == "https" and host) and not (parts.scheme == "http" and loopback):
        raise LoginError(f"{what} {url!r}: expected https:// (http only to localhost)")
    return url.rstrip("/")


def _is_loopback_address(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_opener = http_json.opener()


def _call(url: str, **kwargs: Any) -> http_json.JsonAnswer:
    try:
        return http_json.request(_opener, url, timeout=TIMEOUT, **kwargs)
    except http_json.HttpError as exc:
        raise LoginError(f"{url}: {exc}") from None


def _error_of(answer: http_json.JsonAnswer) -> str:
    error = answer.body.get("error")
    if isinstance(error, dict):  # the gateway's Anthropic-shaped error
        return str(error.get("message", error))
    description = answer.body.get("error_description")
    return f"{error}: {description}" if description else str(error or f"HTTP {answer.status}")


def gateway_sso(url: str) -> dict[str, Any]:
    """The gateway's provider: issuer, client id and scopes, plus the provider's endpoints from its discovery."""
    config = _call(f"{url}/sso/config")
    if config.status != 200 or not config.body.get("enabled"):
        raise LoginError(f"{url} does not offer single sign-on (GET /sso/config: {_error_of(config)})")
    issuer = check_url(str(config.body["issuer"]), "issuer")
    discovery = _call(f"{issuer}/.well-known/openid-configuration")
    if discovery.status != 200:
        raise LoginError(f"the identity provider's discovery document: {_error_of(discovery)}")
    device_endpoint = discovery.body.get("device_authorization_endpoint")
    if not isinstance(device_endpoint, str):
        raise LoginError(
            f"the identity provider {issuer} offers no device sign-in (RFC 8628 device authorization): "
            "see docs/access.md for the providers that do"
        )
    scopes = str(config.body.get("scopes") or "openid").split()
    supported = discovery.body.get("scopes_supported")
    if isinstance(supported, list) and "offline_access" in supported and "offline_access" not in scopes:
        scopes.append("offline_access")  # a refresh token: `key` then renews without asking again
    return {
        "issuer": issuer,
        "client_id": str(config.body["client_id"]),
        "scope": " ".join(scopes),
        "device_authorization_endpoint": device_endpoint,
        "token_endpoint": str(discovery.body["token_endpoint"]),
    }


def device_sign_in(provider: dict[str, Any]) -> dict[str, Any]:
    """RFC 8628: the person opens a page and enters a code; this polls the token endpoint meanwhile. The tokens."""
    started = _call(
        provider["device_authorization_endpoint"],
        form={"client_id": provider["client_id"], "scope": provider["scope"]},
    )
    if started.status != 200 or "device_code" not in started.body:
        raise LoginError(f"the identity provider refused a device sign-in: {_error_of(started)}")
    body = started.body
    page = body.get("verification_uri_complete") or body.get("verification_uri") or body.get("verification_url")
    _say(f"To sign in, open {page}\nand confirm the code {body.get('user_code')}. Waiting...")
    interval = float(body.get("interval") or 5)
    deadline = time.monotonic() + float(body.get("expires_in") or 600)
    form = {"grant_type": DEVICE_GRANT, "device_code": str(body["device_code"]), "client_id": provider["client_id"]}
    while True:
        sleep(interval)
        answer = _call(provider["token_endpoint"], form=form)
        error = answer.body.get("error")
        if answer.status == 200 and isinstance(answer.body.get("id_token"), str):
            return answer.body
        if error == "authorization_pending" and time.monotonic() < deadline:
            continue
        if error == "slow_down" and time.monotonic() < deadline:
            interval += 5  # RFC 8628 3.5
            continue
        if error == "access_denied":
            raise LoginError("the sign-in was declined")
        if error in ("expired_token", "authorization_pending", "slow_down"):
            raise LoginError("the code expired before the sign-in was confirmed: run the command again")
        raise LoginError(f"the identity provider refused the sign-in: {_error_of(answer)}")


def refreshed(provider: dict[str, Any], refresh_token: str) -> dict[str, Any] | None:
    """New tokens for a refresh token, or None when the provider no longer honours it."""
    answer = _call(
        provider["token_endpoint"],
        form={"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": provider["client_id"]},
    )
    if answer.status == 200 and isinstance(answer.body.get("id_token"), str):
        return answer.body
    return None


def personal_key(url: str, id_token: str, team_id: str | None) -> dict[str, Any]:
    answer = _call(
        f"{url}/sso/personal-key",
        json_body={"team_id": team_id} if team_id else {},
        headers={"authorization": f"Bearer {id_token}"},
    )
    if answer.status != 200 or not isinstance(answer.body.get("key"), str):
        raise LoginError(f"the gateway refused a personal key: {_error_of(answer)}")
    return answer.body


# -- the commands ---------------------------------------------------------------------------------------------------


def _remember(
    data: dict[str, Any], url: str, provider: dict[str, Any], tokens: dict[str, Any], team: str | None
) -> dict[str, Any]:
    issued = personal_key(url, tokens["id_token"], team)
    entry: dict[str, Any] = {
        "key": issued["key"],
        "expires": issued["expires"],
        "token": issued["token"],
        "user_id": issued.get("user_id"),
        "team_id": issued.get("team_id"),
        "team": team,  # what was asked for: renewals ask the same
        "provider": provider,
        "refresh_token": tokens.get("refresh_token"),
    }
    data["gateways"][url] = entry
    data["default"] = url
    _save(data)
    return entry


def _fresh(entry: dict[str, Any] | None) -> bool:
    if not entry or not isinstance(entry.get("key"), str) or not isinstance(entry.get("expires"), str):
        return False
    try:
        return datetime.fromisoformat(entry["expires"]) - RENEW_BEFORE > now()
    except ValueError:
        return False


def login(url: str, team: str | None) -> dict[str, Any]:
    with _locked():
        provider = gateway_sso(url)
        tokens = device_sign_in(provider)
        return _remember(_load(), url, provider, tokens, team)


def signed_in_gateway(url: str | None) -> str | None:
    """`url` (or, without one, the gateway last signed in to) when `login` saved a key for it; else None."""
    data = _load()
    chosen = url.rstrip("/") if url else data.get("default")
    return chosen if isinstance(chosen, str) and chosen in data["gateways"] else None


def current_key(url: str | None) -> str:
    data = _load()
    url = url or data.get("default")
    if not url:
        raise LoginError("not signed in: run anthropic-gateway login --url https://<gateway>")
    entry = data["gateways"].get(url)
    if entry is not None and _fresh(entry):
        return str(entry["key"])
    with _locked():
        data = _load()  # another process may have renewed it while this one waited for the lock
        entry = data["gateways"].get(url)
        if _fresh(entry):
            return str(entry["key"])
        team = entry.get("team") if entry else None
        provider: dict[str, Any] | None = entry.get("provider") if entry else None
        tokens = None
        if provider and entry and entry.get("refresh_token"):
            tokens = refreshed(provider, str(entry["refresh_token"]))
        if provider is None or tokens is None:  # only when it must: the person signs in again
            provider = gateway_sso(url)
            tokens = device_sign_in(provider)
        return str(_remember(data, url, provider, tokens, team)["key"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anthropic-gateway", description="A personal gateway key through SSO.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    login_command = commands.add_parser("login", help="sign in with single sign-on and get a personal key")
    login_command.add_argument("--url", help="the gateway's base URL (default: $GATEWAY_URL)")
    login_command.add_argument("--team", help="put the key in this team of yours (default: your only team, if one)")
    key_command = commands.add_parser("key", help="print the current personal key, renewing it when needed")
    key_command.add_argument("--url", help="the gateway (default: the one you last signed in to)")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "login":
            url = args.url or os.environ.get("GATEWAY_URL")
            if not url:
                raise LoginError("name the gateway: anthropic-gateway login --url https://<gateway>")
            entry = login(check_url(url, "gateway"), args.team)
            _say(
                f"Signed in as {entry['user_id']}; personal key {entry['key'][:3]}...{entry['key'][-4:]} expires "
                f"{entry['expires']}. `anthropic-gateway key` prints it (and renews it); for Claude Code, put "
                '"apiKeyHelper": "anthropic-gateway key" in ~/.claude/settings.json.'
            )
            return 0
        url = check_url(args.url, "gateway") if args.url else None
        print(current_key(url))
        return 0
    except LoginError as exc:
        _say(f"anthropic-gateway {args.command}: {exc}")
        return 1
