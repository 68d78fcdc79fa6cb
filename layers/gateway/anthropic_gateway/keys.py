"""Virtual keys: how they look and are hashed, and how a runtime finds them fast (its key cache and directory).

A key is `sk-` + 32 url-safe random bytes. Only its SHA-256 hash (the LiteLLM "token") is stored; the plain
key exists in the response to `/key/generate` (or `/key/regenerate`) and nowhere else. The records themselves,
their layout and their writes are storage's (storage/key_records.py).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Hashable
from datetime import UTC, datetime
from decimal import Decimal

from .settings import Settings
from .storage import key_records, table
from .storage.key_records import KeyRecord

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


def effective_upstreams(record: KeyRecord, default: tuple[str, ...]) -> tuple[str, ...]:
    """The upstreams that serve this key's requests, in failover order: its own, or the deployment's `default`
    (DEFAULT_UPSTREAMS)."""
    return tuple(record.upstreams) if record.upstreams else default


def money(value: float | Decimal | None) -> Decimal | None:
    """A JSON amount (max_budget) as exact Decimal: a float becomes the Decimal of its shortest repr."""
    return None if value is None else table.stored(value) if isinstance(value, float) else Decimal(value)


def put_new(key_cache: KeyCache, record: KeyRecord, audit: table.Put | None = None) -> None:
    """Store a new key (storage/key_records.put_new: KeyExists, AliasTaken, Conflict); it works at once for the
    runtime whose `key_cache` this is, on other instances within KEY_CACHE_TTL."""
    key_records.put_new(record, audit)
    key_cache.directory.add(record.token)


def regenerate(
    key_cache: KeyCache,
    record: KeyRecord,
    new_plain: str,
    audit: table.Put | None = None,
    *,
    delegated_by: str | None = None,
) -> KeyRecord:
    """Give the record the key `new_plain` (storage/key_records.regenerate: KeyExists, Conflict), handed to
    `delegated_by` (KeyRecord); the old key stops working in the same write, the new one works at once for the
    runtime whose `key_cache` this is."""
    new_token = hash_key(new_plain)
    key_records.regenerate(record, new_token, key_name(new_plain), audit, delegated_by=delegated_by)
    key_cache.directory.add(new_token)
    return record


class RecordCache[K: Hashable, V]:
    """A runtime's cache of records, so the hot path skips DynamoDB for records read in the last few seconds.

    Changes made through this runtime (update, block, delete, regenerate) call `invalidate` and apply at once;
    changes made on another Lambda instance reach this one within `KEY_CACHE_TTL` seconds. Absent records are
    cached too (as None), so a client retrying a bad key does not hammer the table; the size bound keeps random
    keys from filling memory. When DynamoDB cannot be read, a record past its TTL keeps serving for up to
    `AWS_STALE_SECONDS` more (`stale`).
    """

    def __init__(self, settings: Settings, max_entries: int = 10_000):
        self._settings = settings  # KEY_CACHE_TTL, AWS_STALE_SECONDS
        self._entries: OrderedDict[K, tuple[float, V | None]] = OrderedDict()
        self._max_entries = max_entries
        self._lock = threading.Lock()

    def get(self, key: K) -> tuple[bool, V | None]:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or time.monotonic() - entry[0] > self._settings.key_cache_ttl:
                return False, None
            return True, entry[1]

    def stale(self, key: K) -> tuple[bool, V | None]:
        """The record cached for `key`, expired no longer than AWS_STALE_SECONDS ago: for outages only."""
        settings = self._settings
        with self._lock:
            entry = self._entries.get(key)
        if entry is None or time.monotonic() - entry[0] > settings.key_cache_ttl + settings.stale_seconds:
            return False, None
        return True, entry[1]

    def put(self, key: K, record: V | None) -> None:
        with self._lock:
            self._entries[key] = (time.monotonic(), record)
            self._entries.move_to_end(key)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)

    def invalidate(self, *keys: K) -> None:
        """Forget the given entries, or everything when called without arguments."""
        with self._lock:
            if not keys:
                self._entries.clear()
            for key in keys:
                self._entries.pop(key, None)


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

    def __init__(self, settings: Settings) -> None:
        self._settings = settings  # KEY_CACHE_TTL
        self._tokens: set[str] = set()
        self._added: dict[str, float] = {}  # token -> when added here (kept across a reload that may miss it)
        self._loaded_at: float | None = None
        self._window_start, self._misses, self._flooded = 0.0, 0, False
        self._lock = threading.Lock()

    def refuses(self, token: str) -> bool:
        """Whether `token` is surely unknown: during a flood, a fresh directory does not hold it."""
        with self._lock:
            now, ttl = time.monotonic(), self._settings.key_cache_ttl
            fresh = self._loaded_at is not None and now - self._loaded_at <= ttl
            return self._flooded and fresh and token not in self._tokens

    def note_miss(self) -> None:
        """Blocking. An unknown key was read from the table: count it, and during a flood reload the directory."""
        with self._lock:
            now, ttl = time.monotonic(), self._settings.key_cache_ttl
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
            if self._loaded_at is not None and time.monotonic() - self._loaded_at <= self._settings.key_cache_ttl:
                return
        started = time.monotonic()
        tokens = key_records.current_tokens()
        with self._lock:
            # Keys added here while the query ran stay: the query may have missed them.
            added_since = {token for token, at in self._added.items() if at >= started}
            self._tokens = tokens | added_since
            self._added = {}
            self._loaded_at = started

    def add(self, token: str) -> None:
        with self._lock:
            self._tokens.add(token)
            self._added[token] = time.monotonic()

    def forget(self) -> None:
        """Start over, as a new process does (after a SnapStart restore: the snapshot's monotonic clock did not run
        while it waited, so a directory it holds cannot tell its own age)."""
        with self._lock:
            self._tokens, self._added, self._loaded_at = set(), {}, None
            self._window_start, self._misses, self._flooded = 0.0, 0, False


class KeyCache(RecordCache[str, KeyRecord]):
    """One runtime's key records by hash (runtime.py holds it), with its key `directory`."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.directory = KeyDirectory(settings)

    def load(self, token: str) -> KeyRecord | None:
        """Blocking. The record for `token` through the cache; an unknown key costs a GetItem only when the key
        directory cannot already tell (see KeyDirectory)."""
        hit, record = self.get(token)
        if hit:
            return record
        if self.directory.refuses(token):
            self.directory.note_miss()
            self.put(token, None)
            return None
        record = key_records.load(token)
        if record is None:
            self.directory.note_miss()
        self.put(token, record)
        return record

    def forget(self) -> None:
        """Forget every record and the directory (SnapStart: see KeyDirectory.forget)."""
        self.invalidate()
        self.directory.forget()
