"""`python -m anthropic_gateway teams|users|tags|audit ...`: the team, user and tag APIs and the audit log from a
terminal.

A client like `keys` (cli.py): it reads GATEWAY_URL (or --url) and the key to call with as `keys` does
(GATEWAY_KEY, else MASTER_KEY, else the personal key of `anthropic-gateway login`: cli.py's `admin_credentials`),
talks HTTP to the gateway, and prints the JSON answer (errors on stderr, exit status 1). Amounts go out and come
back exact (money.py).

    python -m anthropic_gateway teams new --team-alias search --max-budget 5000 --budget-duration 30d
    python -m anthropic_gateway teams member-add <team_id> --user-email ana@example.com --max-budget-in-team 300
    python -m anthropic_gateway users new --user-email ana@example.com --max-budget 300 --no-key
    python -m anthropic_gateway tags new app:nightly --max-budget 50 --budget-duration 1d
    python -m anthropic_gateway teams spend --start-date 2026-01-01 --end-date 2026-01-31
    python -m anthropic_gateway audit --target team:search --start-date 2026-12-01
"""

from __future__ import annotations

import argparse
import sys
from decimal import Decimal, InvalidOperation
from typing import Any

import httpx

from . import money
from .cli import URL_HELP, _json_object, _names, credentials_or_exit_status

Request = tuple[str, str, dict[str, Any] | None, dict[str, Any] | None]  # method, path, query, JSON body
_SCOPE = ("models", "max_budget", "budget_duration", "rpm_limit", "tpm_limit", "max_parallel_requests")


def _amount(text: str) -> Decimal:
    try:
        return money.amount(money.loads(text))
    except (ValueError, InvalidOperation) as exc:
        raise argparse.ArgumentTypeError(f"not an amount of USD: {exc}") from None


def _scope_options(parser: argparse.ArgumentParser) -> None:
    """The budget and limits every scope takes, as flags named after the JSON fields they set."""
    parser.add_argument("--models", type=_names, help="allowed models, comma-separated ('' = all models)")
    parser.add_argument("--max-budget", type=_amount, help="USD per budget period (or in total)")
    parser.add_argument("--budget-duration", help="budget period: 30s, 1h, 1d, 30d, 1mo...")
    parser.add_argument("--rpm-limit", type=int, help="requests per minute")
    parser.add_argument("--tpm-limit", type=int, help="tokens per minute")
    parser.add_argument("--max-parallel-requests", type=int, help="requests in flight at once")
    parser.add_argument(
        "--unset", action="append", default=[], metavar="FIELD", help="set FIELD to null (e.g. --unset max_budget)"
    )
    parser.add_argument(
        "--json", dest="extra", type=_json_object, default={}, help="more fields as a JSON object, sent as given"
    )


def _body(args: argparse.Namespace, *fields: str) -> dict[str, Any]:
    body = {name: getattr(args, name) for name in (*_SCOPE, *fields) if getattr(args, name, None) is not None}
    body.update(dict.fromkeys(args.unset))
    body.update(args.extra)
    return body


def _spend_command(commands: Any, plural: str) -> argparse.ArgumentParser:
    """`spend`: spend, requests and tokens per team (user, tag) and UTC day, over a date range."""
    command: argparse.ArgumentParser = commands.add_parser(
        "spend", parents=[_common()], help=f"spend, requests and tokens per {plural[:-1]} and day"
    )
    command.add_argument("--start-date", help="first UTC day, YYYY-MM-DD (default: 29 days before the end)")
    command.add_argument("--end-date", help="last UTC day, YYYY-MM-DD (default: today)")
    return command


def _spend_request(path: str, args: argparse.Namespace) -> Request:
    query = {"start_date": args.start_date, "end_date": args.end_date}
    return "GET", path, {name: value for name, value in query.items() if value is not None}, None


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=argparse.SUPPRESS, help=URL_HELP)
    return common


# -- teams --------------------------------------------------------------------------------------------------------


