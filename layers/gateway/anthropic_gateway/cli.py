"""`python -m anthropic_gateway keys ...`: the key API from a terminal, against a local or deployed gateway.

A client, not part of the gateway: it reads its own environment (GATEWAY_URL, and GATEWAY_KEY or MASTER_KEY) and
talks HTTP to the gateway like curl would. Responses are printed as JSON (errors on stderr, exit status 1).
Amounts are exact both ways: `--max-budget 0.1` is sent as 0.1 and printed as the gateway wrote it, never
through a float.

The key it calls with (`admin_credentials`, for org_cli.py's commands too): GATEWAY_KEY, a person's own virtual
key, which acts with their user's role (docs/access.md); else MASTER_KEY; else the personal key
`anthropic-gateway login` saved (login_cli.py), renewed as `anthropic-gateway key` renews it.

    export GATEWAY_KEY=sk-...          # your own key; or MASTER_KEY=sk-master-... (break-glass)
    python -m anthropic_gateway keys generate --key-alias search-team --max-budget 50 --budget-duration 30d
    python -m anthropic_gateway keys --url https://gw.example.com list --full
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from decimal import Decimal, InvalidOperation
from typing import Any

import httpx

from . import login_cli, money

DEFAULT_URL = "http://localhost:4000"
KEY_VARIABLES = ("GATEWAY_KEY", "MASTER_KEY")  # the first one set is the key the admin commands call with
NO_KEY = (
    "No key to call the gateway with: set GATEWAY_KEY to your own key (your user's role applies) or MASTER_KEY to "
    "the gateway's master key, or sign in with `anthropic-gateway login --url https://<gateway>`."
)
URL_HELP = (
    f"gateway base URL (default: $GATEWAY_URL, else {DEFAULT_URL}; without GATEWAY_KEY or MASTER_KEY, the gateway "
    "`anthropic-gateway login` signed in to last)"
)


class NoKey(Exception):
    pass


def admin_credentials(url_option: str | None) -> tuple[str, str]:
    """(gateway URL, key) for an admin command. The gateway: --url, else GATEWAY_URL; the key: GATEWAY_KEY, else
    MASTER_KEY (with either, the gateway defaults to DEFAULT_URL), else the personal key `anthropic-gateway login`
    saved for that gateway or, when none is named, for the one last signed in to (renewed when near its expiry:
    login_cli.LoginError if it cannot be). NoKey when there is none."""
    named = url_option or os.environ.get("GATEWAY_URL")
    for variable in KEY_VARIABLES:
        key = os.environ.get(variable, "").strip()
        if key:
            return (named or DEFAULT_URL).rstrip("/"), key
    signed_in = login_cli.signed_in_gateway(named)
    if signed_in is None:
        raise NoKey(NO_KEY)
    return signed_in, login_cli.current_key(signed_in)


def credentials_or_exit_status(url_option: str | None) -> tuple[str, str] | int:
    """admin_credentials, or the exit status once the reason is printed: 2 without a key, 1 when the saved key
    could not be renewed."""
    try:
        return admin_credentials(url_option)
    except NoKey as exc:
        print(exc, file=sys.stderr)
        return 2
    except login_cli.LoginError as exc:
        print(f"Cannot renew your personal key: {exc}", file=sys.stderr)
        return 1


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = money.loads(text)  # numbers with a fraction as the exact Decimal written
    except (ValueError, RecursionError) as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def _amount(text: str) -> Decimal:
    """A number as written (25, 0.1, 1e-7), exactly; the gateway decides whether it is a budget it accepts."""
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value.is_finite():
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _settings_options(parser: argparse.ArgumentParser) -> None:
    """The key settings, as flags named after the JSON fields they set."""
    parser.add_argument("--key-alias", help="unique human-readable name")
    parser.add_argument("--models", type=_names, help="allowed models, comma-separated ('' = all models)")
    parser.add_argument("--max-budget", type=_amount, help="USD per budget period (or in total)")
    parser.add_argument("--budget-duration", help="budget period: 30s, 1h, 1d, 30d...")
    parser.add_argument("--duration", help="expires after: 1h, 30d... (never, if not given)")
    parser.add_argument("--rpm-limit", type=int, help="requests per minute")
    parser.add_argument("--tpm-limit", type=int, help="tokens per minute")
    parser.add_argument("--max-parallel-requests", type=int, help="requests in flight at once")
    parser.add_argument("--metadata", type=_json_object, help="JSON object")
    parser.add_argument("--tags", type=_names, help="default request tags, comma-separated")
    parser.add_argument(
        "--upstreams",
        type=_names,
        help="failover order, comma-separated: anthropic, bedrock or anthropic,bedrock (--unset upstreams: default)",
    )
    parser.add_argument("--blocked", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument(
        "--unset",
        action="append",
        default=[],
        metavar="FIELD",
        help="set FIELD to null (e.g. --unset max_budget); repeatable",
    )
    parser.add_argument(
        "--json", dest="extra", type=_json_object, default={}, help="more fields as a JSON object, sent as given"
    )


_SETTINGS = (
    "key_alias",
    "models",
    "max_budget",
    "budget_duration",
    "duration",
    "rpm_limit",
    "tpm_limit",
    "max_parallel_requests",
    "metadata",
    "tags",
    "upstreams",
    "blocked",
)


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    body = {name: getattr(args, name) for name in _SETTINGS if getattr(args, name) is not None}
    body.update(dict.fromkeys(args.unset))
    body.update(args.extra)
    return body


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=argparse.SUPPRESS, help=URL_HELP)
    parser = argparse.ArgumentParser(
        prog="python -m anthropic_gateway keys",
        parents=[common],
        description=(
            "Manage the gateway's virtual keys. The key it calls with: $GATEWAY_KEY (your own key: your role "
            "applies), else $MASTER_KEY, else the personal key of `anthropic-gateway login`."
        ),
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    generate = commands.add_parser("generate", parents=[common], help="create a key (printed once)")
    _settings_options(generate)
    generate.add_argument("--key", help="use this key (sk-...) instead of a generated one")

    info = commands.add_parser("info", parents=[common], help="settings, spend and counters of a key")
    info.add_argument("key", help="the key or its hash")

    listing = commands.add_parser("list", parents=[common], help="list keys (hashes), newest first")
    listing.add_argument("--page", type=int, default=1)
    listing.add_argument("--size", type=int, default=10, help="keys per page, at most 100")
    listing.add_argument("--key-alias", help="only the key with this alias")
    listing.add_argument("--full", action="store_true", help="whole key objects instead of hashes")

    update = commands.add_parser("update", parents=[common], help="change a key's settings")
    update.add_argument("key", nargs="?", help="the key or its hash (or name it with --key-alias)")
    _settings_options(update)

    for name, text in (("block", "refuse every request with the key"), ("unblock", "accept the key again")):
        command = commands.add_parser(name, parents=[common], help=text)
        command.add_argument("key", nargs="?", help="the key or its hash")
        command.add_argument("--key-alias")

    delete = commands.add_parser("delete", parents=[common], help="delete keys")
    delete.add_argument("keys", nargs="*", help="keys or hashes")
    delete.add_argument("--key-alias", action="append", default=[], dest="aliases", help="repeatable")

    regenerate = commands.add_parser("regenerate", parents=[common], help="replace a key; the old one stops working")
    regenerate.add_argument("key", nargs="?", help="the key or its hash (or name it with --key-alias)")
    regenerate.add_argument("--key-alias")
    regenerate.add_argument("--new-key", help="use this key (sk-...) instead of a generated one")
    return parser


def request_for(args: argparse.Namespace) -> tuple[str, str, dict[str, Any] | None, dict[str, Any] | None]:
    """(method, path, query, JSON body) of the key API call a parsed command line stands for."""
    command = args.command
    if command == "generate":
        return "POST", "/key/generate", None, {**_settings(args), **({"key": args.key} if args.key else {})}
    if command == "info":
        return "GET", "/key/info", {"key": _hash_if_plain(args.key)}, None
    if command == "list":
        query = {"page": args.page, "size": args.size, "return_full_object": str(args.full).lower()}
        return "GET", "/key/list", {**query, **({"key_alias": args.key_alias} if args.key_alias else {})}, None
    if command == "update":
        return "POST", "/key/update", None, {**_settings(args), **({"key": args.key} if args.key else {})}
    if command in ("block", "unblock"):
        return "POST", f"/key/{command}", None, _ref(args)
    if command == "delete":
        body = {"keys": args.keys} if args.keys else {}
        return "POST", "/key/delete", None, body | ({"key_aliases": args.aliases} if args.aliases else {})
    if command == "regenerate":
        return "POST", "/key/regenerate", None, _ref(args) | ({"new_key": args.new_key} if args.new_key else {})
    raise ValueError(command)


def _hash_if_plain(key: str) -> str:
    """A plain key becomes its hash here, so it never travels in a URL (query strings end up in access logs)."""
    return hashlib.sha256(key.encode()).hexdigest() if key.startswith("sk-") else key


def _ref(args: argparse.Namespace) -> dict[str, str]:
    return {"key": args.key} if args.key else {"key_alias": args.key_alias} if args.key_alias else {}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    credentials = credentials_or_exit_status(getattr(args, "url", None))
    if isinstance(credentials, int):
        return credentials
    url, key = credentials
    method, path, query, body = request_for(args)
    # The body written by money.dumps: httpx's `json=` would refuse Decimal (or round it, through a float).
    content = None if body is None else money.dumps(body).encode()
    json_type = None if body is None else {"Content-Type": "application/json"}
    try:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as http:
            response = http.request(method, path, params=query, content=content, headers=json_type)
    except httpx.HTTPError as exc:
        print(f"Cannot reach the gateway at {url}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    try:
        output = money.dumps(money.loads(response.content), indent=2, ensure_ascii=True)
    except (ValueError, RecursionError):
        output = response.text
    print(output, file=sys.stdout if response.is_success else sys.stderr)
    return 0 if response.is_success else 1
