"""Where the organisation's items live in the gateway table, and the transaction actions that guard them.

  pk=TEAM#<team_id>  sk=TEAM              a team (gsi1pk=TEAM, gsi1sk=<created_at>#<team_id>)
  pk=TEAM#<team_id>  sk=MEMBER#<user_id>  a membership: the user's role and budget in the team (members.py)
  pk=TEAM#<team_id>  sk=KEY#<key_id>      a key of the team (key_links.py)
  pk=USER#<user_id>  sk=USER              a user (gsi1pk=USER), with `teams`, the set of its teams' ids
  pk=USER#<user_id>  sk=KEY#<key_id>      a key of the user (key_links.py)
  pk=EMAIL#<email>   sk=EMAIL             makes user_email unique (lower case), as ALIAS# does key_alias
  pk=TAG#<name>      sk=TAG               a registered tag (gsi1pk=TAG)

Key items are key_records.py's. A team's or user's other items share its partition, so its members or keys are one
Query, never a scan. An item being deleted carries `deleting` (and `blocked`) until its cascade is done.
"""

from __future__ import annotations

from . import table

TEAM_SK, USER_SK, EMAIL_SK, TAG_SK = "TEAM", "USER", "EMAIL", "TAG"
MEMBER_PREFIX, KEY_PREFIX = "MEMBER#", "KEY#"


def team_pk(team_id: str) -> str:
    return f"TEAM#{team_id}"


def user_pk(user_id: str) -> str:
    return f"USER#{user_id}"


def member_sk(user_id: str) -> str:
    return MEMBER_PREFIX + user_id


def email_pk(email: str) -> str:
    return f"EMAIL#{email.lower()}"


def tag_pk(name: str) -> str:
    return f"TAG#{name}"


def listed(kind: str, created_at: str, name: str) -> dict[str, str]:
    """The gsi1 attributes that list an item of `kind` in creation order."""
    return {"gsi1pk": kind, "gsi1sk": f"{created_at}#{name}"}


def list_all(kind: str) -> list[table.Item]:
    """Every item of `kind` (TEAM, USER, TAG), newest first: one paged Query of gsi1, never a scan."""
    return table.query_all(
        IndexName="gsi1",
        KeyConditionExpression="gsi1pk = :kind",
        ExpressionAttributeValues={":kind": kind},
        ScanIndexForward=False,
    )


def partition(pk: str, prefix: str) -> list[table.Item]:
    """The items of partition `pk` whose sk starts with `prefix` (a team's members, a user's keys), read
    consistently, all pages."""
    return table.query_all(
        KeyConditionExpression="pk = :pk AND begins_with(sk, :prefix)",
        ExpressionAttributeValues={":pk": pk, ":prefix": prefix},
        ConsistentRead=True,
    )


def put_new(item: table.Item) -> table.Put:
    """A Put of an item that must not exist yet."""
    return table.Put(item, "attribute_not_exists(pk)")


def check_live(pk: str, sk: str) -> table.ConditionCheck:
    """A condition that the item exists and is not being deleted."""
    return table.ConditionCheck(
        pk, sk, "attribute_exists(pk) AND attribute_not_exists(#deleting)", {"#deleting": "deleting"}
    )


def delete(pk: str, sk: str, condition: str | None = None) -> table.Delete:
    return table.Delete(pk, sk, condition)
