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


# ---------------------------------------------------------------- monitoring and shards

GROUP = "nightly-2026-03-02"
# (shard index, minutes after T0 + 10 h, status, extracted, loaded, quarantined, cost, p95)
SHARDS = [
    (0, 0, "success", 40, 37, 3, 0.0021, 0.90),
    (1, 0, "success", 40, 36, 4, 0.0022, 0.94),
    (2, 1, "failed", 12, 0, 0, 0.0004, None),  # failed; retried below
    (3, 1, "success", 40, 38, 2, 0.0020, 0.87),
    (2, 30, "success", 40, 35, 5, 0.0023, 0.99),
]


def shard_run_id(n: int) -> str:
    return f"{(T0 + timedelta(hours=10, minutes=SHARDS[n][1])):%Y%m%d-%H%M%S}-{0xa0 + n:06x}"


def judged_twice(ordinal: int, review: tuple, grounded: bool) -> RecordResult:
    """A quarantined result scored by two LLM judges: the seed's `judged` and `grounded`."""
    result = quarantined_result(ordinal, review)
    if result.scores:
        result.scores.append(Score(
            evaluator="grounded", type="groundedness", value=1.0 if grounded else 0.5,
            passed=grounded, threshold=0.8, confidence=0.9,
            explanation="2 of 2 statements grounded" if grounded else
            "1 of 2 statements grounded; not grounded: the basket is small",
            details={"grounded": ["works as described"],
                     "ungrounded": [] if grounded else ["the basket is small"]}))
    return result


async def seed_monitoring(store: Store, ids: list[str]) -> list[str]:
    """On top of `seed_history`: a shard group of four customer_sentiment shards (shard 2
    failed once, then ran again), monitoring alerts on a few runs (one acknowledged), and
    people's decisions on quarantined records scored by two LLM judges. Returns the shard
    run ids."""
    from core.sharding import Shard

    shard_ids = []
    for n, (index, minutes, status, extracted, loaded, quarantined, cost, p95) in enumerate(SHARDS):
        rid = shard_run_id(n)
        shard_ids.append(rid)
        await store.start_run(RunStart(
            run_id=rid, pipeline="customer_sentiment", pipeline_version="1.0.0",
            pipeline_path="/srv/loom/pipeline.yaml",
            started_at=T0 + timedelta(hours=10, minutes=minutes),
            config={"name": "customer_sentiment"}, model="gpt-4o-mini", provider="openai",
            prompt_hash=content_hash(PROMPT_V2), system_hash=None, context_hashes={},
            params={}, options={}, source="csv://data/reviews.csv",
            destination="postgres://loom@db/shop", shard=Shard(index, 4, GROUP)))
        if quarantined:
            await store.write_results(rid, "customer_sentiment", [
                judged_twice(i, REVIEWS[(i + n) % len(REVIEWS)], grounded=(i + n) % 3 != 0)
                for i in range(min(quarantined, 4))])
        await store.finish_run(RunSummary(
            run_id=rid, pipeline="customer_sentiment", status=status,
            status_reason="provider answered 503 three times" if status == "failed" else None,
            extracted=extracted, loaded=loaded, quarantined=quarantined,
            skipped=extracted - loaded - quarantined, cost_usd=cost,
            cost_by_stage={"transform": cost}, cost_by_model={"gpt-4o-mini": cost},
            input_tokens=extracted * 230, output_tokens=extracted * 30, llm_calls=extracted,
            cache_hits=0, duration_s=11.0 + n, latency_p50_s=0.4 if p95 else None,
            latency_p95_s=p95, latency_p99_s=p95), [])

    # Alerts, as monitoring records them after a run.
    await store.add_alert(pipeline="customer_sentiment", run_id=ids[2], alert_type="rejection_rate",
                          severity="error", message="rejection rate 30.0% is above "
                          "max_rejection_rate 25.0%", threshold_value=0.25, actual_value=0.3)
    await store.add_alert(pipeline="customer_sentiment", run_id=ids[2],
                          alert_type="score_degradation", severity="warning",
                          message="matches_truth: mean score 0.700 is 0.21 below the trailing "
                          "mean 0.910", threshold_value=0.1, actual_value=0.21)
    await store.add_alert(pipeline="customer_sentiment", run_id=ids[8], alert_type="cost_spike",
                          severity="warning", message="cost per record $0.0000525 is 2.1× the "
                          "trailing mean $0.0000250", threshold_value=2.0, actual_value=2.1)
    seen = await store.add_alert(pipeline="ticket_triage", run_id=ids[7], alert_type="latency_sla",
                                 severity="warning", message="p95 latency 1.29 s is above "
                                 "latency_p95_s 1.00 s", threshold_value=1.0, actual_value=1.29)
    await store.acknowledge_alert(seen, by="maria")
    await store.add_alert(pipeline="customer_sentiment", run_id=shard_ids[4],
                          alert_type="latency_sla", severity="warning",
                          message="p95 latency 0.99 s is above latency_p95_s 0.95 s",
                          threshold_value=0.95, actual_value=0.99)

    # People's decisions on the shards' quarantined records, against both judges' verdicts:
    # approve every record but one. `judged` passed them all: it agrees with 9 of the 10 it
    # scored; `grounded` failed a third of them, which people approved: too strict.
    rows = [row for rid in shard_ids for row in await store.list_quarantine(run_id=rid, limit=10)]
    for n, row in enumerate(rows):
        action, status = ("discard", "discarded") if n == 3 else ("approve", "approved")
        await store.resolve_quarantined(row.id, action=action, status=status, actor="maria")
    return shard_ids


def shard_finish_times() -> dict[str, datetime]:
    return {shard_run_id(n): T0 + timedelta(hours=10, minutes=minutes, seconds=11 + n)
            for n, (_, minutes, *_rest) in enumerate(SHARDS)}


def pin_finished_at(times: dict[str, datetime]) -> None:
    """Set when runs ended (the store writes the clock's time; a shard group's wall-clock
    duration is read from it). Run with the store closed."""
    import os

    from sqlalchemy import create_engine, update

    from core.store.models import PipelineRun

    runs = PipelineRun.__table__
    engine = create_engine(f"sqlite:///{Path(os.environ['LOOM_HOME']) / 'loom.db'}")
    try:
        with engine.begin() as conn:
            for run_id, at in times.items():
                conn.execute(update(runs).where(runs.c.run_id == run_id).values(finished_at=at))
    finally:
        engine.dispose()


async def seed_everything() -> tuple[list[str], list[str]]:
    """`seed_history` and `seed_monitoring` in the test's LOOM_HOME, with fixed end times."""
    async with await Store.open() as store:
        ids = await seed_history(store)
        shard_ids = await seed_monitoring(store, ids)
    pin_finished_at(shard_finish_times())
    return ids, shard_ids
