"""Deterministic history for the workbench's tests and snapshots, written through the Store
API: fixed run ids, fixed timestamps, fixed durations — nothing on screen depends on the clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from core.events import RunSummary
from core.prompts import content_hash
from core.records import (EvaluatorStats, LLMCall, Outcome, Record, RecordResult, Score, Stage,
                          TransformResult, Verdict)
from core.store import RunStart, Store

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
PROMPT_V1 = "Classify the review.\n{{ input.text }}\nAnswer with JSON.\n"
PROMPT_V2 = ("Classify the review by sentiment (positive, negative, neutral).\n{{ input.text }}\n"
             "Answer with JSON: sentiment, confidence, summary.\n")
REVIEWS = [
    ("R009", "air fryer", "Works as described. The basket is a bit small for a family of four.",
     "neutral", "positive", "matches_truth 0.00 < 1.00 (expected 'neutral', found 'positive')"),
    ("R015", "toaster", "Very good.", "positive", "positive",
     "summary_length 0.00 < 1.00 (5 chars, below min 10)"),
    ("R030", "coffee maker", "Broke within two weeks, the jug cracked.", "negative", None,
     "output invalid after one repair: not JSON (Expecting value): 'Sentiment: negative.'"),
    ("R037", "kettle", "Fine, boils water, nothing to add really.", "positive", "neutral",
     "matches_truth 0.00 < 1.00 (expected 'positive', found 'neutral')"),
    ("R039", "blender", "Loud, but the smoothies are great.", "positive", "positive",
     "confident 0.00 < 1.00 (0.45 is below min 0.6)"),
]
# (pipeline, status, extracted, loaded, quarantined, skipped, cost, p50, p95, duration, prompt)
RUNS = [
    ("customer_sentiment", "success", 40, 36, 4, 0, 0.0021, 0.41, 0.92, 12.4, PROMPT_V1),
    ("ticket_triage", "success", 120, 118, 2, 0, 0.0117, 0.62, 1.35, 33.0, PROMPT_V1),
    ("customer_sentiment", "partial", 40, 28, 12, 0, 0.0023, 0.44, 1.10, 13.1, PROMPT_V1),
    ("customer_sentiment", "success", 40, 38, 2, 0, 0.0019, 0.39, 0.85, 11.8, PROMPT_V2),
    ("ticket_triage", "failed", 60, 0, 0, 60, 0.0, None, None, 1.2, PROMPT_V1),
    ("customer_sentiment", "cancelled", 40, 14, 1, 25, 0.0008, 0.40, 0.88, 4.9, PROMPT_V2),
    ("customer_sentiment", "success", 40, 37, 3, 0, 0.0020, 0.37, 0.81, 11.2, PROMPT_V2),
    ("ticket_triage", "success", 120, 117, 3, 0, 0.0121, 0.58, 1.29, 31.7, PROMPT_V1),
    ("customer_sentiment", "success", 40, 35, 5, 0, 0.0021, 0.42, 0.95, 12.0, PROMPT_V2),
]


def run_id(n: int) -> str:
    return f"{(T0 + timedelta(hours=n)):%Y%m%d-%H%M%S}-{n:06x}"


def quarantined_result(ordinal: int, review: tuple) -> RecordResult:
    record_id, product, text, expected, label, reason = review
    record = Record(id=record_id, data={"review_id": record_id, "product": product,
                                        "text": text, "expected": expected}, ordinal=ordinal)
    call = LLMCall(stage="transform", provider="openai", model="gpt-4o-mini", input_tokens=220,
                   output_tokens=30, cost_usd=0.000051, latency_s=0.4)
    if label is None:
        transform = TransformResult(output=None, raw_text="Sentiment: negative.",
                                    messages=[{"role": "user", "content": text}], calls=[call])
        return RecordResult(record, Outcome.QUARANTINED, Stage.TRANSFORM, reason,
                            "OutputValidationError", transform=transform)
    output = {"sentiment": label, "confidence": 0.45 if record_id == "R039" else 0.82,
              "summary": "Good." if record_id == "R015" else f"The {product} review, summarised."}
    transform = TransformResult(output=output, raw_text=str(output),
                                messages=[{"role": "user", "content": text}], calls=[call])
    failing = reason.split(" ", 1)[0]
    scores = []
    for name, kind in (("label_ok", "one_of"), ("matches_truth", "exact_match"),
                       ("confident", "range"), ("summary_length", "length")):
        passed = name != failing
        scores.append(Score(evaluator=name, type=kind, value=1.0 if passed else 0.0,
                            passed=passed, threshold=1.0,
                            explanation="ok" if passed else reason.split(" (", 1)[-1].rstrip(")")))
    scores.append(Score(evaluator="judged", type="custom_criteria", value=0.75, passed=True,
                        threshold=0.7, explanation="Mostly accurate; the summary is thin.",
                        confidence=0.8, details={"criteria": [
                            {"criterion": "names the product", "met": True},
                            {"criterion": "says why", "met": False, "reason": "no reason given"}]}))
    verdict = Verdict(passed=False, gate="all_pass", value=0.8, threshold=None,
                      reason=f"all_pass failed: {reason}")
    return RecordResult(record, Outcome.QUARANTINED, Stage.EVALUATE, verdict.reason,
                        "QualityGate", transform=transform, scores=scores, verdict=verdict)


async def seed_history(store: Store, *, pipeline_path: str = "/srv/loom/pipeline.yaml") -> list[str]:
    """Nine finished runs of two pipelines, a few quarantined records each. Returns run ids."""
    for text in (PROMPT_V1, PROMPT_V2):
        await store.save_version("prompt", content_hash(text), text, path="prompts/classify.j2",
                                 pipeline="customer_sentiment")
    ids = []
    for n, (pipeline, status, extracted, loaded, quarantined, skipped, cost, p50, p95,
            duration, prompt) in enumerate(RUNS):
        rid = run_id(n)
        ids.append(rid)
        await store.start_run(RunStart(
            run_id=rid, pipeline=pipeline, pipeline_version="1.0.0", pipeline_path=pipeline_path,
            started_at=T0 + timedelta(hours=n),
            config={"name": pipeline, "transform": {"model": "gpt-4o-mini",
                                                    "temperature": 0 if n < 6 else 0.2}},
            model="gpt-4o-mini", provider="openai", prompt_hash=content_hash(prompt),
            system_hash=None, context_hashes={"taxonomy": "6eea239b44" + "0" * 54},
            params={"product_line": "home appliances"}, options={}, source="csv://data/reviews.csv",
            destination="csv://out/sentiment.csv"))
        if pipeline == "customer_sentiment" and quarantined:
            await store.write_results(rid, pipeline, [
                quarantined_result(i, REVIEWS[(i + n) % len(REVIEWS)])
                for i in range(min(quarantined, 4))])
        await store.finish_run(RunSummary(
            run_id=rid, pipeline=pipeline, status=status,
            status_reason={"partial": "rejection rate 30.0% is above max_rejection_rate 25.0%",
                           "failed": "provider answered 401: invalid API key",
                           "cancelled": "cancelled by the user"}.get(status),
            extracted=extracted, loaded=loaded, quarantined=quarantined, skipped=skipped,
            cost_usd=cost, cost_by_stage={"transform": cost}, cost_by_model={"gpt-4o-mini": cost},
            input_tokens=extracted * 230, output_tokens=extracted * 30, llm_calls=extracted,
            cache_hits=0, duration_s=duration, latency_p50_s=p50, latency_p95_s=p95,
            latency_p99_s=p95), [
            EvaluatorStats(evaluator="matches_truth", type="exact_match", threshold=1.0,
                           weight=1.0, count=extracted, passed=loaded)])
    return ids
