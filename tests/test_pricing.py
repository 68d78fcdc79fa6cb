from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import get_args

import pytest
from anthropic.types import ModelParam

from anthropic_gateway import pricing
from anthropic_gateway.settings import get_settings
from anthropic_gateway.usage import Usage

# How the gateways price models: UNKNOWN_MODEL_RATE and BEDROCK_MODEL_IDS as they are by default.
UNKNOWN_MODELS = pricing.UnknownModels("max", "")

FIELDS = ("input", "output", "cache_write_5m", "cache_write_1h", "cache_read")
PRICES = json.loads(Path(pricing.__file__).with_name("pricing.json").read_text(), parse_float=Decimal)


def rates_tuple(rates: pricing.Rates) -> tuple[Decimal, ...]:
    return tuple(getattr(rates, name) for name in FIELDS)


def D(*values: str | int) -> tuple[Decimal, ...]:
    return tuple(Decimal(str(v)) for v in values)


@pytest.fixture(autouse=True)
def clean(monkeypatch):
    """Every warning recorded (fallback rates are memoised with the warning a bad one gives: forgotten too)."""
    pricing._fallback.cache_clear()
    warnings: list[tuple[str, dict]] = []
    monkeypatch.setattr(pricing.logger, "warning", lambda msg, extra=None: warnings.append((msg, extra or {})))
    yield warnings
    pricing._fallback.cache_clear()


def sdk_model_ids() -> list[str]:
    literal = next(arg for arg in get_args(ModelParam) if get_args(arg))
    return list(get_args(literal))


def test_sdk_knows_models():
    ids = sdk_model_ids()
    assert len(ids) >= 20 and "claude-sonnet-4-5-20250929" in ids


@pytest.mark.parametrize("model", sdk_model_ids())
def test_every_sdk_model_has_a_price(model, clean):
    assert pricing.resolve_model(model, "") is not None
    rates = pricing.rates_for(model, UNKNOWN_MODELS)
    assert rates.input > 0 and rates.output > 0
    assert clean == []  # a known model is never billed at the fallback rate


def test_price_table_is_well_formed():
    for name, entry in PRICES["models"].items():
        values = [entry[field] for field in FIELDS]
        assert all(isinstance(v, (int, Decimal)) and v >= 0 for v in values), name
        assert entry["cache_write_1h"] >= entry["cache_write_5m"] >= entry["input"] > entry["cache_read"], name
        assert entry["output"] > entry["input"], name
        assert entry.get("source"), name
    for alias, target in PRICES["aliases"].items():
        assert target in PRICES["models"], alias


@pytest.mark.parametrize(
    ("model", "base"),
    [
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("claude-haiku-4-5-20251001", "claude-haiku-4-5"),
        ("claude-opus-4-5-20251101", "claude-opus-4-5"),
        ("claude-opus-4-20250514", "claude-opus-4-0"),
        ("claude-sonnet-4-20250514", "claude-sonnet-4-0"),
        ("claude-opus-4-1-20250805", "claude-opus-4-1"),
        ("claude-3-7-sonnet-latest", "claude-3-7-sonnet"),
        ("claude-3-5-haiku-20241022", "claude-3-5-haiku"),
        ("claude-3-haiku-20240307", "claude-3-haiku"),
        ("claude-3-opus-20240229", "claude-3-opus"),
        ("Claude-Sonnet-4-6", "claude-sonnet-4-6"),
        ("claude-opus-4-6-some-variant", "claude-opus-4-6"),  # longest known prefix
        ("claude-opus-5-5", "claude-opus-5-5"),  # not claude-opus-5
        ("claude-mythos-preview", "claude-mythos-preview"),
    ],
)
def test_resolves_to_base_model(model, base):
    assert pricing.resolve_model(model, "") == base
    assert pricing.rates_for(model, UNKNOWN_MODELS) == pricing.rates_for(base, UNKNOWN_MODELS)


