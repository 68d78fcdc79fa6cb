"""Virtual keys: how they look, how they are hashed, and how they are stored in DynamoDB (through table.py).

A key is `sk-` + 32 url-safe random bytes. Only its SHA-256 hash (the LiteLLM "token") is stored; the plain
key exists in the response to `/key/generate` (or `/key/regenerate`) and nowhere else.

Table layout (single table, declared in template.yaml and created by `serve` locally):
  pk=KEY#<key_id>  sk=KEY        the key record: settings, spend, token counts. key_id is the hash the key was
                                 created with and never changes, so spend and counters survive /key/regenerate.
  pk=KEY#<hash>    sk=KEY        after a regenerate: a pointer {points_to: key_id} for the current hash
  pk=KEY#<key_id>  sk=RATE#<t>   per-minute request/token counters, sk=PARALLEL in-flight slots (governance.py)
  pk=ALIAS#<alias> sk=ALIAS      makes key_alias unique (written in the same transaction as the record)
  gsi1pk=KEY, gsi1sk=<created_at>#<key_id> on key records: lists keys in creation order
  pk=TEAM#<team_id> or USER#<user_id>, sk=KEY#<key_id>: the key's team and user (storage/key_links.py)

A presented key is valid when the record found through its hash still has that hash as `token`: a regenerated
key's old hash leads to a record whose token has moved on, so the old key stops working at once.

Budget bookkeeping on the record keeps `budget_headroom = (max_budget or 0) - spend - reserved` true after every
write (see governance.py); every function here that changes max_budget or spend keeps it true too.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from . import table
from .settings import get_settings
from .storage import key_links
from .storage.outcomes import Refused
from .table import Conflict as Conflict  # raised here by update, regenerate, delete

KEY_PREFIX = "sk-"
# sk- + at least 128 bits of url-safe base64 (22 chars); generated keys carry 256 bits.
_KEY_PATTERN = re.compile(r"sk-[A-Za-z0-9_-]{22,200}")
_HASH_PATTERN = re.compile(r"[0-9a-f]{64}")
# LiteLLM's duration strings: 30s, 10m, 1h, 1d, 2w, 1mo (a month counts as 30 days).
_DURATION = re.compile(r"(\d{1,6})(s|m|h|d|w|mo)")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "mo": 30 * 86400}
_MONEY = frozenset({"max_budget", "spend", "total_spend", "reserved"})
_ZERO = Decimal(0)
TOKEN_COUNTERS = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


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


def token_of(key_or_hash: str) -> str | None:
    """The hash that identifies a key given as plain key or as hash; None when it is neither."""
    if is_hash(key_or_hash):
        return key_or_hash
    return hash_key(key_or_hash) if is_well_formed(key_or_hash) else None


def utcnow() -> datetime:
    """The gateway's clock (tests replace it to move time: expiry, budget periods, rate windows)."""
    return datetime.now(UTC)


def iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def iso_seconds(moment: datetime) -> str:
    """Fixed-width UTC time: strings DynamoDB conditions can compare (budget_reset_at > :now)."""
    return moment.astimezone(UTC).replace(microsecond=0).isoformat()


def parse_duration(text: str) -> timedelta:
    """`30s`, `1h`, `30d`, `1mo`... as a timedelta; ValueError for anything else (and for zero)."""
    match = _DURATION.fullmatch(text.strip())
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"expected a duration like 30s, 10m, 1h, 1d, 2w or 1mo, got {text[:40]!r}")
    return timedelta(seconds=int(match.group(1)) * _UNIT_SECONDS[match.group(2)])


