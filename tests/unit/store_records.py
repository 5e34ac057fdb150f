"""What the store tests write: a run's start, records' results, a summary, a progress snapshot."""

from __future__ import annotations

from datetime import UTC, datetime

from core.events import Progress, RunSummary
from core.records import LLMCall, Outcome, Record, RecordResult, Score, Stage, TransformResult, Verdict
from core.store import RunStart

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def run_start(run_id: str = "run-0001", pipeline: str = "sentiment",
              started_at: datetime = T0) -> RunStart:
    return RunStart(
        run_id=run_id, pipeline=pipeline, pipeline_version="1.0.0",
        pipeline_path=f"/pipelines/{pipeline}.yaml", started_at=started_at,
        config={"name": pipeline, "description": "Classify", "transform": {"api_key": "${KEY}"}},
        model="gpt-4o-mini", provider="openai", prompt_hash="a" * 64, system_hash=None,
        context_hashes={"taxonomy": "b" * 64}, params={"since": "2025-01-01"},
        options={"limit": 10}, source="csv://reviews.csv", destination="jsonl://out.jsonl")


def call(stage: str = "transform", cost: float | None = 0.001, cached: bool = False) -> LLMCall:
    return LLMCall(stage=stage, provider="openai", model="gpt-4o-mini", input_tokens=100,
                   output_tokens=20, cost_usd=cost, latency_s=0.5, cached=cached)


def score(evaluator: str, passed: bool) -> Score:
    return Score(evaluator=evaluator, type="one_of", value=1.0 if passed else 0.0, passed=passed,
                 threshold=1.0, explanation="in the list" if passed else "not in the list")


def result(ordinal: int, outcome: Outcome, *, stage: Stage | None = None,
           reason: str | None = None) -> RecordResult:
    record = Record(id=f"rec-{ordinal}", data={"text": f"review {ordinal}", "n": ordinal},
                    ordinal=ordinal)
    label = "positive" if outcome is Outcome.LOADED else "maybe"
    transform = TransformResult(
        output={"sentiment": label}, raw_text=f'{{"sentiment": "{label}"}}',
        messages=[{"role": "user", "content": f"Classify: review {ordinal}"}],
        calls=[call()])
    passed = outcome is Outcome.LOADED
    scores = [score("label_ok", passed), score("judged", True)]
    verdict = Verdict(passed=passed, gate="all_pass", value=1.0 if passed else 0.5,
                      threshold=None, reason="" if passed else "label_ok failed")
    if outcome is Outcome.SKIPPED:
        return RecordResult(record=record, outcome=outcome, stage=Stage.EXTRACT,
                            reason="empty row")
    return RecordResult(record=record, outcome=outcome, stage=stage, reason=reason,
                        transform=transform, scores=scores, verdict=verdict)


def summary(run_id: str = "run-0001", status: str = "partial") -> RunSummary:
    return RunSummary(
        run_id=run_id, pipeline="sentiment", status=status, status_reason="rejection rate 0.4",
        extracted=5, loaded=3, quarantined=2, skipped=0, cost_usd=0.012,
        cost_by_stage={"transform": 0.01, "evaluate": 0.002},
        cost_by_model={"gpt-4o-mini": 0.012}, input_tokens=500, output_tokens=100, llm_calls=5,
        cache_hits=1, duration_s=2.5, latency_p50_s=0.4, latency_p95_s=0.9, latency_p99_s=1.1,
        warnings=("slow provider",), extra={"budget_usd": 5.0})


def progress(**counts: int) -> Progress:
    base = dict(extracted=5, transformed=4, evaluated=3, loaded=2, quarantined=1, skipped=0,
                in_flight=1, elapsed_s=1.5, records_per_s=3.3, cost_usd=0.004, budget_usd=None,
                input_tokens=400, output_tokens=80, llm_calls=4, cache_hits=0,
                latency_p50_s=0.4, latency_p95_s=0.8, concurrency=4)
    base.update(counts)
    return Progress(run_id="run-0001", **base)
