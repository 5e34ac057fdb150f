"""Pricing: list prices per model, dated snapshots, user overrides, never a made-up price."""

from __future__ import annotations

import pytest

from core.config import LoomConfig
from core.llm.pricing import DEFAULT_PRICES, ModelRate, Pricing


@pytest.fixture
def pricing() -> Pricing:
    return Pricing()


def test_every_model_the_docs_promise_has_a_price(pricing):
    for model in ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "o3",
                  "o4-mini", "gpt-5", "gpt-5-mini", "gpt-5-nano", "claude-opus-4-1",
                  "claude-opus-4-5", "claude-sonnet-4-5", "claude-sonnet-4", "claude-haiku-4-5",
                  "claude-3-5-haiku"):
        rate = pricing.rate(model)
        assert rate is not None, model
        assert rate.output >= rate.input > 0
        assert rate.cached_input is not None and rate.cached_input < rate.input


def test_cost_arithmetic_bills_cached_input_at_the_cached_rate(pricing):
    # gpt-4o-mini: 0.15 input, 0.075 cached input, 0.60 output per 1M tokens
    assert pricing.cost("gpt-4o-mini", 1_000_000, 0) == pytest.approx(0.15)
    assert pricing.cost("gpt-4o-mini", 0, 1_000_000) == pytest.approx(0.60)
    assert pricing.cost("gpt-4o-mini", 1_000_000, 1_000_000, cached_tokens=400_000) == \
        pytest.approx(0.6 * 0.15 + 0.4 * 0.075 + 0.60)
    # More cached than input (a confused server) never bills below zero input.
    assert pricing.cost("gpt-4o-mini", 100, 0, cached_tokens=500) == pytest.approx(100 * 0.075 / 1e6)


@pytest.mark.parametrize("model, priced_as", [
    ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
    ("gpt-4o-2024-08-06", "gpt-4o"),
    ("gpt-4.1-nano-2025-04-14", "gpt-4.1-nano"),
    ("o4-mini-2025-04-16", "o4-mini"),
    ("gpt-5-mini-2025-08-07", "gpt-5-mini"),
    ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
    ("claude-opus-4-5-20251101", "claude-opus-4-5"),
    ("claude-opus-4-1-20250805", "claude-opus-4-1"),
    ("claude-3-5-haiku-latest", "claude-3-5-haiku"),
    ("GPT-4o-Mini", "gpt-4o-mini"),
])
def test_snapshots_price_as_their_model(pricing, model, priced_as):
    assert pricing.rate(model) == DEFAULT_PRICES[priced_as]


def test_the_longest_known_name_wins(pricing):
    assert pricing.rate("gpt-4o-mini-2024-07-18") != pricing.rate("gpt-4o")
    assert pricing.rate("claude-opus-4-5-20251101") != pricing.rate("claude-opus-4")


@pytest.mark.parametrize("model", ["o3-pro", "gpt-4o-audio-preview", "gpt-5-codex-mini",
                                   "llama-3.1-8b", "gpt-4", "claude-2", "gpt-4o-minix"])
def test_other_models_have_no_price_rather_than_a_borrowed_one(pricing, model):
    assert pricing.rate(model) is None
    assert pricing.cost(model, 1000, 1000) is None


def test_config_prices_override_and_extend_the_table():
    config = LoomConfig.model_validate({"pricing": {
        "gpt-4o-mini": {"input": 0.10, "output": 0.40, "cached_input": 0.05},
        "my-finetune": {"input": 1.0, "output": 2.0},
    }})
    pricing = Pricing.from_config(config)
    assert pricing.rate("gpt-4o-mini-2024-07-18") == ModelRate(0.10, 0.40, 0.05)
    assert pricing.rate("gpt-4o") == DEFAULT_PRICES["gpt-4o"]
    # No cached_input given: cached tokens cost as ordinary input.
    assert pricing.cost("my-finetune", 1_000_000, 0, cached_tokens=1_000_000) == pytest.approx(1.0)


def test_overrides_accept_plain_mappings_and_a_custom_table():
    pricing = Pricing({"m": {"input": 3, "output": 4}}, prices={})
    assert pricing.rate("m") == ModelRate(3.0, 4.0, None)
    assert pricing.rate("gpt-4o") is None