@dataclass
class KeyRecord:
    token: str  # the current hash (changes on regenerate)
    key_name: str
    key_id: str = ""  # the hash the key was created with: the record's permanent identity
    key_alias: str | None = None
    created_at: str = ""
    updated_at: str = ""
    expires: str | None = None
    blocked: bool = False
    models: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    max_budget: Decimal | None = None
    budget_duration: str | None = None
    budget_reset_at: str | None = None
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    max_parallel_requests: int | None = None
    upstreams: list[str] | None = None  # failover order, e.g. ["anthropic", "bedrock"]; None: DEFAULT_UPSTREAMS
    team_id: str | None = None  # the team and the user the key belongs to (storage/key_links.py)
    user_id: str | None = None
    spend: Decimal = _ZERO  # USD in the current budget period (all time without budget_duration)
    total_spend: Decimal = _ZERO  # all time
    reserved: Decimal = _ZERO  # estimates held by admitted requests that have not settled yet
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    requests: int = 0

    def __post_init__(self) -> None:
        self.key_id = self.key_id or self.token

    @classmethod
    def from_item(cls, item: table.Item) -> KeyRecord:
        # Money stays exact Decimal; every other number becomes the int (or float, in metadata) JSON holds.
        known = {
            name: item[name] if name in _MONEY else table.plain(item[name])
            for name in cls.__dataclass_fields__
            if name in item
        }
        return cls(**known)

    def to_item(self) -> table.Item:
        item = {name: table.stored(value) for name, value in asdict(self).items() if value is not None}
        item["budget_headroom"] = (self.max_budget or _ZERO) - self.spend - self.reserved
        item["reservations"] = {}  # request id -> {amount, until}: the budget holds in flight (governance.py)
        item.update(pk=record_pk(self.key_id), sk="KEY", gsi1pk="KEY", gsi1sk=f"{self.created_at}#{self.key_id}")
        return item

    def expired(self, now: datetime | None = None) -> bool:
        return self.expires is not None and datetime.fromisoformat(self.expires) <= (now or utcnow())

    @property
    def governed(self) -> bool:
        """Whether requests with this key need DynamoDB work before they go upstream."""
        return self.max_budget is not None or any(
            limit is not None for limit in (self.rpm_limit, self.tpm_limit, self.max_parallel_requests)
        )


def effective_upstreams(record: KeyRecord) -> tuple[str, ...]:
    """The upstreams that serve this key's requests, in failover order: its own, or the deployment's default."""
    return tuple(record.upstreams) if record.upstreams else get_settings().default_upstreams


def record_pk(key_id: str) -> str:
    return f"KEY#{key_id}"


def money(value: float | Decimal | None) -> Decimal | None:
    """A JSON amount (max_budget) as exact Decimal: a float becomes the Decimal of its shortest repr."""
    return None if value is None else table.stored(value) if isinstance(value, float) else Decimal(value)


class AliasTaken(Exception):
    pass


class KeyExists(Exception):
    """The key (or a key with the same hash, possibly a retired one) is already stored."""


class LinkRefused(Exception):
    """The key's new team or user is missing, being deleted, or the user is not a member of the team."""

    def __init__(self, refused: Refused):
        super().__init__(refused)
        self.refused = refused


def _alias_item(alias: str, key_id: str) -> dict[str, Any]:
    return {"pk": f"ALIAS#{alias}", "sk": "ALIAS", "key_id": key_id}


def put_new(record: KeyRecord) -> None:
    """Store a new key record; its hash must be unused, its alias, if any, free, and its team and user, if any,
    ready to take it (checked atomically: LinkRefused)."""
    actions = [{"Put": {"Item": record.to_item(), "ConditionExpression": "attribute_not_exists(pk)"}}]
    if record.key_alias is not None:
        actions.append(
            {
                "Put": {
                    "Item": _alias_item(record.key_alias, record.key_id),
                    "ConditionExpression": "attribute_not_exists(pk)",
                }
            }
        )
    linked = len(actions)
    links = key_links.relink(record.key_id, (None, None), (record.team_id, record.user_id))
    actions += links.actions
    try:
        # The token makes DynamoDB answer a retry (botocore's, after a lost answer) as the success it was.
        table.transact(actions, token=hashlib.sha256(f"{record.key_id}#{record.created_at}".encode()).hexdigest()[:36])
    except table.Cancelled as exc:
        stored = _get(record_pk(record.key_id)) if 0 in exc.failed else None
        if stored is None or stored.get("created_at") != record.created_at:  # else: our own write, retried
            if 0 in exc.failed:
                raise KeyExists() from None
            if failed_links := [index - linked for index in exc.failed if index >= linked]:
                raise LinkRefused(links.refusal(failed_links)) from None
            raise AliasTaken(record.key_alias) from None
    key_directory.add(record.token)  # works at once here; elsewhere within KEY_CACHE_TTL


def _get(pk: str) -> table.Item | None:
    return table.get(pk, "KEY")


