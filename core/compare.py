"""Side-by-side comparisons the workbench shows: a prompt against its previous version on the
same sample records, and two runs' configuration and results.

Plain data out: the workbench formats it, and a command line could print the same rows.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from core.records import Outcome, RecordResult


@dataclass(frozen=True)
class VerdictChange:
    """One sample record judged under two versions of a prompt."""

    record_id: str
    before: bool  # passed the gate under the previous version
    after: bool
    before_reason: str | None
    after_reason: str | None

    @property
    def changed(self) -> bool:
        return self.before != self.after

    @property
    def label(self) -> str:
        return f"{_word(self.before)}→{_word(self.after)}"


@dataclass(frozen=True)
class PromptComparison:
    """The prompt A/B: which sample records changed verdict between two versions."""

    before_hash: str
    after_hash: str
    rows: tuple[VerdictChange, ...]
    before_results: tuple[RecordResult, ...] = ()
    after_results: tuple[RecordResult, ...] = ()

    @property
    def changed(self) -> list[VerdictChange]:
        return [row for row in self.rows if row.changed]

    @property
    def fixed(self) -> int:
        return sum(1 for row in self.rows if not row.before and row.after)

    @property
    def broken(self) -> int:
        return sum(1 for row in self.rows if row.before and not row.after)


def _word(passed: bool) -> str:
    return "pass" if passed else "fail"


def passed(result: RecordResult) -> bool:
    """Passed the gate (a sample result is never loaded, so LOADED means "would load")."""
    return result.outcome is Outcome.LOADED


def compare_verdicts(before: Sequence[RecordResult], after: Sequence[RecordResult], *,
                     before_hash: str, after_hash: str) -> PromptComparison:
    """Pair results by record id, in the order of `after`."""
    earlier = {result.record.id: result for result in before}
    rows = []
    for result in after:
        old = earlier.get(result.record.id)
        if old is None:
            continue
        rows.append(VerdictChange(result.record.id, passed(old), passed(result),
                                  None if passed(old) else old.reason,
                                  None if passed(result) else result.reason))
    return PromptComparison(before_hash, after_hash, tuple(rows), tuple(before), tuple(after))


# ---------------------------------------------------------------- two runs


@dataclass(frozen=True)
class ComparedValue:
    """One line of a two-run comparison. `kind` says how to show the values:
    text | count | money | seconds | percent | hash."""

    label: str
    a: Any
    b: Any
    kind: str = "text"

    @property
    def differs(self) -> bool:
        return bool(self.a != self.b)


@dataclass(frozen=True)
class RunComparison:
    run_a: Any  # PipelineRun
    run_b: Any
    config: tuple[ComparedValue, ...]
    results: tuple[ComparedValue, ...]
    evaluators: tuple[ComparedValue, ...]  # pass rate per evaluator
    prompt_diff: tuple[str, ...]  # unified diff of the two prompts, when both are stored


def compare_runs(a: Any, b: Any, *, evaluators_a: Sequence[Any], evaluators_b: Sequence[Any],
                 prompt_a: str | None, prompt_b: str | None) -> RunComparison:
    """Compare two stored runs (PipelineRun rows, EvaluationResult rows, prompt texts)."""
    def transform(run: Any, key: str) -> Any:
        section = (run.config or {}).get("transform") or {}
        return section.get(key) if isinstance(section, dict) else None

    config = [
        ComparedValue("pipeline", a.pipeline_name, b.pipeline_name),
        ComparedValue("version", a.pipeline_version, b.pipeline_version),
        ComparedValue("provider", a.provider, b.provider),
        ComparedValue("model", a.model, b.model),
        ComparedValue("temperature", transform(a, "temperature"), transform(b, "temperature")),
        ComparedValue("max tokens", transform(a, "max_tokens"), transform(b, "max_tokens")),
        ComparedValue("prompt", a.prompt_hash, b.prompt_hash, "hash"),
        ComparedValue("system prompt", a.system_hash, b.system_hash, "hash"),
    ]
    for name in sorted(set(a.context_hashes or {}) | set(b.context_hashes or {})):
        config.append(ComparedValue(f"context {name}", (a.context_hashes or {}).get(name),
                                    (b.context_hashes or {}).get(name), "hash"))
    for name in sorted(set(a.params or {}) | set(b.params or {})):
        config.append(ComparedValue(f"params.{name}", (a.params or {}).get(name),
                                    (b.params or {}).get(name)))
    config += [
        ComparedValue("source", a.source, b.source),
        ComparedValue("destination", a.destination, b.destination),
    ]
    results = (
        ComparedValue("status", a.status, b.status),
        ComparedValue("extracted", a.extracted, b.extracted, "count"),
        ComparedValue("loaded", a.loaded, b.loaded, "count"),
        ComparedValue("quarantined", a.quarantined, b.quarantined, "count"),
        ComparedValue("skipped", a.skipped, b.skipped, "count"),
        ComparedValue("rejection rate", rejection_rate(a), rejection_rate(b), "percent"),
        ComparedValue("cost", a.cost_usd, b.cost_usd, "money"),
        ComparedValue("tokens in", a.input_tokens, b.input_tokens, "count"),
        ComparedValue("tokens out", a.output_tokens, b.output_tokens, "count"),
        ComparedValue("LLM calls", a.llm_calls, b.llm_calls, "count"),
        ComparedValue("cache hits", a.cache_hits, b.cache_hits, "count"),
        ComparedValue("duration", a.duration_s, b.duration_s, "seconds"),
        ComparedValue("latency p50", a.latency_p50_s, b.latency_p50_s, "seconds"),
        ComparedValue("latency p95", a.latency_p95_s, b.latency_p95_s, "seconds"),
        ComparedValue("latency p99", a.latency_p99_s, b.latency_p99_s, "seconds"),
    )
    rates_a = {e.evaluator: e.pass_rate for e in evaluators_a}
    rates_b = {e.evaluator: e.pass_rate for e in evaluators_b}
    evaluators = tuple(ComparedValue(name, rates_a.get(name), rates_b.get(name), "percent")
                       for name in dict.fromkeys([*rates_a, *rates_b]))
    diff: tuple[str, ...] = ()
    if prompt_a is not None and prompt_b is not None and prompt_a != prompt_b:
        diff = tuple(line.rstrip("\n") for line in difflib.unified_diff(
            prompt_a.splitlines(), prompt_b.splitlines(), fromfile=f"prompt {a.run_id}",
            tofile=f"prompt {b.run_id}", lineterm="", n=1))
    return RunComparison(a, b, tuple(config), results, evaluators, diff)


def rejection_rate(run: Any) -> float | None:
    processed = (run.loaded or 0) + (run.quarantined or 0)
    return (run.quarantined or 0) / processed if processed else None