def _team_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(
        prog="python -m anthropic_gateway teams", parents=[common], description="Manage teams and their members."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def team_settings(command: argparse.ArgumentParser) -> None:
        command.add_argument("--team-alias", help="a human-readable name")
        command.add_argument("--tags", type=_names, help="tags added to every request of the team's keys")
        command.add_argument("--metadata", type=_json_object, help="JSON object")
        command.add_argument("--blocked", action=argparse.BooleanOptionalAction, default=None)
        _scope_options(command)

    new = commands.add_parser("new", parents=[common], help="create a team")
    new.add_argument("--team-id", help="its id (default: generated)")
    team_settings(new)
    update = commands.add_parser("update", parents=[common], help="change a team's settings")
    update.add_argument("team_id")
    team_settings(update)
    for name, text in (("info", "a team with its members, keys and spend"), ("block", "stop every key of the team"),
                       ("unblock", "let the team's keys work again")):  # fmt: skip
        commands.add_parser(name, parents=[common], help=text).add_argument("team_id")
    listing = commands.add_parser("list", parents=[common], help="every team")
    listing.add_argument("--user-id", help="only this user's teams")
    delete = commands.add_parser("delete", parents=[common], help="delete teams with their keys and memberships")
    delete.add_argument("team_ids", nargs="+")
    _spend_command(commands, "teams")

    for name, text in (("member-add", "add users (created if new) to a team"),
                       ("member-update", "change a member's role or budget"),
                       ("member-delete", "remove a member and its keys in the team")):  # fmt: skip
        command = commands.add_parser(name, parents=[common], help=text)
        command.add_argument("team_id")
        many = name == "member-add"
        command.add_argument("--user-id", action="append" if many else "store", default=[] if many else None)
        command.add_argument("--user-email", action="append" if many else "store", default=[] if many else None)
        if name != "member-delete":
            command.add_argument("--role", choices=("admin", "user"))
            command.add_argument("--max-budget-in-team", type=_amount, help="the member's own budget in the team")
            command.add_argument("--budget-duration", help="its period (default: the team's)")
    return parser


def _team_request(args: argparse.Namespace) -> Request:
    command = args.command
    settings = ("team_alias", "tags", "metadata", "blocked")
    if command == "new":
        return "POST", "/team/new", None, _body(args, "team_id", *settings)
    if command == "update":
        return "POST", "/team/update", None, {**_body(args, *settings), "team_id": args.team_id}
    if command == "info":
        return "GET", "/team/info", {"team_id": args.team_id}, None
    if command in ("block", "unblock"):
        return "POST", f"/team/{command}", None, {"team_id": args.team_id}
    if command == "list":
        return "GET", "/team/list", {"user_id": args.user_id} if args.user_id else None, None
    if command == "delete":
        return "POST", "/team/delete", None, {"team_ids": args.team_ids}
    if command == "spend":
        return _spend_request("/spend/teams", args)
    body: dict[str, Any] = {"team_id": args.team_id}
    for option, field in (("role", "role"), ("max_budget_in_team", "max_budget_in_team"),
                          ("budget_duration", "budget_duration")):  # fmt: skip
        if getattr(args, option, None) is not None:
            body[field] = getattr(args, option)
    if command == "member-add":
        role = {"role": args.role} if args.role else {}
        body.pop("role", None)
        members = [{"user_id": user_id, **role} for user_id in args.user_id]
        members += [{"user_email": email, **role} for email in args.user_email]
        return "POST", "/team/member_add", None, {**body, "member": members}
    who = {"user_id": args.user_id} if args.user_id else {"user_email": args.user_email} if args.user_email else {}
    path = "/team/member_update" if command == "member-update" else "/team/member_delete"
    return "POST", path, None, {**body, **who}


# -- users --------------------------------------------------------------------------------------------------------

_ROLES = ("proxy_admin", "proxy_admin_viewer", "internal_user", "internal_user_viewer")


def _user_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(
        prog="python -m anthropic_gateway users", parents=[common], description="Manage users and their budgets."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def user_settings(command: argparse.ArgumentParser) -> None:
        command.add_argument("--user-alias")
        command.add_argument("--user-email")
        command.add_argument("--user-role", choices=_ROLES)
        command.add_argument("--metadata", type=_json_object, help="JSON object")
        command.add_argument("--blocked", action=argparse.BooleanOptionalAction, default=None)
        _scope_options(command)

    new = commands.add_parser("new", parents=[common], help="create a user, and a key for it (printed once)")
    new.add_argument("--user-id", help="its id (default: generated)")
    new.add_argument("--teams", type=_names, help="team ids to join, comma-separated")
    new.add_argument("--no-key", dest="auto_create_key", action="store_false", help="create no key")
    new.add_argument("--key-alias", help="alias of the user's key")
    new.add_argument("--duration", help="the user's key expires after: 1h, 30d...")
    user_settings(new)
    update = commands.add_parser("update", parents=[common], help="change a user's settings")
    update.add_argument("user_id", nargs="?", help="the user (or name it with --user-email)")
    user_settings(update)
    commands.add_parser("info", parents=[common], help="a user with its keys, teams and spend").add_argument("user_id")
    listing = commands.add_parser("list", parents=[common], help="users, newest first, a page at a time")
    listing.add_argument("--page", type=int, default=1)
    listing.add_argument("--page-size", type=int, default=25, help="at most 100")
    listing.add_argument("--role", choices=_ROLES)
    listing.add_argument("--team", help="only members of this team")
    listing.add_argument("--user-email", help="only users whose email contains this")
    delete = commands.add_parser("delete", parents=[common], help="delete users with their keys and memberships")
    delete.add_argument("user_ids", nargs="+")
    _spend_command(commands, "users")
    return parser


def _user_request(args: argparse.Namespace) -> Request:
    command = args.command
    settings = ("user_alias", "user_email", "user_role", "metadata", "blocked")
    if command == "new":
        body = _body(args, "user_id", "teams", "key_alias", "duration", *settings)
        return "POST", "/user/new", None, {**body, "auto_create_key": args.auto_create_key}
    if command == "update":
        return (
            "POST",
            "/user/update",
            None,
            {**_body(args, *settings), **({"user_id": args.user_id} if args.user_id else {})},
        )
    if command == "info":
        return "GET", "/user/info", {"user_id": args.user_id}, None
    if command == "list":
        query = {"page": args.page, "page_size": args.page_size, "role": args.role, "team": args.team,
                 "user_email": args.user_email}  # fmt: skip
        return "GET", "/user/list", {name: value for name, value in query.items() if value is not None}, None
    if command == "spend":
        return _spend_request("/spend/users", args)
    return "POST", "/user/delete", None, {"user_ids": args.user_ids}


# -- tags ---------------------------------------------------------------------------------------------------------


def _tag_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(
        prog="python -m anthropic_gateway tags",
        parents=[common],
        description="Manage registered tags: budgets and limits on every request that carries the tag.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text in (("new", "register a tag"), ("update", "change a registered tag")):
        command = commands.add_parser(name, parents=[common], help=text)
        command.add_argument("name")
        command.add_argument("--description")
        _scope_options(command)
    for name, text in (("info", "a registered tag with its spend"), ("delete", "unregister a tag")):
        commands.add_parser(name, parents=[common], help=text).add_argument("name")
    commands.add_parser("list", parents=[common], help="every registered tag")
    spend = _spend_command(commands, "tags")
    spend.add_argument(
        "--totals", action="store_true", help="the tagged requests' totals, each request once however many tags"
    )
    return parser


def _tag_request(args: argparse.Namespace) -> Request:
    if args.command in ("new", "update"):
        return "POST", f"/tag/{args.command}", None, {**_body(args, "description"), "name": args.name}
    if args.command == "info":
        return "GET", "/tag/info", {"name": args.name}, None
    if args.command == "delete":
        return "POST", "/tag/delete", None, {"name": args.name}
    if args.command == "spend":
        return _spend_request("/spend/tags/totals" if args.totals else "/spend/tags", args)
    return "GET", "/tag/list", None, None


# -- the audit log ------------------------------------------------------------------------------------------------


def _audit_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m anthropic_gateway audit",
        parents=[_common()],
        description="Read the audit log, newest first: a page of entries and the cursor of the next page.",
    )
    parser.add_argument("--actor", help="master, key:<alias or token>, sso:<subject>, idp:<subject>, or a user id")
    parser.add_argument("--target", help="key:<key_id>, team:<team_id>, user:<user_id> or tag:<name>")
    parser.add_argument("--action", help="an action (key.update) or its start (key)")
    parser.add_argument("--start-date", help="YYYY-MM-DD (UTC; default: 30 days before the end)")
    parser.add_argument("--end-date", help="YYYY-MM-DD (UTC, inclusive; default: today)")
    parser.add_argument("--page-size", type=int, help="entries per page, at most 100 (default 50)")
    parser.add_argument("--cursor", help="the `cursor` a previous page gave, for the next one")
    return parser


def _audit_request(args: argparse.Namespace) -> Request:
    names = ("actor", "target", "action", "start_date", "end_date", "page_size", "cursor")
    query = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    return "GET", "/audit", query, None


_KINDS = {
    "teams": (_team_parser, _team_request),
    "users": (_user_parser, _user_request),
    "tags": (_tag_parser, _tag_request),
    "audit": (_audit_parser, _audit_request),
}


def main(kind: str, argv: list[str] | None = None) -> int:
    """Run `kind` (teams, users, tags or audit) with the command line `argv`; the exit status."""
    build, request_for = _KINDS[kind]
    args = build().parse_args(argv)
    credentials = credentials_or_exit_status(getattr(args, "url", None))
    if isinstance(credentials, int):
        return credentials
    url, key = credentials
    method, path, query, body = request_for(args)
    headers = {"Authorization": f"Bearer {key}", "content-type": "application/json"}
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=60) as http:
            content = money.dumps(body) if body is not None else None
            response = http.request(method, path, params=query, content=content)
    except httpx.HTTPError as exc:
        print(f"Cannot reach the gateway at {url}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    try:
        output = money.dumps(money.loads(response.content), indent=2)
    except ValueError:
        output = response.text
    print(output, file=sys.stdout if response.is_success else sys.stderr)
    return 0 if response.is_success else 1