def load(token: str) -> KeyRecord | None:
    """The record a key hash opens, or None: unknown, deleted, or replaced by /key/regenerate."""
    item = _get(record_pk(token))
    if item is not None and "points_to" in item:
        item = _get(record_pk(item["points_to"]))
    if item is None or item.get("token") != token:
        return None
    return KeyRecord.from_item(item)


def load_by_key_id(key_id: str) -> KeyRecord | None:
    item = _get(record_pk(key_id))
    return KeyRecord.from_item(item) if item is not None and "points_to" not in item else None


def load_by_alias(alias: str) -> KeyRecord | None:
    pointer = table.get(f"ALIAS#{alias}", "ALIAS")
    if pointer is None:
        return None
    item = _get(record_pk(pointer["key_id"]))
    return KeyRecord.from_item(item) if item is not None else None


def list_records() -> list[KeyRecord]:
    """Every key record, newest first. Reads the whole index: fine for the thousands of keys an admin manages."""
    from boto3.dynamodb.conditions import Key

    items = table.query_all(IndexName="gsi1", KeyConditionExpression=Key("gsi1pk").eq("KEY"), ScanIndexForward=False)
    return [KeyRecord.from_item(item) for item in items if "token" in item]  # a record without one opens nothing


def update(
    record: KeyRecord, changes: dict[str, Any], *, new_alias: str | None = None, alias_change: bool = False
) -> None:
    """Apply admin `changes` (name -> value, None removes) to the record as read; Conflict if it changed since.

    A change of max_budget moves budget_headroom by the same amount in the same write, so the headroom stays
    equal to max_budget - spend - reserved whatever requests are settling meanwhile. A change of team_id or
    user_id moves the key's index items in the same transaction (LinkRefused if the new owners cannot take it).
    """
    now = utcnow().isoformat()
    names = {"#updated_at": "updated_at", "#token": "token"}
    values: dict[str, Any] = {":now": now, ":seen": record.updated_at, ":token": record.token}
    sets, removes, adds = ["#updated_at = :now"], [], []
    for index, (name, value) in enumerate(changes.items()):
        names[f"#f{index}"] = name
        if value is None:
            removes.append(f"#f{index}")
        else:
            values[f":f{index}"] = table.stored(value)
            sets.append(f"#f{index} = :f{index}")
    if "max_budget" in changes:
        names["#headroom"] = "budget_headroom"
        values[":delta"] = (money(changes["max_budget"]) or _ZERO) - (record.max_budget or _ZERO)
        adds.append("#headroom :delta")
    expression = "SET " + ", ".join(sets)
    if removes:
        expression += " REMOVE " + ", ".join(removes)
    if adds:
        expression += " ADD " + ", ".join(adds)
    condition = "#updated_at = :seen AND #token = :token"
    owners = (changes.get("team_id", record.team_id), changes.get("user_id", record.user_id))
    links = key_links.relink(record.key_id, (record.team_id, record.user_id), owners)
    if (not alias_change or new_alias == record.key_alias) and not links.actions:
        if table.update_if(record_pk(record.key_id), "KEY", expression, condition, names, values) is not None:
            raise Conflict()
        return
    spec = {
        "Key": {"pk": record_pk(record.key_id), "sk": "KEY"},
        "UpdateExpression": expression,
        "ConditionExpression": condition,
        "ExpressionAttributeNames": names,
        "ExpressionAttributeValues": values,
    }
    actions: list[dict[str, Any]] = [{"Update": spec}]
    moves_alias = alias_change and new_alias != record.key_alias
    if moves_alias and new_alias is not None:
        actions.append(
            {"Put": {"Item": _alias_item(new_alias, record.key_id), "ConditionExpression": "attribute_not_exists(pk)"}}
        )
    if moves_alias and record.key_alias is not None:
        actions.append({"Delete": {"Key": {"pk": f"ALIAS#{record.key_alias}", "sk": "ALIAS"}}})
    linked = len(actions)
    actions += links.actions
    try:
        table.transact(actions)
    except table.Cancelled as exc:
        if 0 in exc.failed:
            raise Conflict() from None
        if failed_links := [index - linked for index in exc.failed if index >= linked]:
            raise LinkRefused(links.refusal(failed_links)) from None
        if moves_alias and new_alias is not None and 1 in exc.failed:
            raise AliasTaken(new_alias) from None
        raise Conflict() from None


