"""What a response cost, from Anthropic's list prices in pricing.json (USD per million tokens).

Money is exact `Decimal` from here to DynamoDB; it becomes float only in EMF and JSON responses.

Models resolve by exact id, then without a trailing `-YYYYMMDD`/`-latest`, then by the longest known id they
start with (`<id>-...`); a Bedrock id (`anthropic.claude-...`, `us.anthropic.claude-...`) resolves as the Anthropic
model it serves (bedrock_models, the table Bedrock requests are sent by). Anything else pays UNKNOWN_MODEL_RATE:
"max" (highest known rate of each kind), a known model id, or "input/output" like "15/75" (cache rates then use
Anthropic's 1.25x / 2x / 0.1x of input).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from pathlib import Path
from typing import Any

from aws_lambda_powertools import Logger

from .bedrock_models import model_table
from .usage import Usage

logger = Logger(child=True)

_PRICES_FILE = Path(__file__).with_name("pricing.json")  # shipped next to this module in the layer
_FIELDS = ("input", "output", "cache_write_5m", "cache_write_1h", "cache_read")
_SUFFIX = re.compile(r"-(?:\d{8}|latest)$")
_MAX_WARNED = 256  # distinct unknown models logged per runtime; bounds memory if clients send junk names


@dataclass(frozen=True)
class Rates:
    """USD per million tokens of each kind."""

    input: Decimal
    output: Decimal
    cache_write_5m: Decimal
    cache_write_1h: Decimal
    cache_read: Decimal
    long_prompt: tuple[int, Rates] | None = None  # (threshold_tokens, rates for prompts above it)

    def for_prompt(self, prompt_tokens: int) -> Rates:
        return self.long_prompt[1] if self.long_prompt and prompt_tokens > self.long_prompt[0] else self


def _rates(entry: dict[str, Any]) -> Rates:
    tier = entry.get("long_prompt")
    long_prompt = (int(tier["threshold_tokens"]), _rates(tier)) if tier else None
    price = {name: Decimal(entry[name]) for name in _FIELDS}
    return Rates(**price, long_prompt=long_prompt)


@lru_cache(maxsize=1)
def _table() -> tuple[dict[str, Rates], dict[str, str]]:
    data = json.loads(_PRICES_FILE.read_text(encoding="utf-8"), parse_float=Decimal, parse_int=Decimal)
    models = {name.lower(): _rates(entry) for name, entry in data["models"].items()}
    aliases = {alias.lower(): target.lower() for alias, target in data.get("aliases", {}).items()}
    if missing := sorted(target for target in aliases.values() if target not in models):
        raise ValueError(f"pricing.json aliases point at unknown models: {missing}")
    return models, aliases


def resolve_model(model: str, bedrock_model_ids: str) -> str | None:
    """The pricing.json id `model` is billed as, or None when it is unknown (`bedrock_model_ids`: the runtime's
    BEDROCK_MODEL_IDS, which Bedrock ids resolve by besides the shipped table)."""
    return _resolve(model, bedrock_model_ids)


@lru_cache(maxsize=1024)
def _resolve(model: str, bedrock_model_ids: str) -> str | None:
    known = _resolve_anthropic(model)
    if known is None and (served := model_table(bedrock_model_ids).anthropic_model(model)) is not None:
        known = _resolve_anthropic(served)
    return known


def _resolve_anthropic(model: str) -> str | None:
    models, aliases = _table()
    name = model.strip().lower()
    for candidate in (name, _SUFFIX.sub("", name)):
        candidate = aliases.get(candidate, candidate)
        if candidate in models:
            return candidate
    for known in sorted((*models, *aliases), key=len, reverse=True):
        if name.startswith(known + "-"):
            return aliases.get(known, known)
    return None


@lru_cache(maxsize=8)
def _fallback(spec: str, bedrock_model_ids: str) -> Rates:
    models = _table()[0]
    text = spec.strip().lower()
    if "/" in text:
        try:
            price_in, price_out = (Decimal(part.strip()) for part in text.split("/"))
            if all(p.is_finite() and p >= 0 for p in (price_in, price_out)):
                return Rates(price_in, price_out, price_in * Decimal("1.25"), price_in * 2, price_in / 10)
        except (ValueError, InvalidOperation):
            pass
    elif text not in ("", "max") and (known := resolve_model(text, bedrock_model_ids)):
        return models[known]
    if text not in ("", "max"):
        logger.warning("UNKNOWN_MODEL_RATE not understood; using 'max'", extra={"unknown_model_rate": spec[:100]})
    return Rates(*(max(getattr(rates, name) for rates in models.values()) for name in _FIELDS))


class UnknownModels:
    """How one runtime prices models pricing.json does not know: UNKNOWN_MODEL_RATE, logged once per model name;
    and which model a Bedrock id is (`bedrock_model_ids`: its BEDROCK_MODEL_IDS, raw)."""

    def __init__(self, rate: str, bedrock_model_ids: str) -> None:
        self.rate = rate
        self.bedrock_model_ids = bedrock_model_ids
        self._warned: set[str] = set()

    def rates(self, model: str | None) -> Rates:
        name = (model or "")[:100]
        if name not in self._warned and len(self._warned) < _MAX_WARNED:
            self._warned.add(name)
            logger.warning("Unknown model, billed at the fallback rate", extra={"model": name, "fallback": self.rate})
        return _fallback(self.rate, self.bedrock_model_ids)


def rates_for(model: str | None, unknown_models: UnknownModels) -> Rates:
    """The rates `model` is billed at; a model pricing.json does not know at `unknown_models`' rate (the
    runtime's)."""
    known = resolve_model(model, unknown_models.bedrock_model_ids) if model else None
    if known is not None:
        return _table()[0][known]
    return unknown_models.rates(model)


@lru_cache(maxsize=1)
def batch_multiplier() -> Decimal:
    """What a Message Batches token costs relative to the standard price (pricing.json `batch.multiplier`)."""
    data = json.loads(_PRICES_FILE.read_text(encoding="utf-8"), parse_float=Decimal, parse_int=Decimal)
    return Decimal(data["batch"]["multiplier"])


def cost_usd(model: str | None, usage: Usage, unknown_models: UnknownModels) -> Decimal:
    """USD cost of one response, exact (`unknown_models`: as for `rates_for`)."""
    five, hour = usage.cache_creation_5m_input_tokens, usage.cache_creation_1h_input_tokens
    written = max(usage.cache_creation_input_tokens, five + hour)
    rates = rates_for(model, unknown_models).for_prompt(usage.input_tokens + written + usage.cache_read_input_tokens)
    # 1-hour writes at their rate; 5-minute writes, and any write the TTL split (if reported) leaves out, at 5m.
    writes = (written - hour) * rates.cache_write_5m + hour * rates.cache_write_1h
    total = usage.input_tokens * rates.input + usage.output_tokens * rates.output
    return (total + writes + usage.cache_read_input_tokens * rates.cache_read) / 1_000_000