@pytest.mark.parametrize(
    ("model", "base"),
    [
        ("anthropic.claude-haiku-4-5", "claude-haiku-4-5"),  # bedrock_models.json, read backwards
        ("anthropic.claude-opus-4-7", "claude-opus-4-7"),
        ("us.anthropic.claude-opus-4-8", "claude-opus-4-8"),  # a cross-region inference profile
        ("anthropic.claude-sonnet-4-5-20250929-v1:0", "claude-sonnet-4-5"),  # bedrock-runtime's spelling
        ("eu.anthropic.claude-3-haiku-20240307-v1:0", "claude-3-haiku"),
    ],
)
def test_bedrock_ids_are_priced_as_the_anthropic_model_they_serve(model, base, clean):
    assert pricing.resolve_model(model, "") == base
    assert pricing.rates_for(model, UNKNOWN_MODELS) == pricing.rates_for(base, UNKNOWN_MODELS)
    assert clean == []  # no "unknown model" warning


def test_an_operators_bedrock_id_is_priced_as_its_model(monkeypatch):
    monkeypatch.setenv("BEDROCK_MODEL_IDS", '{"claude-opus-4-8": "arn:aws:bedrock:us-east-1:1:application-profile/x"}')
    get_settings.cache_clear()
    try:
        settings = get_settings()  # as a runtime reads it
    finally:
        get_settings.cache_clear()  # read again, without it, by the next test
    prices = pricing.UnknownModels(settings.unknown_model_rate, settings.bedrock_model_ids)
    arn = "arn:aws:bedrock:us-east-1:1:application-profile/x"
    assert pricing.resolve_model(arn, settings.bedrock_model_ids) == "claude-opus-4-8"
    assert pricing.rates_for(arn, prices) == pricing.rates_for("claude-opus-4-8", prices)
    assert pricing.resolve_model(arn, "") is None  # another runtime's table knows nothing of it


@pytest.mark.parametrize(
    "model", ["gpt-4o", "claude-haiku-4-5x", "claude-opus-5x", "claude", "", "anthropic.", "meta.llama3-1-70b"]
)
def test_unknown_models_do_not_resolve(model):
    assert pricing.resolve_model(model, "") is None


def test_published_rates():
    assert rates_tuple(pricing.rates_for("claude-sonnet-4-5", UNKNOWN_MODELS)) == D(3, 15, "3.75", 6, "0.3")
    assert rates_tuple(pricing.rates_for("claude-opus-4-1", UNKNOWN_MODELS)) == D(15, 75, "18.75", 30, "1.5")
    assert rates_tuple(pricing.rates_for("claude-opus-4-8", UNKNOWN_MODELS)) == D(5, 25, "6.25", 10, "0.5")
    assert rates_tuple(pricing.rates_for("claude-fable-5-1", UNKNOWN_MODELS)) == D(10, 50, "12.5", 20, "0.25")
    assert rates_tuple(pricing.rates_for("claude-opus-5-5", UNKNOWN_MODELS)) == D(4, 20, 5, 8, "0.2")
    assert rates_tuple(pricing.rates_for("claude-3-haiku", UNKNOWN_MODELS)) == D("0.25", "1.25", "0.3", "0.5", "0.03")


def test_unknown_model_uses_max_rate_and_logs_once(clean):
    expected = tuple(max(entry[field] for entry in PRICES["models"].values()) for field in FIELDS)
    assert expected == D(25, 125, "31.25", 50, "2.5")  # Claude Mythos Preview is the most expensive today
    unknown = pricing.UnknownModels("max", "")  # a runtime's, as UNKNOWN_MODEL_RATE's default makes it
    assert rates_tuple(pricing.rates_for("claude-future-9", unknown)) == expected
    assert rates_tuple(pricing.rates_for("claude-future-9", unknown)) == expected
    assert len(clean) == 1 and clean[0][1]["model"] == "claude-future-9" and clean[0][1]["fallback"] == "max"
    assert rates_tuple(pricing.rates_for(None, unknown)) == expected
    pricing.rates_for(None, unknown)
    assert [extra["model"] for _, extra in clean] == ["claude-future-9", ""]


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("claude-haiku-4-5", D(1, 5, "1.25", 2, "0.1")),
        ("claude-sonnet-4-5-20250929", D(3, 15, "3.75", 6, "0.3")),
        ("15/75", D(15, 75, "18.75", 30, "1.5")),
        (" 3 / 15 ", D(3, 15, "3.75", 6, "0.3")),
        ("MAX", D(25, 125, "31.25", 50, "2.5")),
    ],
)
def test_configured_fallback(clean, setting, expected):
    unknown = pricing.UnknownModels(setting, "")  # UNKNOWN_MODEL_RATE
    assert rates_tuple(pricing.rates_for("mystery-model", unknown)) == expected
    pricing.rates_for("mystery-model", unknown)
    assert [msg for msg, _ in clean] == ["Unknown model, billed at the fallback rate"]  # once per model