def regenerate(record: KeyRecord, new_plain: str) -> KeyRecord:
    """Give the record a new key; the old one stops opening it in the same transaction. Settings, spend and
    counters stay where they are (on KEY#<key_id>), so requests still in flight settle normally.

    The old key's pointer item stays (it leads to a record whose token moved on, so it opens nothing): no key
    that was ever used can be chosen again. The record lists those pointers in `retired`, for delete.
    """
    new_token = hash_key(new_plain)
    if new_token in (record.key_id, record.token):  # its own current or original key: never reused
        raise KeyExists()
    now = utcnow().isoformat()
    names = {"#token": "token", "#updated_at": "updated_at", "#retired": "retired"}
    values: dict[str, Any] = {":new": new_token, ":name": key_name(new_plain), ":now": now, ":old": record.token}
    expression = "SET #token = :new, key_name = :name, #updated_at = :now"
    if record.token != record.key_id:  # the previous hash was itself a pointer
        expression += " ADD #retired :retired"
        values[":retired"] = {record.token}
    else:
        del names["#retired"]
    actions: list[dict[str, Any]] = [
        {
            "Put": {
                "Item": {"pk": record_pk(new_token), "sk": "KEY", "points_to": record.key_id, "token": new_token},
                "ConditionExpression": "attribute_not_exists(pk)",
            }
        },
        {
            "Update": {
                "Key": {"pk": record_pk(record.key_id), "sk": "KEY"},
                "UpdateExpression": expression,
                "ConditionExpression": "#token = :old",
                "ExpressionAttributeNames": names,
                "ExpressionAttributeValues": values,
            }
        },
    ]
    try:
        table.transact(actions)
    except table.Cancelled as exc:
        if 0 in exc.failed:
            raise KeyExists() from None
        raise Conflict() from None
    record.token, record.key_name, record.updated_at = new_token, key_name(new_plain), now
    key_directory.add(new_token)
    return record


def delete(record: KeyRecord) -> None:
    """Remove the record, its pointers and its alias. Counters expire on their own (TTL)."""
    actions: list[dict[str, Any]] = [
        {
            "Delete": {
                "Key": {"pk": record_pk(record.key_id), "sk": "KEY"},
                "ConditionExpression": "#token = :token",
                "ExpressionAttributeNames": {"#token": "token"},
                "ExpressionAttributeValues": {":token": record.token},
            }
        }
    ]
    if record.token != record.key_id:
        actions.append({"Delete": {"Key": {"pk": record_pk(record.token), "sk": "KEY"}}})
    if record.key_alias is not None:
        actions.append({"Delete": {"Key": {"pk": f"ALIAS#{record.key_alias}", "sk": "ALIAS"}}})
    actions += key_links.unlink(record.key_id, record.team_id, record.user_id)
    # Read before the delete: its condition (same token) guarantees no regenerate added to the list meanwhile.
    retired = (_get(record_pk(record.key_id)) or {}).get("retired") or set()
    try:
        table.transact(actions)
    except table.Cancelled:
        raise Conflict() from None
    # Pointers of earlier keys open nothing once the record is gone; removing them is housekeeping.
    table.delete_all((record_pk(token), "KEY") for token in retired)


