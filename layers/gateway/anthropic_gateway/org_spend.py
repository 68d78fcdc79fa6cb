"""Spend per team and per user by day (`GET /spend/teams`, `GET /spend/users`), over the day items day_spend.py
records at settle, with each team's alias and each user's alias and email as their records say now.

A request has one team and one user at most (its key's), so the rows add up to the spend of the requests made with
team keys (user keys). The names cost one read of the team (user) index, the read `/team/list` (`/user/list`)
makes; a team or user deleted since keeps its rows, without a name.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from . import day_spend
from .storage import teams, users
from .storage.spend import TEAM_DAY_PREFIX, USER_DAY_PREFIX


def team_report(start: date, end: date) -> list[dict[str, Any]]:
    """Per team over [start, end]: team_id, team_alias, log_count, total_spend, token sums and `daily`; highest
    spend first. Money as exact Decimal."""
    found = day_spend.rows(TEAM_DAY_PREFIX, start, end)
    aliases = {team.team_id: team.team_alias for team in teams.list_teams()} if found else {}
    report = []
    for row in found:
        team_id = row.pop("name")
        report.append({"team_id": team_id, "team_alias": aliases.get(team_id), **row})
    return report


def user_report(start: date, end: date) -> list[dict[str, Any]]:
    """Per user over [start, end]: user_id, user_alias, user_email, log_count, total_spend, token sums and
    `daily`; highest spend first. Money as exact Decimal."""
    found = day_spend.rows(USER_DAY_PREFIX, start, end)
    named = {user.user_id: user for user in users.list_users()} if found else {}
    report = []
    for row in found:
        user_id = row.pop("name")
        user = named.get(user_id)
        person = {"user_alias": user.user_alias if user else None, "user_email": user.user_email if user else None}
        report.append({"user_id": user_id, **person, **row})
    return report
