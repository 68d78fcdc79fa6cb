"""The DynamoDB writes one request costs, per kind of key, measured; docs/cost.md's table must say the same.

Each kind of key sends streamed requests through the tests' gateway; botocore's before-call events on the
gateway's own DynamoDB client count what each request writes once the key is warm (its record cached, as it is for
every request but the first one per KEY_CACHE_TTL per instance). When admission or settle changes what it writes,
this fails with the row docs/cost.md should show instead.
"""

from __future__ import annotations

import json
import re
import uuid
from collections import Counter
from pathlib import Path

import httpx
import pytest

COST_DOC = Path(__file__).resolve().parent.parent / "docs" / "cost.md"
MASTER_KEY = "sk-master-test-0123456789abcdef"  # what tests/conftest.py stores in moto
BODY = {"model": "claude-haiku-4-5", "max_tokens": 100, "stream": True, "messages": [{"role": "user", "content": "Hi"}]}
KEYS: dict[str, dict[str, object] | None] = {
    "master": None,
    "plain": {},
    "tags": {"tags": ["team:search", "app:claude-code"]},
    "budget": {"max_budget": 100.0},
    "rpm": {"rpm_limit": 1000},
    "tpm": {"tpm_limit": 1_000_000},
    "parallel": {"max_parallel_requests": 10},
    "all": {"max_budget": 100.0, "rpm_limit": 1000, "tpm_limit": 1_000_000, "max_parallel_requests": 10},
    # Keys of a team and of a user who is a member of it (issue 19): the team and the user with no limits, and
    # both with a budget (the key itself has none).
    "team": {"team": {}, "user": {}},
    "team_budgets": {"team": {"max_budget": 100.0}, "user": {"max_budget": 100.0}},
}
_WRITES = ("PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem")


def _documented() -> dict[str, tuple[str, str]]:
    """docs/cost.md's rows `| `kind` ... | writes | write units |`, by kind."""
    rows = {}
    for line in COST_DOC.read_text().splitlines():
        match = re.match(r"\| `(\w+)` [^|]*\| ([^|]+) \| (\d+) \|", line)
        if match:
            rows[match.group(1)] = (match.group(2).strip(), match.group(3))
    return rows


def _describe(calls: list[tuple[str, bytes]]) -> tuple[str, str]:
    """("1 UpdateItem + 1 TransactWriteItems (2 items)", "4"): the writes, and the write request units they cost
    for items under 1 KB (a transaction costs two units per item)."""
    counts = Counter(operation for operation, _ in calls if operation in _WRITES)
    transactions = [len(json.loads(body)["TransactItems"]) for op, body in calls if op == "TransactWriteItems"]
    parts = [f"{counts[op]} {op}" for op in _WRITES if counts[op]]
    if transactions:
        parts.append(f"{len(transactions)} TransactWriteItems ({sum(transactions)} items)")
    units = sum(counts.values()) + 2 * sum(transactions)
    return " + ".join(parts) or "none", str(units)


def _org_key(admin: httpx.Client, team: dict[str, object], user: dict[str, object]) -> str:
    """A key of a new team and of a new user who is a member of it."""
    team_id, user_id = f"cost-{uuid.uuid4().hex[:8]}", f"cost-{uuid.uuid4().hex[:8]}"
    assert admin.post("/team/new", json={"team_id": team_id, **team}).status_code == 200
    new_user = {"user_id": user_id, "teams": [team_id], "auto_create_key": False, **user}
    assert admin.post("/user/new", json=new_user).status_code == 200
    response = admin.post("/key/generate", json={"team_id": team_id, "user_id": user_id})
    assert response.status_code == 200, response.text
    return str(response.json()["key"])


@pytest.mark.parametrize("kind", list(KEYS))
def test_writes_per_request_are_what_docs_cost_md_says(gateway, admin, make_key, aws_calls, kind):
    settings = KEYS[kind]
    if settings is None:
        key = MASTER_KEY
    elif "team" in settings:
        key = _org_key(admin, **settings)
    else:
        key = make_key(**settings)
    headers = {"x-api-key": key, "anthropic-version": "2023-06-01"}
    measured = []
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        for _ in range(3):  # the first warms the key record (and the parallel slots' item); then two alike
            gateway.drain()
            aws_calls.clear()
            with http.stream("POST", "/anthropic/v1/messages", json=BODY, headers=headers) as response:
                assert response.status_code == 200
                response.read()
            gateway.drain()  # settle and the ledger's counter writes are done
            measured.append(_describe(list(aws_calls)))
    assert measured[1] == measured[2], measured
    writes, units = measured[-1]
    documented = _documented().get(kind)
    assert documented == (writes, units), f"docs/cost.md should say for `{kind}`: | {writes} | {units} |"
