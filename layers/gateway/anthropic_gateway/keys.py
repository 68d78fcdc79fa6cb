"""Virtual keys: how they look, how they are hashed, and how they are stored in DynamoDB.

A key is `sk-` + 32 url-safe random bytes. Only its SHA-256 hash (the LiteLLM "token") is stored; the plain
key exists in the response to `/key/generate` and nowhere else.

Table layout (single table, declared in template.yaml and created by `serve` locally):
  pk=KEY#<hash>   sk=KEY    the key record
  pk=ALIAS#<alias> sk=ALIAS  makes key_alias unique (written in the same transaction as the record)
  gsi1pk=KEY, gsi1sk=<created_at>#<hash> on key records: lists keys in creation order
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any

from .settings import get_settings

KEY_PREFIX = "sk-"
# sk- + at least 128 bits of url-safe base64 (22 chars); generated keys carry 256 bits.
_KEY_PATTERN = re.compile(r"sk-[A-Za-z0-9_-]{22,200}")
_HASH_PATTERN = re.compile(r"[0-9a-f]{64}")


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def is_well_formed(key: str) -> bool:
    return _KEY_PATTERN.fullmatch(key) is not None


def is_hash(value: str) -> bool:
    return _HASH_PATTERN.fullmatch(value) is not None


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_name(key: str) -> str:
    """LiteLLM's display form: enough to recognise a key, useless to an attacker."""
    return f"sk-...{key[-4:]}"


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


@dataclass
class KeyRecord:
    token: str
    key_name: str
    key_alias: str | None = None
    created_at: str = ""
    updated_at: str = ""
    expires: str | None = None
    blocked: bool = False
    models: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    max_budget: float | None = None
    budget_duration: str | None = None
    budget_reset_at: str | None = None
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    max_parallel_requests: int | None = None
    spend: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    requests: int = 0

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> KeyRecord:
        known = {name: _plain(item[name]) for name in cls.__dataclass_fields__ if name in item}
        return cls(**known)

    def to_item(self) -> dict[str, Any]:
        item = {name: _dynamo(value) for name, value in asdict(self).items() if value is not None}
        item.update(pk=f"KEY#{self.token}", sk="KEY", gsi1pk="KEY", gsi1sk=f"{self.created_at}#{self.token}")
        return item

    def expired(self, now: datetime | None = None) -> bool:
        return self.expires is not None and datetime.fromisoformat(self.expires) <= (now or utcnow())


def _plain(value: Any) -> Any:
    """DynamoDB returns numbers as Decimal; the record holds plain ints and floats."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() and "." not in str(value) else float(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _dynamo(value: Any) -> Any:
    if isinstance(value, float):
        return Decimal(str(value))
    if isinstance(value, list):
        return [_dynamo(v) for v in value]
    if isinstance(value, dict):
        return {k: _dynamo(v) for k, v in value.items()}
    return value


@lru_cache(maxsize=1)
def table():
    import boto3  # deferred: keeps boto3 out of the cold-start path of /health

    return boto3.resource("dynamodb").Table(get_settings().table_name)


class AliasTaken(Exception):
    pass


def put_new(record: KeyRecord) -> None:
    """Store a new key record; its alias, if any, must not be in use (checked atomically)."""
    item = record.to_item()
    if record.key_alias is None:
        table().put_item(Item=item, ConditionExpression="attribute_not_exists(pk)")
        return
    client = table().meta.client
    try:
        client.transact_write_items(
            TransactItems=[
                {"Put": {"TableName": table().name, "Item": _serialize(item),
                         "ConditionExpression": "attribute_not_exists(pk)"}},
                {"Put": {"TableName": table().name,
                         "Item": _serialize({"pk": f"ALIAS#{record.key_alias}", "sk": "ALIAS", "token": record.token}),
                         "ConditionExpression": "attribute_not_exists(pk)"}},
            ]
        )
    except client.exceptions.TransactionCanceledException as exc:
        raise AliasTaken(record.key_alias) from exc


def _serialize(item: dict[str, Any]) -> dict[str, Any]:
    from boto3.dynamodb.types import TypeSerializer

    serializer = TypeSerializer()
    return {name: serializer.serialize(value) for name, value in item.items()}


def load(token: str) -> KeyRecord | None:
    item = table().get_item(Key={"pk": f"KEY#{token}", "sk": "KEY"}, ConsistentRead=True).get("Item")
    return KeyRecord.from_item(item) if item else None


class KeyCache:
    """Per-process cache of key records, so the hot path skips DynamoDB for keys seen in the last few seconds.

    Changes made through this process (block, delete, regenerate) call `invalidate` and apply at once; changes
    made on another Lambda instance reach this one within `KEY_CACHE_TTL` seconds. Unknown keys are cached too,
    so a client retrying a bad key does not hammer the table; the size bound keeps random keys from filling memory.
    """

    def __init__(self, max_entries: int = 10_000):
        self._entries: OrderedDict[str, tuple[float, KeyRecord | None]] = OrderedDict()
        self._max_entries = max_entries
        self._lock = threading.Lock()

    def get(self, token: str) -> tuple[bool, KeyRecord | None]:
        with self._lock:
            entry = self._entries.get(token)
            if entry is None or time.monotonic() - entry[0] > get_settings().key_cache_ttl:
                return False, None
            return True, entry[1]

    def put(self, token: str, record: KeyRecord | None) -> None:
        with self._lock:
            self._entries[token] = (time.monotonic(), record)
            self._entries.move_to_end(token)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)

    def invalidate(self, token: str | None = None) -> None:
        with self._lock:
            if token is None:
                self._entries.clear()
            else:
                self._entries.pop(token, None)


key_cache = KeyCache()


def cached_load(token: str) -> KeyRecord | None:
    hit, record = key_cache.get(token)
    if not hit:
        record = load(token)
        key_cache.put(token, record)
    return record


def add_usage(token: str, cost: float, usage) -> None:
    """Add one request's cost and tokens to the key, atomically (concurrent requests all count)."""
    values = {":cost": Decimal(str(cost)), ":one": 1}
    expression = "ADD spend :cost, requests :one"
    if usage is not None:
        for name in ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"):
            values[f":{name}"] = getattr(usage, name)
            expression += f", {name} :{name}"
    table().update_item(
        Key={"pk": f"KEY#{token}", "sk": "KEY"},
        UpdateExpression=expression,
        ConditionExpression="attribute_exists(pk)",  # a key deleted mid-request is not recreated
        ExpressionAttributeValues=values,
    )
