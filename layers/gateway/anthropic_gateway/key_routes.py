"""The key management API, in LiteLLM proxy's request and response shapes.

Who may do what is access.py's: the master key and proxy_admin everything, proxy_admin_viewer reads, a team's
admin the team's keys, an internal user its own keys; /key/list shows only the keys the caller may read. A key
made or regenerated for a user by someone else than that user or a proxy_admin, or moved to another user, is
marked `delegated_by` and has no role on the admin API (access.py). Every change is stored with its audit entry
in one transaction (audit.py).

Responses carry the key's hash (`token`, LiteLLM's name for it) and never a plain key, except the one response
that creates it (/key/generate, /key/regenerate). Every change invalidates this process's key cache, so it
applies here at once; other instances see it within KEY_CACHE_TTL seconds (docs/keys.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Self, get_args, get_origin

import anyio.to_thread
from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
)

from . import audit, governance, keys, money, tags
from .access import Access, admin_access
from .access import of as access_of
from .auth import AdminParts, runtime_of
from .errors import GatewayError, invalid_request
from .keys import KeyCache
from .money_fields import Amount, MoneyJSONResponse
from .refusals import key_owner_error
from .secrets import Secrets
from .settings import parse_upstreams
from .storage import key_records, members, table, teams, users
from .storage.audit import Entry
from .storage.key_records import KeyRecord

MAX_LIST_SIZE = 100
MAX_DELETE = 100  # keys (and aliases) per /key/delete: each is a read, and the call must answer within seconds
MAX_MODELS = 100
# Metadata is stored as one DynamoDB map on the key's item. 16 KB of JSON keeps the whole item (models, tags and
# counters included) far below DynamoDB's 400 KB item limit; DynamoDB nests at most 32 levels, and the item itself
# and the `metadata` attribute take two of them.
MAX_METADATA_BYTES = 16 * 1024
MAX_METADATA_DEPTH = 30
# A key or budget period longer than this is a typo, and `now + duration` must stay a date Python can write.
MAX_DURATION = timedelta(days=100 * 365)
# Budgets are USD, exact (money.py: at most 18 significant digits): above a trillion or below a billionth of a
# dollar (other than 0) is a mistake.
MAX_BUDGET = Decimal(10) ** 12
MIN_NONZERO_BUDGET = Decimal("0.000000001")
MAX_LIMIT = 10**12
MAX_KEY_TAGS = tags.MAX_TAGS  # a name of its own: inside KeySettings, `tags` is the field


router = APIRouter(prefix="/key", dependencies=[Depends(admin_access)])


# -- request shapes ---------------------------------------------------------------------------------------------


def _duration(value: str) -> str:
    if table.parse_duration(value) > MAX_DURATION:  # ValueError names the accepted forms
        raise ValueError(f"at most 100 years ({MAX_DURATION.days}d)")
    return value


def _printable(value: str) -> str:
    if not value.isprintable():
        raise ValueError("must be printable characters")
    return value


def _identifier(value: str) -> str:
    if not value.isprintable() or any(character.isspace() for character in value):
        raise ValueError("must be printable characters without spaces")
    return value


def _budget(value: object) -> Decimal:
    """A JSON number (an int, or the Decimal `money.loads` read) as an exact budget; ValueError says why not."""
    budget = money.amount(value)  # MoneyError is a ValueError
    if budget > MAX_BUDGET:
        raise ValueError(f"must be at most {money.plain(MAX_BUDGET)} (USD)")
    if 0 < budget < MIN_NONZERO_BUDGET:
        raise ValueError(f"must be 0 or at least {money.plain(MIN_NONZERO_BUDGET)} (USD)")
    return budget


def _tags(value: list[str]) -> list[str]:
    for tag in value:
        try:
            tags.validate(tag)
        except GatewayError as exc:
            raise ValueError(exc.message) from None
    return list(dict.fromkeys(value))


def _metadata(value: dict[str, Any]) -> dict[str, Any]:
    _check_storable_map(value, depth=1)
    try:  # DynamoDB's number range is narrower than JSON's
        table.check_storable(value)
    except Exception:
        raise ValueError("cannot be stored: numbers need at most 38 digits, within 1e-130..1e125") from None
    # Measured once the numbers are known to be storable: 1e999999999 written out in full would be a gigabyte.
    if len(money.dumps(value, ensure_ascii=True)) > MAX_METADATA_BYTES:
        raise ValueError(f"at most {MAX_METADATA_BYTES} bytes of JSON")
    return value


def _check_storable_map(value: Any, depth: int) -> None:
    """Refuse what DynamoDB cannot hold in a map: empty keys (at any depth) and nesting past its 32 levels.
    (Non-finite numbers never get here: `money.loads` refuses NaN and Infinity in the body.)"""
    if depth > MAX_METADATA_DEPTH and isinstance(value, dict | list):
        raise ValueError(f"maps and lists nested more than {MAX_METADATA_DEPTH} levels deep")
    if isinstance(value, dict):
        if "" in value:
            raise ValueError("keys must not be empty strings")
        for item in value.values():
            _check_storable_map(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_storable_map(item, depth + 1)


Duration = Annotated[str, Field(max_length=16), AfterValidator(_duration)]
# Aliases are DynamoDB key values (ALIAS#<alias>): bounded, printable, whether they name a new key or look one up.
Alias = Annotated[str, Field(min_length=1, max_length=256), AfterValidator(_printable)]
ModelName = Annotated[str, Field(min_length=1, max_length=256), AfterValidator(_printable)]
# Team and user ids are DynamoDB key values (TEAM#<id>, USER#<id>) and go into URLs: bounded, printable, no spaces.
Identifier = Annotated[str, Field(min_length=1, max_length=256), AfterValidator(_identifier)]
Limit = Annotated[int, Field(ge=0, le=MAX_LIMIT)]
# A JSON string is not a budget ("10" is refused), nor a bool; its schema is the number it is on the wire.
Budget = Annotated[
    Decimal,
    PlainValidator(_budget),
    WithJsonSchema({"type": "number", "minimum": 0, "maximum": float(MAX_BUDGET)}),
]


class KeySettings(BaseModel):
    """What /key/generate and /key/update accept. Unknown fields, wrong types and values out of range are a 400
    naming the field (docs/keys.md lists the ranges)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    key_alias: Alias | None = None
    models: Annotated[list[ModelName], Field(max_length=MAX_MODELS)] | None = None
    max_budget: Budget | None = None
    budget_duration: Duration | None = None
    duration: Duration | None = None
    rpm_limit: Limit | None = None
    tpm_limit: Limit | None = None
    max_parallel_requests: Limit | None = None
    # Failover order, e.g. ["anthropic", "bedrock"]; null: the deployment's DEFAULT_UPSTREAMS (docs/bedrock.md).
    upstreams: Annotated[list[str], AfterValidator(parse_upstreams)] | None = None
    metadata: Annotated[dict[str, Any], AfterValidator(_metadata)] | None = None
    tags: Annotated[list[str], Field(max_length=MAX_KEY_TAGS), AfterValidator(_tags)] | None = None
    blocked: bool | None = None
    team_id: Identifier | None = None  # the team must exist, and the key's user be a member of it
    user_id: Identifier | None = None


