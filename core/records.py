"""The data that flows through a run: records, LLM calls, transform results, scores, verdicts.

Plain slotted dataclasses: a run creates several of these per record, so they stay cheap.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Stage(str, enum.Enum):
    """Where a record stopped when it did not load."""

    EXTRACT = "extract"
    TRANSFORM = "transform"
    EVALUATE = "evaluate"
    LOAD = "load"

    def __str__(self) -> str:
        return self.value


class Outcome(str, enum.Enum):
    """Where a record ended. Every record ends in exactly one of these."""

    LOADED = "loaded"
    QUARANTINED = "quarantined"
    SKIPPED = "skipped"

    def __str__(self) -> str:
        return self.value


@dataclass(slots=True)
class Record:
    """One extracted row. `data` is the row as the source gave it."""

    id: str
    data: dict[str, Any]
    ordinal: int
    # Where the row came from, for messages ("reviews.csv:17", "s3://b/k.jsonl:3").
    origin: str | None = None
    # A row the source could not parse: it goes straight to quarantine at stage `extract`.
    extract_error: str | None = None


@dataclass(slots=True)
class LLMCall:
    """One request to a model, as it is accounted for: tokens, cost, latency."""

    stage: str  # "transform" or "evaluate"
    provider: str
    model: str
    input_tokens: int = 0  # the whole prompt, cached parts included
    output_tokens: int = 0  # reasoning included
    cached_tokens: int = 0  # of input: read from the provider's prompt cache
    cost_usd: float | None = 0.0  # None: the model has no known price
    latency_s: float = 0.0
    cached: bool = False  # answered from Loom's response cache: no call was made
    attempts: int = 1
    # What the answer cost when it was first made, cached or not: a cache hit has no tokens and
    # no cost above, and its original usage here (cost projections count answers at full price).
    list_input_tokens: int = 0
    list_output_tokens: int = 0
    list_cost_usd: float | None = 0.0
    # Of input: written to the provider's prompt cache (5-minute and 1-hour writes).
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    reasoning_tokens: int = 0  # of output
    # Where cost_usd came from: "override" (transform.price, ~/.loom/config.yaml pricing:),
    # "genai-prices" (the price data), "gateway" (the response's own reported cost, used when
    # no price is known), None (unknown, or no call was billed).
    cost_source: str | None = None
    reported_cost_usd: float | None = None  # what a gateway said the call cost, kept beside ours
    # What provider prompt caching saved on this call, in USD (negative when a cache write was
    # not read back); None when the price is unknown.
    prompt_cache_saved_usd: float | None = 0.0
    # Made by an earlier attempt of this run, which was killed before it checkpointed the
    # answer: taken from the run's journal (core.llm.answer_journal), paid for then, not now.
    replayed: bool = False

    @property
    def cache_read_tokens(self) -> int:
        return self.cached_tokens

    @property
    def cache_written_tokens(self) -> int:
        """Cache writes of both lifetimes."""
        return self.cache_write_tokens + self.cache_write_1h_tokens

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage, "provider": self.provider, "model": self.model,
            "input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
            "cached_tokens": self.cached_tokens, "cache_write_tokens": self.cache_write_tokens,
            "cache_write_1h_tokens": self.cache_write_1h_tokens,
            "reasoning_tokens": self.reasoning_tokens, "cost_usd": self.cost_usd,
            "cost_source": self.cost_source, "reported_cost_usd": self.reported_cost_usd,
            "prompt_cache_saved_usd": self.prompt_cache_saved_usd,
            "latency_s": self.latency_s, "cached": self.cached, "attempts": self.attempts,
        }


@dataclass(frozen=True, slots=True)
class TokenTotals:
    """Tokens of some calls summed: prompt (cache reads and writes are parts of it), output
    (reasoning is part of it); and what prompt caching saved."""

    input: int = 0
    output: int = 0
    cache_read: int = 0
    cache_write: int = 0
    reasoning: int = 0
    prompt_cache_saved_usd: float = 0.0

    @classmethod
    def of(cls, calls: "list[LLMCall] | tuple[LLMCall, ...]") -> "TokenTotals":
        totals = cls()
        for call in calls:
            totals = totals.add(call)
        return totals

    def add(self, call: LLMCall) -> "TokenTotals":
        return TokenTotals(self.input + call.input_tokens, self.output + call.output_tokens,
                           self.cache_read + call.cached_tokens,
                           self.cache_write + call.cache_written_tokens,
                           self.reasoning + call.reasoning_tokens,
                           self.prompt_cache_saved_usd + (call.prompt_cache_saved_usd or 0.0))

    def to_json(self) -> dict[str, int]:
        return {"input": self.input, "output": self.output, "cache_read": self.cache_read,
                "cache_write": self.cache_write, "reasoning": self.reasoning}

    def describe(self, sep: str = ", ") -> str:
        """`9,201 in (6,000 cache read, 1,024 written), 1,199 out (300 reasoning)`."""
        cached = [f"{n:,} {what}" for n, what in ((self.cache_read, "cache read"),
                                                  (self.cache_write, "written")) if n]
        text = f"{self.input:,} in" + (f" ({', '.join(cached)})" if cached else "")
        text += f"{sep}{self.output:,} out"
        return text + (f" ({self.reasoning:,} reasoning)" if self.reasoning else "")


def saved_text(amount: float | None) -> str:
    """What a saving reads as: `$0.012345 saved`, `$0.000120 more` (a write never read back)."""
    if amount is None:
        return "-"
    return f"${amount:.6f} saved" if amount >= 0 else f"${-amount:.6f} more"


def sum_costs(costs: list[float | None]) -> float | None:
    """Total of known costs; None when any part is unknown (never a made-up price)."""
    total = 0.0
    for cost in costs:
        if cost is None:
            return None
        total += cost
    return total


@dataclass(slots=True)
class TransformResult:
    """What the transform stage produced for one record."""

    output: Any  # parsed JSON when the pipeline asks for JSON, else {"text": ...}
    raw_text: str
    messages: list[dict[str, str]]
    calls: list[LLMCall] = field(default_factory=list)

    @property
    def input_tokens(self) -> int:
        return sum(c.input_tokens for c in self.calls)

    @property
    def output_tokens(self) -> int:
        return sum(c.output_tokens for c in self.calls)

    @property
    def cost_usd(self) -> float | None:
        return sum_costs([c.cost_usd for c in self.calls])

    @property
    def latency_s(self) -> float:
        return sum(c.latency_s for c in self.calls)

    @property
    def cached(self) -> bool:
        return bool(self.calls) and all(c.cached for c in self.calls)


@dataclass(slots=True)
class Score:
    """One evaluator's judgement of one record. `value` is in [0, 1]."""

    evaluator: str
    type: str
    value: float
    passed: bool
    threshold: float
    weight: float = 1.0
    explanation: str = ""
    confidence: float | None = None
    details: dict[str, Any] | None = None
    calls: list[LLMCall] = field(default_factory=list)
    error: str | None = None  # the evaluator could not score: the record is quarantined

    @property
    def cost_usd(self) -> float | None:
        return sum_costs([c.cost_usd for c in self.calls])

    @property
    def latency_s(self) -> float:
        return sum(c.latency_s for c in self.calls)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "evaluator": self.evaluator, "type": self.type, "value": self.value,
            "passed": self.passed, "threshold": self.threshold, "weight": self.weight,
            "explanation": self.explanation,
        }
        if self.confidence is not None:
            data["confidence"] = self.confidence
        if self.details:
            data["details"] = self.details
        if self.calls:
            data["cost_usd"] = self.cost_usd
            data["latency_s"] = self.latency_s
        if self.error:
            data["error"] = self.error
        return data


