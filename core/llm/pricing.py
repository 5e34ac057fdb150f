"""What a call costs: list prices in USD per 1M tokens, and the arithmetic.

An unknown model costs None, never a guess: a run whose price is unknown says so. Users price
their own models (fine-tunes, self-hosted, a negotiated rate) under `pricing:` in
`~/.loom/config.yaml` (`core.config.LoomConfig.pricing`); those entries override this table.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from core.config import LoomConfig


@dataclass(frozen=True, slots=True)
class ModelRate:
    """USD per 1M tokens. `cached_input` None: cached input is billed as ordinary input."""

    input: float
    output: float
    cached_input: float | None = None


# List prices (standard tier, no batch discount) as published on openai.com/api/pricing and
# anthropic.com/pricing, checked against those pages in November 2025. This table was written on
# 2026-11-26 without network access to re-check them: verify before trusting a bill, and put
# any difference under `pricing:` in ~/.loom/config.yaml.
# Anthropic's cached_input is the cache-read rate; cache writes (1.25x input) are billed as input.
# Sonnet 4 / 4.5 prompts over 200k tokens cost more (6 / 22.50); the table holds the base rate.
DEFAULT_PRICES: dict[str, ModelRate] = {
    # OpenAI
    "gpt-4o": ModelRate(2.50, 10.00, 1.25),
    "gpt-4o-mini": ModelRate(0.15, 0.60, 0.075),
    "gpt-4.1": ModelRate(2.00, 8.00, 0.50),
    "gpt-4.1-mini": ModelRate(0.40, 1.60, 0.10),
    "gpt-4.1-nano": ModelRate(0.10, 0.40, 0.025),
    "o3": ModelRate(2.00, 8.00, 0.50),
    "o3-mini": ModelRate(1.10, 4.40, 0.55),
    "o4-mini": ModelRate(1.10, 4.40, 0.275),
    "gpt-5": ModelRate(1.25, 10.00, 0.125),
    "gpt-5-mini": ModelRate(0.25, 2.00, 0.025),
    "gpt-5-nano": ModelRate(0.05, 0.40, 0.005),
    # Anthropic
    "claude-opus-4-5": ModelRate(5.00, 25.00, 0.50),
    "claude-opus-4-1": ModelRate(15.00, 75.00, 1.50),
    "claude-opus-4": ModelRate(15.00, 75.00, 1.50),
    "claude-sonnet-4-5": ModelRate(3.00, 15.00, 0.30),
    "claude-sonnet-4": ModelRate(3.00, 15.00, 0.30),
    "claude-haiku-4-5": ModelRate(1.00, 5.00, 0.10),
    "claude-3-5-haiku": ModelRate(0.80, 4.00, 0.08),
}

# What may follow a known name and still be the same model: a dated snapshot
# (gpt-4o-mini-2024-07-18, claude-sonnet-4-5-20250929) or a moving alias (-latest). Anything
# else (o3-pro, gpt-4o-audio-preview, claude-sonnet-4-5 after claude-sonnet-4) is another model
# with its own price, which must not be borrowed from a shorter name.
_SNAPSHOT_SUFFIX = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{8}|latest)")


class Pricing:
    """Prices per model name; dated snapshots price as their model."""

    def __init__(self, overrides: Mapping[str, Any] | None = None, *,
                 prices: Mapping[str, ModelRate] | None = None) -> None:
        """`overrides`: name -> price (LoomConfig.pricing, a ModelRate or a dict) over `prices`
        (default: DEFAULT_PRICES)."""
        table = dict(DEFAULT_PRICES if prices is None else prices)
        for name, price in (overrides or {}).items():
            table[name] = _as_rate(price)
        self._table = {name.lower(): rate for name, rate in table.items()}
        # Longest first, so gpt-4o-mini-2024-07-18 finds gpt-4o-mini before gpt-4o.
        self._names = sorted(self._table, key=len, reverse=True)
        self._resolved: dict[str, ModelRate | None] = {}

    @classmethod
    def from_config(cls, config: "LoomConfig") -> "Pricing":
        return cls(overrides=config.pricing)

    def rate(self, model: str) -> ModelRate | None:
        try:
            return self._resolved[model]
        except KeyError:
            pass
        wanted = model.lower()
        rate = self._table.get(wanted)
        if rate is None:
            for name in self._names:
                if wanted.startswith(name) and _SNAPSHOT_SUFFIX.fullmatch(wanted[len(name):]):
                    rate = self._table[name]
                    break
        self._resolved[model] = rate
        return rate

    def known(self, model: str) -> bool:
        return self.rate(model) is not None

    def cost(self, model: str, input_tokens: int, output_tokens: int,
             cached_tokens: int = 0) -> float | None:
        """USD for one call; None when the model has no known price."""
        rate = self.rate(model)
        if rate is None:
            return None
        cached = min(max(cached_tokens, 0), max(input_tokens, 0))
        uncached = max(input_tokens, 0) - cached
        cached_rate = rate.input if rate.cached_input is None else rate.cached_input
        return (uncached * rate.input + cached * cached_rate
                + max(output_tokens, 0) * rate.output) / 1_000_000


def _as_rate(price: Any) -> ModelRate:
    if isinstance(price, ModelRate):
        return price
    if isinstance(price, Mapping):
        return ModelRate(float(price["input"]), float(price["output"]),
                         None if price.get("cached_input") is None else float(price["cached_input"]))
    # core.config.ModelPrice, or anything shaped like it
    cached = getattr(price, "cached_input", None)
    return ModelRate(float(price.input), float(price.output), None if cached is None else float(cached))
