"""Spending limits: `budget.max_cost_usd` stops a run before it would pass the budget.

When a call is about to be sent — it holds one of its endpoint's concurrency slots — the client
reserves its worst case: the prompt's tokens (core.llm.tokens) corrected by what the model's
answered calls reported (`Calibration`), and the whole `max_tokens`, at the model's price. The
call is refused (`BudgetExceeded`) when what was spent, plus what the calls in flight may still
cost, plus this call could pass the budget. When it returns, still holding its slot, its
reservation is replaced by its real cost, so the next call is admitted against real usage.

Until a model's first call has answered there is nothing to correct its estimate with, and an
endpoint that counts four times our estimate would have `concurrency` calls admitted at a
quarter of their cost: so a budgeted run sends a model's first call alone, and the rest once it
has answered. After that a run passes its budget only by what the calls in flight cost beyond
their reservations:

    spent <= budget + (calls in flight) x (the most one call costs)

and by less the steadier the records' token counts are (none when every call costs what its
reservation said).

One `Budget` serves a whole run: the transform and the LLM judges reserve from the same one.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

from core.errors import BudgetExceeded
from core.llm.pricing import Pricing

# What a call without max_tokens is assumed to answer at most, for the reservation.
DEFAULT_OUTPUT_CEILING = 4096


class Calibration:
    """Per model, the prompt tokens answered calls reported per token estimated, and the
    longest answer seen: what corrects the next call's estimate.

    The ratio is the run's aggregate (records differ; an outlier moves it little), never below
    1: an estimate that proved generous is kept, since a budget errs on the side of stopping.
    """

    def __init__(self) -> None:
        self._estimated: dict[str, int] = {}
        self._reported: dict[str, int] = {}
        self._longest_answer: dict[str, int] = {}

    def known(self, model: str) -> bool:
        return model in self._estimated

    def ratio(self, model: str) -> float:
        estimated = self._estimated.get(model)
        if not estimated:
            return 1.0
        return max(1.0, self._reported[model] / estimated)

    def learn(self, model: str, estimated_input: int, input_tokens: int, output_tokens: int) -> None:
        self._estimated[model] = self._estimated.get(model, 0) + max(1, estimated_input)
        self._reported[model] = self._reported.get(model, 0) + max(0, input_tokens)
        self._longest_answer[model] = max(self._longest_answer.get(model, 0), output_tokens)

    def correct(self, model: str, input_tokens: int, output_tokens: int) -> tuple[int, int]:
        """(input, output) tokens to reserve for a call estimated at these."""
        return (math.ceil(input_tokens * self.ratio(model)),
                max(output_tokens, self._longest_answer.get(model, 0)))


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
        self.calibration = Calibration()
        # Per model, set once its first call in flight ends (see `first_call`).
        self._first_calls: dict[str, asyncio.Event] = {}

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
        input_tokens, output_tokens = self.calibration.correct(model, input_tokens, output_tokens)
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

    def check(self, model: str, input_tokens: int, output_tokens: int, *,
              provider: str | None = None, base_url: str | None = None) -> None:
        """Refuse now, before any wait, a call that could not be afforded if it were sent now
        (the same test as `reserve`, without reserving)."""
        self.settle(self.reserve(model, input_tokens, output_tokens, provider=provider,
                                 base_url=base_url), None)

    async def first_call(self, model: str, *, provider: str | None = None,
                         base_url: str | None = None) -> bool:
        """Wait while the model's first call is in flight; True when this call is the first
        (it must then call `first_call_ended` once it has ended, however it ended). Only a
        budget that holds the model's price waits: elsewhere nothing depends on the estimate."""
        if self.max_cost_usd is None or self.exceeded is not None or \
                not self.pricing.known(model, provider=provider, base_url=base_url):
            return False
        while not self.calibration.known(model):
            pending = self._first_calls.get(model)
            if pending is None:
                self._first_calls[model] = asyncio.Event()
                return True
            await pending.wait()
            if self.exceeded is not None:
                return False
        return False

    def first_call_ended(self, model: str) -> None:
        """The first call ended: answered (the calibration knows the model now, the others
        go), or not (the next waiting call goes first instead)."""
        pending = self._first_calls.pop(model, None)
        if pending is not None:
            pending.set()

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
