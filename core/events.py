"""The typed events a run emits: the one contract the store, the reporter and the TUI read.

The engine never prints and never touches a UI. It emits these; consumers decide what to show.
`RecordFinished` comes once per record; `Progress` is a coalesced snapshot the engine emits a few
times a second, so a UI never has to redraw per record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from core.records import RecordResult, TokenTotals
from core.run_status import RunStatus as RunStatus  # named here too, where it always was


EXIT_CODES = {RunStatus.SUCCESS: 0, RunStatus.FAILED: 1, RunStatus.CANCELLED: 1,
              RunStatus.PARTIAL: 3}


@dataclass(frozen=True, slots=True)
class Event:
    run_id: str


@dataclass(frozen=True, slots=True)
class RunStarted(Event):
    pipeline: str
    pipeline_path: str
    started_at: datetime
    model: str
    provider: str
    prompt_hash: str
    source: str
    destination: str
    budget_usd: float | None


@dataclass(frozen=True, slots=True)
class RunResumed(Event):
    """A resumed run (`loom --run … --resume`) found what its earlier attempts finished."""

    attempt: int  # 2 for the first resume
    loaded: int  # records already at the destination
    quarantined: int
    from_store: int  # passed before, to be loaded now from their stored output: no call
    to_process: int  # recorded as skipped without an answer: processed now (as are records the
                     # store has no row for: in flight at the crash, or never reached)
    rewritten: int = 0  # loaded before, written again because the destination is rebuilt


@dataclass(frozen=True, slots=True)
class RecordsExtracted(Event):
    count: int  # in this batch
    total: int  # so far


@dataclass(frozen=True, slots=True)
class RecordFinished(Event):
    result: RecordResult


@dataclass(frozen=True, slots=True)
class BatchLoaded(Event):
    count: int
    total: int


@dataclass(frozen=True, slots=True)
class RunWarning(Event):
    message: str


@dataclass(frozen=True, slots=True)
class Progress(Event):
    """A snapshot of the run so far; replaces any earlier one."""

    extracted: int
    transformed: int
    evaluated: int
    loaded: int
    quarantined: int
    skipped: int
    in_flight: int
    elapsed_s: float
    records_per_s: float
    cost_usd: float | None
    budget_usd: float | None
    input_tokens: int
    output_tokens: int
    llm_calls: int
    cache_hits: int
    latency_p50_s: float | None
    latency_p95_s: float | None
    concurrency: int
    recent_errors: tuple[str, ...] = ()
    total_hint: int | None = None  # records the source will yield, when it knows
    # The run is waiting (rate limits: a 429's Retry-After, a reset header): how much longer,
    # and why. None while it is not; the progress line shows it.
    waiting_s: float | None = None
    waiting_reason: str | None = None
    # Of input_tokens: provider prompt-cache reads and writes; of output_tokens: reasoning.
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    prompt_cache_saved_usd: float = 0.0

    @property
    def tokens(self) -> TokenTotals:
        return TokenTotals(self.input_tokens, self.output_tokens, self.cache_read_tokens,
                           self.cache_write_tokens, self.reasoning_tokens,
                           self.prompt_cache_saved_usd)


@dataclass(frozen=True, slots=True)
class RunSummary:
    run_id: str
    pipeline: str
    status: str
    status_reason: str | None
    extracted: int
    loaded: int
    quarantined: int
    skipped: int
    cost_usd: float | None
    cost_by_stage: dict[str, float | None]
    cost_by_model: dict[str, float | None]
    input_tokens: int
    output_tokens: int
    llm_calls: int
    cache_hits: int
    duration_s: float
    latency_p50_s: float | None
    latency_p95_s: float | None
    latency_p99_s: float | None
    warnings: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)
    # How the LLM limits behaved: requests in flight as configured, the lowest the adaptive
    # limit went (it halves on 429) and where it ended; 429 answers; retries of any kind.
    concurrency: int | None = None
    concurrency_min: int | None = None
    concurrency_final: int | None = None
    throttled: int = 0
    retries: int = 0
    budget_usd: float | None = None
    # Of input_tokens: read from and written to the provider's prompt cache; of output_tokens:
    # spent on reasoning. `savings_usd`: what each cost lever saved, by lever
    # ({"prompt_cache": 0.0123}; later levers add their own key).
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    savings_usd: dict[str, float] = field(default_factory=dict)
    # Of llm_calls (every call the run made, across its attempts): the ones this attempt made,
    # and the ones made twice because a crash cut them off in flight (sent, never answered).
    calls_this_attempt: int | None = None
    calls_repeated: int = 0

    @property
    def tokens(self) -> TokenTotals:
        return TokenTotals(self.input_tokens, self.output_tokens, self.cache_read_tokens,
                           self.cache_write_tokens, self.reasoning_tokens,
                           self.savings_usd.get("prompt_cache", 0.0))

    @property
    def cost_saved_usd(self) -> float | None:
        """All levers' savings together; None when no lever was at work."""
        return round(sum(self.savings_usd.values()), 6) if self.savings_usd else None

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.status, 1)

    @property
    def rejection_rate(self) -> float:
        # Records a held run kept back (extra "held") passed the gate: they count as passed.
        processed = self.loaded + self.quarantined + int(self.extra.get("held") or 0)
        return self.quarantined / processed if processed else 0.0

    def to_json(self) -> dict[str, Any]:
        """The `--json` summary, shaped as DESIGN.md promises."""
        return {
            "run_id": self.run_id,
            "status": self.status,
            "records": {"extracted": self.extracted, "loaded": self.loaded,
                        "quarantined": self.quarantined, "skipped": self.skipped},
            "cost_usd": self.cost_usd,
            "cost_by_stage": dict(self.cost_by_stage),  # transform apart from evaluate (judges)
            "tokens": {"input": self.input_tokens, "output": self.output_tokens,
                       "cache_read": self.cache_read_tokens,
                       "cache_write": self.cache_write_tokens,
                       "reasoning": self.reasoning_tokens},
            "cost_saved_usd": self.cost_saved_usd,
            "savings_usd": dict(self.savings_usd),
            "duration_s": round(self.duration_s, 3),
            "latency_s": {"p50": self.latency_p50_s, "p95": self.latency_p95_s,
                          "p99": self.latency_p99_s},
            "status_reason": self.status_reason,
            "cost_by_model": self.cost_by_model,
            "llm": {"calls": self.llm_calls,
                    "calls_this_attempt": (self.llm_calls if self.calls_this_attempt is None
                                           else self.calls_this_attempt),
                    "calls_repeated": self.calls_repeated, "cache_hits": self.cache_hits,
                    "retries": self.retries, "throttled": self.throttled,
                    "concurrency": {"configured": self.concurrency, "min": self.concurrency_min,
                                    "final": self.concurrency_final}},
            "budget_usd": self.budget_usd,
            **self.extra,
        }


