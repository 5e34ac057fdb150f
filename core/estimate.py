"""`loom --run PIPELINE --estimate [N]`: what a whole run would cost, from a small sample.

The first N records are transformed and evaluated exactly as a run would (nothing is loaded and
no run is recorded), then their cost, tokens and calls are scaled to the whole source. Answers
the cache already had count at what they cost when they were made, so a projection does not
shrink because the sample was cheap to rerun. The duration is the sample's mean call latency
times the calls, spread over the pipeline's concurrency, and no shorter than its rate limits
allow.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Any

from core.connectors.registry import open_source
from core.credentials import SecretResolver
from core.processing import resolve_secrets
from core.records import Outcome, RecordResult, sum_costs
from core.spec import LoadedSpec

DEFAULT_SAMPLE = 20


@dataclass(frozen=True)
class Estimate:
    pipeline: str
    sample: int  # records processed
    total: int  # records a run would read
    total_exact: bool  # counted, rather than the source's quick count (a CSV's lines...)
    loaded: int  # of the sample: passed the gate
    quarantined: int
    skipped: int
    calls: int  # of the sample, cache hits included
    cache_hits: int
    input_tokens: int  # of the sample, at list (cache hits count their original usage)
    output_tokens: int
    cost_usd: float | None  # of the sample, at list; None when a model has no price
    mean_latency_s: float | None  # of the sample's real calls; None when all were cached
    concurrency: int
    sample_duration_s: float
    projected_calls: int
    projected_input_tokens: int
    projected_output_tokens: int
    projected_cost_usd: float | None
    projected_duration_s: float | None
    warnings: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline, "total_records": self.total,
            "total_records_exact": self.total_exact,
            "sample": {"records": self.sample, "loaded": self.loaded,
                       "quarantined": self.quarantined, "skipped": self.skipped,
                       "calls": self.calls, "cache_hits": self.cache_hits,
                       "tokens": {"input": self.input_tokens, "output": self.output_tokens},
                       "cost_usd": _round(self.cost_usd),
                       "mean_latency_s": _round(self.mean_latency_s, 4),
                       "duration_s": round(self.sample_duration_s, 3)},
            "projected": {"calls": self.projected_calls,
                          "tokens": {"input": self.projected_input_tokens,
                                     "output": self.projected_output_tokens},
                          "cost_usd": _round(self.projected_cost_usd),
                          "duration_s": _round(self.projected_duration_s, 1),
                          "concurrency": self.concurrency},
            "warnings": list(self.warnings),
        }


def _round(value: float | None, digits: int = 6) -> float | None:
    return None if value is None else round(value, digits)


async def count_records(loaded: LoadedSpec, limit: int | None = None) -> tuple[int, bool]:
    """(records a run would read, whether that was counted exactly): the source's own quick
    count when it has one, else counted by reading it through (in batches: nothing is kept)."""
    limit = limit if limit is not None else loaded.spec.extract.limit
    source = open_source(resolve_secrets(loaded, SecretResolver()))
    try:
        hint = None
        with contextlib.suppress(Exception):
            hint = await source.count_hint()
        exact = hint is None
        if hint is None:
            hint = 0
            async for batch in source.batches(limit):
                hint += len(batch)
        return (hint if limit is None else min(hint, limit)), exact
    finally:
        await source.aclose()


def project(loaded: LoadedSpec, results: list[RecordResult], *, total: int,
            duration_s: float, warnings: tuple[str, ...] = (), total_exact: bool = True) -> Estimate:
    """Scale a sample's results to `total` records."""
    spec = loaded.spec
    calls = [call for result in results for call in result.calls]
    real = [call for call in calls if not call.cached]
    sample = len(results)
    scale = total / sample if sample else 0.0
    input_tokens = sum(call.list_input_tokens for call in calls)
    output_tokens = sum(call.list_output_tokens for call in calls)
    cost = sum_costs([call.list_cost_usd for call in calls])
    latency = sum(call.latency_s for call in real) / len(real) if real else None
    projected_calls = math.ceil(len(calls) * scale)
    projected_in = math.ceil(input_tokens * scale)
    projected_out = math.ceil(output_tokens * scale)
    concurrency = spec.transform.concurrency
    duration = None
    if latency is not None:
        duration = projected_calls * latency / concurrency
        rate = spec.transform.rate_limit
        if rate.requests_per_minute:
            duration = max(duration, projected_calls / rate.requests_per_minute * 60)
        if rate.tokens_per_minute:
            duration = max(duration, (projected_in + projected_out) / rate.tokens_per_minute * 60)
    outcomes = [result.outcome for result in results]
    return Estimate(
        pipeline=spec.name, sample=sample, total=total, total_exact=total_exact,
        loaded=outcomes.count(Outcome.LOADED), quarantined=outcomes.count(Outcome.QUARANTINED),
        skipped=outcomes.count(Outcome.SKIPPED), calls=len(calls),
        cache_hits=len(calls) - len(real), input_tokens=input_tokens,
        output_tokens=output_tokens, cost_usd=cost, mean_latency_s=latency,
        concurrency=concurrency, sample_duration_s=duration_s, projected_calls=projected_calls,
        projected_input_tokens=projected_in, projected_output_tokens=projected_out,
        projected_cost_usd=None if cost is None else cost * scale,
        projected_duration_s=duration, warnings=warnings)


async def estimate(workspace: Any, loaded: LoadedSpec, *, sample: int = DEFAULT_SAMPLE,
                   limit: int | None = None, use_cache: bool = True) -> Estimate:
    """Run `sample` records (transform + evaluate, no load, no run recorded) and project.
    `workspace` is a core.api.Workspace."""
    total, exact = await count_records(loaded, limit)
    records = await workspace.preview(loaded, limit=min(sample, total) if total else sample)
    warnings: list[str] = []
    started = time.monotonic()
    results = await workspace.run_sample(loaded, records, use_cache=use_cache,
                                         concurrency=loaded.spec.transform.concurrency,
                                         warnings=warnings)
    return project(loaded, results, total=max(total, len(results)), total_exact=exact,
                   duration_s=time.monotonic() - started, warnings=tuple(dict.fromkeys(warnings)))
