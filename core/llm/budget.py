"""Spending limits: `budget.max_cost_usd` stops a run before it would pass the budget.

Before each call the client reserves the call's worst case — the prompt's estimated tokens and
the whole `max_tokens` at the model's price — and refuses the call (`BudgetExceeded`) when what
was spent, plus what calls in flight may still cost, plus this call could pass the budget. When
the call returns, its reservation is replaced by its real cost. So a run never spends more than
its budget, except by calls whose prompt proved longer than the estimate.

One `Budget` serves a whole run: the transform and the LLM judges reserve from the same one.
"""

from __future__ import annotations

from collections.abc import Callable

from core.errors import BudgetExceeded
from core.llm.pricing import Pricing

# What a call without max_tokens is assumed to answer at most, for the reservation.
DEFAULT_OUTPUT_CEILING = 4096


class Budget:
    def __init__(self, max_cost_usd: float | None, *, pricing: Pricing,
                 on_warning: Callable[[str], None] | None = None) -> None:
        self.max_cost_usd = max_cost_usd
        self.pricing = pricing
        self.spent = 0.0
        self.reserved = 0.0
        self.exceeded: str | None = None  # why the budget refused a call, once it has
        self._on_warning = on_warning
        self._unpriced: set[str] = set()

    @property
    def enforced(self) -> bool:
        return self.max_cost_usd is not None

    def worst_case(self, model: str, input_tokens: int, output_tokens: int, *,
                   provider: str | None = None, base_url: str | None = None) -> float | None:
        """The call at the input and output prices (no cache discount: the worst case)."""
        return self.pricing.cost(model, input_tokens, output_tokens, provider=provider,
                                 base_url=base_url)

    def reserve(self, model: str, input_tokens: int, output_tokens: int, *,
                provider: str | None = None, base_url: str | None = None) -> float:
        """Reserve a call's worst case; returns the amount to `settle` later.

        Raises BudgetExceeded when the call could pass the budget. A model without a price
        cannot be held to a budget: that is said once, and the call goes ahead.
        """
        if self.max_cost_usd is None:
            return 0.0
        cost = self.worst_case(model, input_tokens, output_tokens, provider=provider,
                               base_url=base_url)
        if cost is None:
            self.check_priced(model, provider=provider, base_url=base_url)
            return 0.0
        if self.exceeded is not None or self.spent + self.reserved + cost > self.max_cost_usd:
            if self.exceeded is None:
                self.exceeded = (f"budget ${self.max_cost_usd:g} reached: ${self.spent:.6f} spent, "
                                 f"${self.reserved:.6f} reserved by calls in flight, the next "
                                 f"call could cost ${cost:.6f}")
            raise BudgetExceeded(self.exceeded)
        self.reserved += cost
        return cost

    def check_priced(self, model: str, *, provider: str | None = None,
                     base_url: str | None = None) -> bool:
        """Whether calls to `model` can be held to the budget; says once when they cannot."""
        if self.max_cost_usd is None or self.pricing.known(model, provider=provider,
                                                           base_url=base_url):
            return True
        if model not in self._unpriced:
            self._unpriced.add(model)
            if self._on_warning is not None:
                self._on_warning(f"budget.max_cost_usd cannot be enforced for model {model}: its "
                                 f"price is unknown (price it under pricing: in "
                                 f"~/.loom/config.yaml or with transform.price)")
        return False

    def settle(self, reserved: float, cost: float | None) -> None:
        """Replace a reservation by the call's real cost (None: unknown, or no call was billed)."""
        self.reserved = max(0.0, self.reserved - reserved)
        if cost:
            self.spent += cost