class GenerateRequest(KeySettings):
    key: str | None = None  # a caller-chosen key instead of a generated one


class UpdateRequest(KeySettings):
    key: str | None = None  # which key (plain or hash); without it, key_alias names the key


class KeyRef(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    key: str | None = None
    key_alias: Alias | None = None


class RegenerateRequest(KeyRef):
    new_key: str | None = None  # a caller-chosen new key instead of a generated one


class DeleteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    keys: Annotated[list[str], Field(max_length=MAX_DELETE)] | None = None
    key_aliases: Annotated[list[Alias], Field(max_length=MAX_DELETE)] | None = None


async def parse_body[M: BaseModel](request: Request, model: type[M]) -> M:
    """The JSON body as `model`, whatever content-type the client sent (curl -d sends a form type).

    Read with `money.loads`, not pydantic's JSON parser: that one reads every number as a binary float, so a
    budget of 0.1 would be whatever the float says, and 123456789.123456789 would lose digits.
    """
    raw = await request.body()
    try:
        data = money.loads(raw or b"{}")
    except money.MoneyError as exc:
        raise GatewayError(400, f"Invalid request: body: {exc} (JSON has no NaN or Infinity)") from None
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError too
        reason = str(exc)[:200] if isinstance(exc, ValueError) else "nested too deeply"
        raise GatewayError(400, f"Invalid request: body: not valid JSON ({reason}).") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = [{**error, "msg": _JSON_WORDING.get(error["type"], error["msg"])} for error in exc.errors()]
        raise invalid_request(errors) from None


# Validated as Python values, pydantic names a few types as Python does ("a valid list"); the client sent JSON.
_JSON_WORDING = {
    "list_type": "Input should be a valid array",
    "dict_type": "Input should be an object",
    "model_type": "Input should be an object",
}


# -- responses --------------------------------------------------------------------------------------------------


# Every field is always present (null when unset), in this order: LiteLLM's names, and what docs/keys.md shows.


class KeyInfo(BaseModel):
    """A key as the API shows it: settings, spend and counters, identified by its hash (`token`)."""

    token: str
    key_name: str  # sk-...<last characters>, for display
    key_alias: str | None
    spend: Amount  # in the current budget period (all time without budget_duration)
    total_spend: Amount
    reserved_spend: Amount  # estimates held by requests still in flight
    max_budget: Amount | None
    budget_duration: str | None
    budget_reset_at: str | None
    expires: str | None
    models: list[str]
    tags: list[str]
    metadata: dict[str, Any]
    rpm_limit: int | None
    tpm_limit: int | None
    max_parallel_requests: int | None
    upstreams: list[str] | None  # null: the deployment's DEFAULT_UPSTREAMS
    team_id: str | None
    user_id: str | None
    delegated_by: str | None  # set: the key has no role on the admin API (access.py)
    blocked: bool
    created_at: str
    updated_at: str
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    requests: int

    @classmethod
    def of(cls, record: KeyRecord, **extra: Any) -> Self:
        """The record's fields of the same name, and `extra` (a subclass's own fields).

        A stored record the API would not write (edited by hand, or from an older version) still renders: each
        field that does not fit its type is shown empty, so one bad item never breaks /key/list for every key.
        """
        fields: dict[str, Any] = {name: getattr(record, name, None) for name in KeyInfo.model_fields}
        fields["reserved_spend"] = getattr(record, "reserved", 0)
        try:
            info = cls(**fields, **extra)
            money.dumps(info.model_dump())  # what the response will do: bytes or odd values in metadata fail here
            return info
        except (ValidationError, TypeError, ValueError):
            return cls(**{name: _renderable(name, value) for name, value in fields.items()}, **extra)


def _renderable(name: str, value: Any) -> Any:
    """`value` if it is valid JSON output for KeyInfo field `name`, else the field's empty value."""
    adapter = _FIELD_ADAPTERS[name]
    try:
        money.dumps(adapter.dump_python(adapter.validate_python(value)))
        return value
    except (ValidationError, TypeError, ValueError):
        annotation = KeyInfo.model_fields[name].annotation
        if type(None) in get_args(annotation):
            return None
        empty: dict[Any, Any] = {list: [], dict: {}, int: 0, Decimal: Decimal(0), str: "", bool: False}
        return empty[get_origin(annotation) or annotation]


_FIELD_ADAPTERS: dict[str, TypeAdapter[Any]] = {
    name: TypeAdapter(field.annotation) for name, field in KeyInfo.model_fields.items()
}


class _Key(BaseModel):
    key: str


# Pydantic puts a base's fields first: listing _Key last puts `key` at the top, where LiteLLM has it.
class KeyWithInfo(KeyInfo, _Key):
    """/key/generate and /key/regenerate: `key` is the new plain key (shown this once); /key/update: its hash."""


class KeyInfoResponse(BaseModel):
    key: str  # the hash
    info: KeyInfo


class DeletedKeys(BaseModel):
    deleted_keys: list[str]  # hashes


class KeyList(BaseModel):
    keys: list[KeyInfo] | list[str]  # whole keys with return_full_object, else their hashes
    total_count: int
    current_page: int
    total_pages: int


def _answer(model: BaseModel) -> Response:
    """`model` as the JSON answer, money in it written exactly: FastAPI's own serialisation (which a route's
    `response_model` still documents) would write each Decimal as a string."""
    return MoneyJSONResponse(model.model_dump())


# -- finding keys -----------------------------------------------------------------------------------------------


def _token(key: str, field: str = "key") -> str:
    token = keys.token_of(key)
    if token is None:
        raise GatewayError(400, f"{field}: expected a virtual key (sk-...) or its 64-character hash.")
    return token


def _shown(key: str) -> str:
    """How an error may name a key: its hash stays, a plain key becomes its display name."""
    return key if keys.is_hash(key) else keys.key_name(key)


def _find(key: str | None, key_alias: str | None) -> KeyRecord:
    """The record named by key (plain or hash) or, without one, by key_alias; 404 if there is none (blocking)."""
    if key is not None:
        record = key_records.load(_token(key))
        if record is None:
            raise GatewayError(404, f"Key not found: {_shown(key)}.")
        return record
    if key_alias is not None:
        record = key_records.load_by_alias(key_alias)
        if record is None:
            raise GatewayError(404, f"No key has key_alias {key_alias!r}.")
        return record
    raise GatewayError(400, "Name the key: send `key` (the key or its hash) or `key_alias`.")


def _retrying(key_cache: KeyCache, find: Callable[[], KeyRecord], change: Callable[[KeyRecord], Any]) -> KeyRecord:
    """Read, change, and read again; a concurrent admin change (Conflict) means another read and another try.
    `find` checks the caller may make the change (access.py), on every read."""
    for _ in range(3):
        record = find()
        try:
            change(record)
        except key_records.Conflict:
            continue
        key_cache.invalidate(record.token)
        return key_records.load(record.token) or record
    raise GatewayError(
        409, "The key was changed by another request at the same time; retry.", error_type="invalid_request_error"
    )


async def _check_new_key(secrets: Secrets, key: str, field: str) -> str:
    if not keys.is_well_formed(key):
        raise GatewayError(400, f"{field}: must be 'sk-' followed by 22 to 200 letters, digits, '-' or '_'.")
    if key == await secrets.master_key():
        raise GatewayError(400, f"{field}: the master key cannot be a virtual key.")
    return key


# -- routes -----------------------------------------------------------------------------------------------------


@router.post("/generate", response_model=KeyWithInfo)
async def generate_key(http_request: Request) -> Response:
    request = await parse_body(http_request, GenerateRequest)
    runtime, access = runtime_of(http_request), access_of(http_request)
    request.team_id, request.user_id = access.new_key_owner(request.team_id, request.user_id)
    plain = await _check_new_key(runtime.secrets, request.key, "key") if request.key is not None else keys.new_key()
    now = keys.utcnow()
    record = KeyRecord(
        token=keys.hash_key(plain),
        key_name=keys.key_name(plain),
        key_alias=request.key_alias,
        created_at=now.isoformat(),
        updated_at=now.isoformat(),
        expires=_expiry(request.duration, now),
        blocked=bool(request.blocked),
        models=request.models or [],
        tags=request.tags or [],
        metadata=request.metadata or {},
        max_budget=request.max_budget,
        budget_duration=request.budget_duration,
        budget_reset_at=_next_reset(request.budget_duration, now),
        rpm_limit=request.rpm_limit,
        tpm_limit=request.tpm_limit,
        max_parallel_requests=request.max_parallel_requests,
        upstreams=request.upstreams,
        team_id=request.team_id,
        user_id=request.user_id,
        delegated_by=access.delegation(request.user_id),
    )
    entry = audit.entry(access.caller, "key.generate", audit.key_target(record), None, audit.key_fields(record))

    def create() -> None:
        _check_holder(access, record.user_id, "create a key for user")
        _check_limits(access, audit.key_fields(record), record.team_id, record.user_id)
        keys.put_new(runtime.key_cache, record, audit.put(runtime.settings, entry))

    try:
        await anyio.to_thread.run_sync(create)
    except key_records.LinkRefused as exc:
        raise key_owner_error(exc.refused) from None
    except key_records.KeyExists:
        raise GatewayError(400, "key: this key is already in use, or was used before; choose another.") from None
    except key_records.AliasTaken:
        raise GatewayError(400, f"key_alias {request.key_alias!r} is already in use.") from None
    except key_records.Conflict:
        raise GatewayError(
            409,
            "Another request wrote the same key or alias at the same time; retry.",
            error_type="invalid_request_error",
        ) from None
    runtime.key_cache.invalidate(record.token)  # it may be cached as unknown from an earlier attempt
    audit.written(entry)
    return _answer(KeyWithInfo.of(record, key=plain))


def _check_limits(access: Access, settings: dict[str, Any], team_id: str | None, user_id: str | None) -> None:
    """The key's limits within those of its team, user and membership, unless the caller is a proxy_admin."""
    if access.is_admin:
        return
    team = teams.get(team_id) if team_id else None
    user = users.get(user_id) if user_id else None
    membership = members.get(team_id, user_id) if team_id and user_id else None
    access.check_within(
        settings, [(f"team {team_id!r}", team), (f"user {user_id!r}", user), ("the user's membership", membership)]
    )


def _check_holder(access: Access, user_id: str | None, what: str) -> None:
    """`what` (create a key for, regenerate a key of, give a key to) user `user_id`: not a user whose role ranks
    above the caller's (access.check_outranks)."""
    if user_id is None or access.is_admin or user_id == access.user_id:
        return
    user = users.get(user_id)
    if user is not None:  # a missing user: the write refuses the key (LinkRefused)
        access.check_outranks(user_id, user.user_role, what)


def _reassigned(access: Access, record: KeyRecord, changes: dict[str, Any]) -> dict[str, Any]:
    """A key moved to another user keeps working for whoever held it: it has no role on the admin API (the
    caller named as `delegated_by`) until regenerated (access.py). {} when its user stays."""
    if "user_id" not in changes or changes["user_id"] == record.user_id:
        return {}
    return {"delegated_by": access.caller.actor if changes["user_id"] is not None else None}


def _expiry(duration: str | None, now: datetime) -> str | None:
    return keys.iso(now + table.parse_duration(duration)) if duration else None


def _next_reset(budget_duration: str | None, now: datetime) -> str | None:
    return table.iso_seconds(now + table.parse_duration(budget_duration)) if budget_duration else None


@router.get("/info", response_model=KeyInfoResponse)
async def key_info(http_request: Request, key: str | None = None) -> Response:
    if not key:
        raise GatewayError(400, "key: required (the key or, better, its hash: /key/info?key=<hash>).")
    record = await anyio.to_thread.run_sync(_info, key, access_of(http_request))
    return _answer(KeyInfoResponse(key=record.token, info=KeyInfo.of(record)))


def _info(key: str, access: Access) -> KeyRecord:
    record = _find(key, None)
    access.check_read_key(record)
    period = {
        "key_id": record.key_id,
        "budget_duration": record.budget_duration,
        "budget_reset_at": record.budget_reset_at,
    }
    try:
        # A budget period that ended while the key was idle: start the new one, so spend shows what counts now.
        if governance.reset_budget_if_due(period, keys.utcnow()):
            record = key_records.load(record.token) or record
    except (TypeError, ValueError, OverflowError):  # a stored period this version cannot read: show the key as is
        pass
    return record


@router.post("/update", response_model=KeyWithInfo)
async def update_key(http_request: Request) -> Response:
    request = await parse_body(http_request, UpdateRequest)
    runtime = runtime_of(http_request)
    given = request.model_fields_set - {"key"}
    if request.key is None:
        given.discard("key_alias")  # it names the key, it is not a change
    now = keys.utcnow()
    changes: dict[str, Any] = {}
    for name in given:
        value = getattr(request, name)
        if name == "duration":
            changes["expires"] = _expiry(value, now)
        elif name == "budget_duration":
            changes["budget_duration"] = value
            changes["budget_reset_at"] = _next_reset(value, now)
        elif name in ("models", "tags"):
            changes[name] = value or []
        elif name == "metadata":
            changes[name] = value or {}
        elif name == "blocked":
            changes[name] = bool(value)
        else:
            changes[name] = value
    alias_change = "key_alias" in changes
    access, entries = access_of(http_request), list[Entry]()

    def find() -> KeyRecord:
        record = _find(request.key, request.key_alias)
        access.check_manage_key(record, "update", own_allowed=False)
        access.check_moves(record, changes)
        owners = (changes.get("team_id", record.team_id), changes.get("user_id", record.user_id))
        # The limits it changes; all of them when it moves (they must fit its new team and user).
        moves = owners != (record.team_id, record.user_id)
        if owners[1] != record.user_id:
            _check_holder(access, owners[1], f"give key {record.token} to user")
        _check_limits(access, {**audit.key_fields(record), **changes} if moves else changes, *owners)
        return record

    def change(record: KeyRecord) -> None:
        if changes:
            applied = {**changes, **_reassigned(access, record, changes)}
            before, after = audit.changed(audit.key_fields(record), applied)
            entries.append(audit.entry(access.caller, "key.update", audit.key_target(record), before, after))
            key_records.update(
                record,
                applied,
                new_alias=changes.get("key_alias"),
                alias_change=alias_change,
                audit=audit.put(runtime.settings, entries[-1]),
            )

    try:
        record = await anyio.to_thread.run_sync(_retrying, runtime.key_cache, find, change)
    except key_records.AliasTaken:
        raise GatewayError(400, f"key_alias {changes.get('key_alias')!r} is already in use.") from None
    except key_records.LinkRefused as exc:
        raise key_owner_error(exc.refused) from None
    if entries:
        audit.written(entries[-1])
    return _answer(KeyWithInfo.of(record, key=record.token))


@router.post("/block", response_model=KeyInfo)
async def block_key(http_request: Request) -> Response:
    return await _set_blocked(http_request, True)


@router.post("/unblock", response_model=KeyInfo)
async def unblock_key(http_request: Request) -> Response:
    return await _set_blocked(http_request, False)


async def _set_blocked(http_request: Request, blocked: bool) -> Response:
    request = await parse_body(http_request, KeyRef)
    runtime, access, entries = runtime_of(http_request), access_of(http_request), list[Entry]()
    action = "block" if blocked else "unblock"

    def find() -> KeyRecord:
        record = _find(request.key, request.key_alias)
        # An internal user may block its own key (say, one it leaked), not unblock one an admin blocked.
        access.check_manage_key(record, action, own_allowed=blocked)
        return record

    def change(record: KeyRecord) -> None:
        before, after = {"blocked": record.blocked}, {"blocked": blocked}
        entries.append(audit.entry(access.caller, f"key.{action}", audit.key_target(record), before, after))
        key_records.update(record, {"blocked": blocked}, audit=audit.put(runtime.settings, entries[-1]))

    record = await anyio.to_thread.run_sync(_retrying, runtime.key_cache, find, change)
    audit.written(entries[-1])
    return _answer(KeyInfo.of(record))


@router.post("/delete")
async def delete_keys(http_request: Request) -> DeletedKeys:
    request = await parse_body(http_request, DeleteRequest)
    if not request.keys and not request.key_aliases:
        raise GatewayError(400, "Name the keys to delete: `keys` (keys or hashes) or `key_aliases`.")
    access, runtime = access_of(http_request), runtime_of(http_request)
    deleted = await anyio.to_thread.run_sync(_delete, runtime, request.keys or [], request.key_aliases or [], access)
    return DeletedKeys(deleted_keys=deleted)


def _delete(runtime: AdminParts, named_keys: list[str], aliases: list[str], access: Access) -> list[str]:
    """All named keys must exist (else 404 and nothing is deleted); returns the deleted keys' hashes."""
    tokens = [_token(key, "keys") for key in named_keys]
    records: dict[str, KeyRecord] = {}
    missing = []
    for key, token in zip(named_keys, tokens, strict=True):
        record = key_records.load(token)
        if record is None:
            missing.append(_shown(key))
        else:
            records[record.key_id] = record
    for alias in aliases:
        record = key_records.load_by_alias(alias)
        if record is None:
            missing.append(f"key_alias {alias!r}")
        else:
            records[record.key_id] = record
    if missing:
        raise GatewayError(404, f"Nothing deleted; not found: {', '.join(missing[:20])}.")
    for record in records.values():  # all allowed, or nothing deleted
        access.check_manage_key(record, "delete")
    deleted: list[str] = []
    for key_id, record in records.items():
        current: KeyRecord | None = record
        for _ in range(3):
            if current is None:  # deleted by someone else meanwhile
                break
            entry = audit.entry(access.caller, "key.delete", audit.key_target(current), audit.key_fields(current))
            try:
                key_records.delete(current, audit.put(runtime.settings, entry))
            except key_records.Conflict:  # regenerated or deleted meanwhile: read it again
                current = key_records.load_by_key_id(key_id)
                continue
            audit.written(entry)
            break
        else:  # it kept changing under us: say so rather than report it deleted
            raise GatewayError(
                409,
                f"Key {record.token} was changed by other requests while it was being deleted; retry."
                + (f" Deleted before it: {', '.join(deleted)}." if deleted else ""),
                error_type="invalid_request_error",
            )
        runtime.key_cache.invalidate(record.token, *([current.token] if current else []))
        deleted.append((current or record).token)
    return deleted


@router.get("/list", response_model=KeyList)
async def list_keys(
    http_request: Request,
    page: Annotated[int, Query(ge=1)] = 1,
    size: Annotated[int, Query(ge=1, le=MAX_LIST_SIZE)] = 10,
    key_alias: str | None = None,
    return_full_object: bool = False,
) -> Response:
    if key_alias is not None:
        # Only a valid alias can name a key; anything else (too long for a DynamoDB key) simply matches none.
        valid = 0 < len(key_alias) <= 256 and key_alias.isprintable()
        found = await anyio.to_thread.run_sync(key_records.load_by_alias, key_alias) if valid else None
        records = [found] if found else []
    else:
        records = await anyio.to_thread.run_sync(key_records.list_records)
    access = access_of(http_request)
    records = [record for record in records if access.may_read_key(record)]
    shown = records[(page - 1) * size : page * size]
    listed = KeyList(
        keys=[KeyInfo.of(r) for r in shown] if return_full_object else [r.token for r in shown],
        total_count=len(records),
        current_page=page,
        total_pages=math.ceil(len(records) / size),
    )
    return _answer(listed)


@router.post("/regenerate", response_model=KeyWithInfo)
async def regenerate_key(http_request: Request) -> Response:
    request = await parse_body(http_request, RegenerateRequest)
    runtime = runtime_of(http_request)
    plain = (
        await _check_new_key(runtime.secrets, request.new_key, "new_key")
        if request.new_key is not None
        else keys.new_key()
    )
    old: list[str] = []
    access, entries = access_of(http_request), list[Entry]()

    def find() -> KeyRecord:
        record = _find(request.key, request.key_alias)
        access.check_manage_key(record, "regenerate")
        _check_holder(access, record.user_id, f"regenerate key {record.token} of user")
        return record

    def change(record: KeyRecord) -> None:
        old.append(record.token)
        delegated_by = access.delegation(record.user_id)
        before: dict[str, str | None] = {"token": record.token}
        after: dict[str, str | None] = {"token": keys.hash_key(plain)}
        if delegated_by != record.delegated_by:
            before["delegated_by"], after["delegated_by"] = record.delegated_by, delegated_by
        entries.append(audit.entry(access.caller, "key.regenerate", audit.key_target(record), before, after))
        keys.regenerate(
            runtime.key_cache, record, plain, audit.put(runtime.settings, entries[-1]), delegated_by=delegated_by
        )

    try:
        await anyio.to_thread.run_sync(_retrying, runtime.key_cache, find, change)
    except key_records.KeyExists:
        raise GatewayError(400, "new_key: this key is already in use, or was used before; choose another.") from None
    new_token = keys.hash_key(plain)
    runtime.key_cache.invalidate(new_token, *old)  # the old key stops working here at once
    audit.written(entries[-1])
    record = await anyio.to_thread.run_sync(key_records.load, new_token)
    if record is None:
        raise GatewayError(
            409, "The key was deleted while it was being regenerated.", error_type="invalid_request_error"
        )
    return _answer(KeyWithInfo.of(record, key=plain))