@dataclass(frozen=True, slots=True)
class RunFinished(Event):
    summary: RunSummary


# The `--json` summary's fields (RunSummary.to_json() and the keys the engine adds to `extra`),
# documented here beside the code that writes them: tools/generate_references.py writes
# docs/reference/json-output.md from this, and a test fails when a key is written and not listed
# here (or listed and never written). A key ending in [] describes each element of a list.
SUMMARY_FIELDS: dict[str, str] = {
    "run_id": "The run's id (a unique prefix is enough for every command that takes one).",
    "status": "success, partial, failed or cancelled.",
    "records": "The run's records; extracted = loaded + quarantined + skipped.",
    "records.extracted": "Records read from the source (a shard run: its shard's records).",
    "records.loaded": "Records written to the destination.",
    "records.quarantined": "Records that failed a stage and wait in the quarantine.",
    "records.skipped": "Records not processed to the end (a stop, a budget, a provider that kept "
                       "failing, a held replace run's passing records); `--resume` processes them.",
    "cost_usd": "What the run cost in USD; null when a model it called has no known price.",
    "cost_by_stage": "Cost by stage: `transform`, and `evaluate` for what the LLM judges cost.",
    "tokens": "Tokens over every call of the run.",
    "tokens.input": "Input tokens: the whole prompt.",
    "tokens.output": "Output tokens.",
    "tokens.cache_read": "Of input: read from the provider's prompt cache.",
    "tokens.cache_write": "Of input: written to the provider's prompt cache.",
    "tokens.reasoning": "Of output: spent on reasoning.",
    "cost_saved_usd": "What the cost levers saved together; null when none was at work.",
    "savings_usd": "What each cost lever saved, by lever (`prompt_cache`).",
    "duration_s": "Wall-clock seconds.",
    "latency_s": "Per-call latency quantiles in seconds (null when no call was made).",
    "latency_s.p50": "Median.",
    "latency_s.p95": "95th percentile.",
    "latency_s.p99": "99th percentile.",
    "status_reason": "Why the run ended as it did (a budget, the rejection rate, a failure); null "
                     "for a plain success.",
    "cost_by_model": "Cost by model name.",
    "llm": "How the model calls went.",
    "llm.calls": "Every call the run made, across a resume's attempts.",
    "llm.calls_this_attempt": "The calls this process made.",
    "llm.calls_repeated": "Calls made twice: in flight when an earlier attempt died (one still "
                          "connecting at a kill never reached the provider and is not counted).",
    "llm.cache_hits": "Answers taken from Loom's response cache, no call made.",
    "llm.retries": "Retries of any kind (timeouts, 5xx, connection errors, malformed bodies).",
    "llm.throttled": "429 answers.",
    "llm.concurrency": "Requests in flight.",
    "llm.concurrency.configured": "As `transform.concurrency` says.",
    "llm.concurrency.min": "The lowest the adaptive limit went (it halves on a 429).",
    "llm.concurrency.final": "Where it ended.",
    "budget_usd": "`budget.max_cost_usd`, or null.",
    "alerts": "The run's monitoring alerts (an empty list when there are none).",
    "alerts[].id": "The alert's id in the store.",
    "alerts[].type": "score_degradation, cost_spike, latency_sla or rejection_rate.",
    "alerts[].severity": "warning or error.",
    "alerts[].message": "What was found, in one line.",
    "alerts[].threshold": "The configured bound.",
    "alerts[].actual": "The value the run had.",
    "alerts[].details": "The numbers behind the check.",
    "alerts[].notified": "Whether the alert was posted (monitoring.notify).",
    "shard": "Only for a shard run (`--shard I/N`).",
    "shard.index": "I, numbered from 0.",
    "shard.count": "N.",
    "shard.group": "The shard group's id (`--shard-group`).",
    "attempts": "Only for a resumed run: how many starts it took.",
    "duplicate_ids": "Only when the source had them: records whose id an earlier record had.",
    "held": "Only for a replace run that ended partial: passing records kept back for "
            "`loom release RUN_ID`.",
    "calls_repeated": "Only when an attempt died with calls in flight: as `llm.calls_repeated`.",
    "calls_abandoned": "Only when the run stopped with calls in flight (its breaker, a cancel): "
                       "those calls, counted in `llm.calls`; a `--resume` makes them again and "
                       "counts them in `llm.calls_repeated`.",
}