@dataclass(slots=True)
class Verdict:
    """The quality gate's decision for one record."""

    passed: bool
    gate: str
    value: float  # share passed, or the weighted score
    threshold: float | None
    reason: str  # one line: which evaluators failed and by how much

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "gate": self.gate, "value": self.value,
                "threshold": self.threshold, "reason": self.reason}


@dataclass(slots=True)
class RecordResult:
    """Where one record ended, and everything known about how it got there."""

    record: Record
    outcome: Outcome
    stage: Stage | None = None  # the stage that stopped it (quarantined or skipped)
    reason: str | None = None
    error_type: str | None = None
    transform: TransformResult | None = None
    scores: list[Score] = field(default_factory=list)
    verdict: Verdict | None = None

    @property
    def output(self) -> Any:
        return self.transform.output if self.transform else None

    @property
    def calls(self) -> list[LLMCall]:
        calls = list(self.transform.calls) if self.transform else []
        for score in self.scores:
            calls.extend(score.calls)
        return calls

    @property
    def tokens(self) -> TokenTotals:
        """Every call's tokens for this record (transform and judges), and the caching saved."""
        return TokenTotals.of(self.calls)


_MISSING = object()


def resolve_field(path: str, input_data: Any, output: Any) -> Any:
    """Resolve a dotted path rooted at `input` or `output` ("output.labels.0").

    Raises KeyError naming the first missing part.
    """
    head, _, rest = path.partition(".")
    if head == "input":
        value = input_data
    elif head == "output":
        value = output
    else:
        raise KeyError(f"{path}: fields start with input. or output.")
    if not rest:
        return value
    walked = head
    for part in rest.split("."):
        walked = f"{walked}.{part}"
        if isinstance(value, dict):
            value = value.get(part, _MISSING)
        elif isinstance(value, list) and part.lstrip("-").isdigit():
            index = int(part)
            value = value[index] if -len(value) <= index < len(value) else _MISSING
        else:
            value = _MISSING
        if value is _MISSING:
            raise KeyError(f"{walked} is missing")
    return value


@dataclass(slots=True)
class EvaluatorStats:
    """One evaluator's scores over a whole run, as the history keeps them."""

    evaluator: str
    type: str
    threshold: float
    weight: float
    count: int = 0  # records scored (errors included)
    passed: int = 0
    errors: int = 0  # records the evaluator could not score
    mean: float | None = None
    std: float | None = None
    min: float | None = None
    max: float | None = None
    p50: float | None = None
    p95: float | None = None
    cost_usd: float | None = 0.0  # None: a judge model had no known price

    @property
    def pass_rate(self) -> float | None:
        return self.passed / self.count if self.count else None
