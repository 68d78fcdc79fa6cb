"""Which Bedrock model id serves which Anthropic model: one table (bedrock_models.json, with the operator's
BEDROCK_MODEL_IDS merged over it), read both ways.

Anthropic -> Bedrock picks the id a request is sent to Bedrock with (bedrock.py). Bedrock -> Anthropic names the model
a client asked for by a Bedrock id (`anthropic.claude-...`), so that it is priced, allowed and counted as the model it
is rather than as an unknown one (pricing.py, governance.py, metrics.py).

A base module: it imports nothing of the gateway's, so settings can check BEDROCK_MODEL_IDS with it at start.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path

_MODELS_FILE = Path(__file__).with_name("bedrock_models.json")  # shipped next to this module in the layer
_SNAPSHOT = re.compile(r"-(?:\d{8}|latest)$")
_BEDROCK_ID = re.compile(r"[A-Za-z0-9._:/-]{1,256}")
# Bedrock's spellings around a base id: a cross-region inference profile's geography in front
# (`us.anthropic.claude-opus-4-8`), and bedrock-runtime's version after (`...-20250929-v1:0`).
_GEOGRAPHY = re.compile(r"^(?:us|us-gov|eu|apac|au|ca|jp|global)\.")
_VERSION = re.compile(r"-v\d+(?::\d+)?$")
_PROVIDER = "anthropic."


class BedrockConfigError(ValueError):
    """A Bedrock setting that cannot work; raised at startup, never per request."""


def load_model_ids(override: str | None) -> dict[str, str]:
    """The shipped model table with the operator's BEDROCK_MODEL_IDS (raw JSON text, or None) merged over it:
    Anthropic model id (lower case) -> Bedrock model id."""
    shipped = json.loads(_MODELS_FILE.read_text(encoding="utf-8"))["models"]
    table = {name.lower(): entry["id"] for name, entry in shipped.items()}
    if not override or not override.strip():
        return table
    try:
        extra = json.loads(override)
    except ValueError as exc:
        raise BedrockConfigError(f"BEDROCK_MODEL_IDS is not valid JSON ({exc})") from None
    if not isinstance(extra, dict):
        raise BedrockConfigError('BEDROCK_MODEL_IDS must be a JSON object like {"claude-x": "anthropic.claude-x"}')
    for name, bedrock_id in extra.items():
        if bedrock_id is None:  # the operator takes a model off Bedrock
            table.pop(name.lower(), None)
        elif isinstance(bedrock_id, str) and _BEDROCK_ID.fullmatch(bedrock_id) and name.strip():
            table[name.lower()] = bedrock_id
        else:
            raise BedrockConfigError(f"BEDROCK_MODEL_IDS[{name[:100]!r}] must be a Bedrock model id or null")
    return table


class ModelTable:
    """The table both ways: `bedrock_id` for a request sent to Bedrock, `anthropic_model` for a Bedrock id."""

    def __init__(self, to_bedrock: Mapping[str, str]) -> None:
        self.to_bedrock = dict(to_bedrock)  # Anthropic id (lower case) -> Bedrock id
        self.to_anthropic: dict[str, str] = {}  # Bedrock id (lower case) -> Anthropic id
        for name, bedrock_id in self.to_bedrock.items():
            self.to_anthropic.setdefault(bedrock_id.lower(), name)  # two models on one id: the first one
        self._bedrock_ids = frozenset(self.to_bedrock.values())

    def bedrock_id(self, model: str) -> str | None:
        """Bedrock's id for `model`, or None when Bedrock does not offer it.

        A dated snapshot or `-latest` alias not in the table maps through its base id: bedrock-mantle names models
        without dates, and Anthropic's undated id is an alias of its (single) snapshot, so this is the same model. A
        model that already is a Bedrock id in the table is kept as it is.
        """
        name = model.strip().lower()
        for candidate in (name, _SNAPSHOT.sub("", name)):
            if candidate in self.to_bedrock:
                return self.to_bedrock[candidate]
        return model if model in self._bedrock_ids else None

    def anthropic_model(self, model: str) -> str | None:
        """The Anthropic model id a Bedrock id serves, or None when `model` is not a Bedrock id of Anthropic's.

        An id in the table maps back to its Anthropic model (with or without an inference profile's geography in
        front). Any other `anthropic.<id>` is Bedrock's spelling of Anthropic's `<id>`: the geography and a
        bedrock-runtime version suffix (`-v1:0`) are dropped and a date stays (`claude-sonnet-4-5-20250929`), for
        the caller to resolve as it would the Anthropic id.
        """
        name = model.strip().lower()
        for candidate in (name, _GEOGRAPHY.sub("", name)):
            if candidate in self.to_anthropic:
                return self.to_anthropic[candidate]
        base = _VERSION.sub("", _GEOGRAPHY.sub("", name))
        if base.startswith(_PROVIDER) and len(base) > len(_PROVIDER):
            return base[len(_PROVIDER) :]
        return None


@lru_cache(maxsize=4)
def model_table(override: str | None) -> ModelTable:
    """The table for a BEDROCK_MODEL_IDS value, built once per distinct value (settings has checked it loads)."""
    return ModelTable(load_model_ids(override))