@pytest.mark.parametrize("setting", ["cheap", "1/2/3", "-1/5", "nan/5", "gpt-4o"])
def test_bad_fallback_setting_means_max(clean, setting):
    unknown = pricing.UnknownModels(setting, "")
    assert rates_tuple(pricing.rates_for("mystery-model", unknown)) == D(25, 125, "31.25", 50, "2.5")
    pricing.rates_for("another-mystery", unknown)
    assert sum("UNKNOWN_MODEL_RATE" in msg for msg, _ in clean) == 1


def test_cost_of_a_realistic_response():
    usage = Usage(input_tokens=1200, output_tokens=850, cache_creation_input_tokens=3000, cache_read_input_tokens=20000)
    # 1200 * $3 + 850 * $15 + 3000 * $3.75 + 20000 * $0.30 = $33,600 per million tokens
    assert pricing.cost_usd("claude-sonnet-4-5", usage, UNKNOWN_MODELS) == Decimal("0.0336")
    assert pricing.cost_usd("claude-sonnet-4-5-20250929", usage, UNKNOWN_MODELS) == Decimal("0.0336")
    assert (
        pricing.cost_usd("claude-opus-4-1", Usage(input_tokens=1_000_000, output_tokens=1_000_000), UNKNOWN_MODELS)
        == 90
    )


def test_cache_write_ttl_split():
    base = {"input_tokens": 10, "output_tokens": 100}
    # Opus 4.6: input $5, output $25, 5m write $6.25, 1h write $10. 10*5 + 100*25 = 2,550.
    no_split = Usage(**base, cache_creation_input_tokens=4000)
    assert pricing.cost_usd("claude-opus-4-6", no_split, UNKNOWN_MODELS) == Decimal("0.02755")  # 2,550 + 4000 * 6.25
    split = Usage(
        **base,
        cache_creation_input_tokens=4000,
        cache_creation_5m_input_tokens=1000,
        cache_creation_1h_input_tokens=3000,
    )
    assert pricing.cost_usd("claude-opus-4-6", split, UNKNOWN_MODELS) == Decimal("0.0388")  # + 1000*6.25 + 3000*10
    remainder = Usage(
        **base,
        cache_creation_input_tokens=5000,
        cache_creation_5m_input_tokens=1000,
        cache_creation_1h_input_tokens=3000,
    )
    assert pricing.cost_usd("claude-opus-4-6", remainder, UNKNOWN_MODELS) == Decimal("0.04505")  # + 2000*6.25 + 3000*10
    only_1h = Usage(**base, cache_creation_1h_input_tokens=2000)  # split reported, total missing
    assert pricing.cost_usd("claude-opus-4-6", only_1h, UNKNOWN_MODELS) == Decimal("0.02255")  # + 2000*10


def test_haiku_5_5_long_prompt_tier():
    # Up to 100K prompt tokens: $0.10 in / $0.50 out; above: $0.50 / $2.50 and cache read $0.05, for the whole request.
    at_threshold = Usage(input_tokens=100_000, output_tokens=1000)
    assert pricing.cost_usd("claude-haiku-5-5", at_threshold, UNKNOWN_MODELS) == Decimal("0.0105")
    above = Usage(input_tokens=90_000, output_tokens=1000, cache_read_input_tokens=20_000)
    assert pricing.cost_usd("claude-haiku-5-5", above, UNKNOWN_MODELS) == Decimal("0.0485")


def test_unknown_model_cost_uses_fallback():
    usage = Usage(input_tokens=1000, output_tokens=1000, cache_read_input_tokens=1000)
    unknown = pricing.UnknownModels("15/75", "")
    assert pricing.cost_usd("mystery-model", usage, unknown) == Decimal("0.0915")  # 15 + 75 + 1.5 per thousand