class KeyCache:
    """Per-process cache of key records, so the hot path skips DynamoDB for keys seen in the last few seconds.

    Changes made through this process (update, block, delete, regenerate) call `invalidate` and apply at once;
    changes made on another Lambda instance reach this one within `KEY_CACHE_TTL` seconds. Unknown keys are
    cached too, so a client retrying a bad key does not hammer the table; the size bound keeps random keys from
    filling memory. When DynamoDB cannot be read, a record past its TTL keeps serving for up to `AWS_STALE_SECONDS`
    more (`stale`).
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

    def stale(self, token: str) -> KeyRecord | None:
        """The record cached for `token`, expired no longer than AWS_STALE_SECONDS ago: for outages only."""
        settings = get_settings()
        with self._lock:
            entry = self._entries.get(token)
        if entry is None or time.monotonic() - entry[0] > settings.key_cache_ttl + settings.stale_seconds:
            return None
        return entry[1]

    def put(self, token: str, record: KeyRecord | None) -> None:
        with self._lock:
            self._entries[token] = (time.monotonic(), record)
            self._entries.move_to_end(token)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)

    def invalidate(self, *tokens: str) -> None:
        """Forget the given hashes, or everything when called without arguments."""
        with self._lock:
            if not tokens:
                self._entries.clear()
            for token in tokens:
                self._entries.pop(token, None)


class KeyDirectory:
    """Every valid key hash, so a flood of unknown keys is refused without a GetItem each (issue 9).

    In normal times an unknown key costs one GetItem (then its negative cache entry, KEY_CACHE_TTL). Once
    `FLOOD_MISSES` unknown keys arrive within KEY_CACHE_TTL, the directory takes over: it is loaded with one paged
    Query of the gsi1 index (the current `token` of every record), at most once per KEY_CACHE_TTL, and keys it does
    not hold are refused without a read. However many distinct unknown keys arrive, they then cost one directory
    read per KEY_CACHE_TTL per instance. A key created or regenerated here is added at once; during a flood one
    created elsewhere works from the next reload, within KEY_CACHE_TTL. Memory: about 100 bytes per key.
    """

    FLOOD_MISSES = 20

    def __init__(self) -> None:
        self._tokens: set[str] = set()
        self._added: dict[str, float] = {}  # token -> when added here (kept across a reload that may miss it)
        self._loaded_at: float | None = None
        self._window_start, self._misses, self._flooded = 0.0, 0, False
        self._lock = threading.Lock()

    def refuses(self, token: str) -> bool:
        """Whether `token` is surely unknown: during a flood, a fresh directory does not hold it."""
        with self._lock:
            now, ttl = time.monotonic(), get_settings().key_cache_ttl
            fresh = self._loaded_at is not None and now - self._loaded_at <= ttl
            return self._flooded and fresh and token not in self._tokens

    def note_miss(self) -> None:
        """Blocking. An unknown key was read from the table: count it, and during a flood reload the directory."""
        with self._lock:
            now, ttl = time.monotonic(), get_settings().key_cache_ttl
            if now - self._window_start > ttl:
                # A flood lasts while each KEY_CACHE_TTL window sees FLOOD_MISSES misses (or directory refusals).
                self._flooded = self._misses >= self.FLOOD_MISSES and now - self._window_start <= 2 * ttl
                self._window_start, self._misses = now, 0
            self._misses += 1
            if self._misses >= self.FLOOD_MISSES:
                self._flooded = True
            flooded = self._flooded
        if flooded:
            self.reload_if_stale()

    def reload_if_stale(self) -> None:
        """Blocking. Read every key's hash again, unless the directory is younger than KEY_CACHE_TTL."""
        with self._lock:
            if self._loaded_at is not None and time.monotonic() - self._loaded_at <= get_settings().key_cache_ttl:
                return
        from boto3.dynamodb.conditions import Key

        started = time.monotonic()
        items = table.query_all(
            IndexName="gsi1",
            KeyConditionExpression=Key("gsi1pk").eq("KEY"),
            ProjectionExpression="#token",
            ExpressionAttributeNames={"#token": "token"},
        )
        with self._lock:
            # Keys added here while the query ran stay: the query may have missed them.
            added_since = {token for token, at in self._added.items() if at >= started}
            self._tokens = {item["token"] for item in items if "token" in item} | added_since
            self._added = {}
            self._loaded_at = started

    def add(self, token: str) -> None:
        with self._lock:
            self._tokens.add(token)
            self._added[token] = time.monotonic()

    def clear(self) -> None:
        with self._lock:
            self._tokens, self._added, self._loaded_at = set(), {}, None
            self._window_start, self._misses, self._flooded = 0.0, 0, False


key_cache = KeyCache()
key_directory = KeyDirectory()


def cached_load(token: str) -> KeyRecord | None:
    """Blocking. The record for `token` through the cache; an unknown key costs a GetItem only when the key
    directory cannot already tell (see KeyDirectory)."""
    hit, record = key_cache.get(token)
    if hit:
        return record
    if key_directory.refuses(token):
        key_directory.note_miss()
        key_cache.put(token, None)
        return None
    record = load(token)
    if record is None:
        key_directory.note_miss()
    key_cache.put(token, record)
    return record
