"""The streaming runner: source -> N transform workers -> gate -> sink, events out.

Bounded queues give back-pressure, so memory stays flat whatever the input size. The engine
never prints: it emits events (core.events) to its listeners and writes the history itself,
in batches, so a run is recorded whether or not anybody is watching.

Every extracted record ends in exactly one place — loaded, quarantined or skipped — and the
run's row says so: extracted = loaded + quarantined + skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from core.config import LoomConfig, load_config
from core.connectors.base import Sink, Source, build_row
from core.connectors.registry import open_sink, open_source, redact_uri
from core.credentials import SecretResolver
from core.errors import LoadError, LoomError
from core.events import (BatchLoaded, Event, Progress, RecordFinished, RecordsExtracted,
                         RunFinished, RunStarted, RunStatus, RunSummary, RunWarning)
from core.monitoring import monitor_run
from core.processing import FatalRunError, Runtime
from core.records import EvaluatorStats, Outcome, RecordResult, Stage
from core.sharding import Shard, bind_destination
from core.spec import LoadedSpec, snapshot
from core.stats import Quantiles
from core.store import RunStart, Store

Listener = Callable[[Event], None]

PROGRESS_INTERVAL_S = 0.25  # a few snapshots a second: enough for a live view, cheap for a UI
HEARTBEAT_INTERVAL_S = 2.0
STORE_FLUSH_RECORDS = 500
STORE_FLUSH_S = 1.0
LOAD_FLUSH_S = 1.0


def new_run_id(now: datetime | None = None) -> str:
    """Sortable and readable: 20261126-130501-3f9a2c."""
    now = now or datetime.now(timezone.utc)
    return f"{now:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


@dataclass
class RunOptions:
    limit: int | None = None
    use_cache: bool = True
    record_path: Path | None = None
    run_id: str | None = None
    # Process only the records whose id hashes to this shard (core.sharding); None: all.
    shard: Shard | None = None


class RunController:
    """Lets a caller (ctrl+c, the TUI's cancel) or the run itself (a budget) stop a run cleanly:
    records in flight finish, the rest are skipped with `reason`, what passed is loaded, and
    the run ends with `status`."""

    def __init__(self) -> None:
        self.cancelled = asyncio.Event()  # set when the run should stop, whoever asked
        self.reason = "cancelled"
        self.status: str = RunStatus.CANCELLED

    def cancel(self, reason: str = "cancelled by the user") -> None:
        self.stop(reason, RunStatus.CANCELLED)

    def stop(self, reason: str, status: str) -> None:
        """Stop the run, which ends with `status` (a budget stop: partial)."""
        self.reason = reason
        self.status = status
        self.cancelled.set()


@dataclass
class _Tally:
    """Running totals; turned into Progress snapshots and the final summary."""

    extracted: int = 0
    transformed: int = 0
    evaluated: int = 0
    loaded: int = 0
    quarantined: int = 0
    skipped: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    llm_calls: int = 0
    cache_hits: int = 0
    cost_known: float = 0.0
    cost_unknown: bool = False
    cost_by_stage: dict[str, float | None] = field(default_factory=dict)
    cost_by_model: dict[str, float | None] = field(default_factory=dict)
    latency: Quantiles = field(default_factory=Quantiles)
    evaluators: dict[str, tuple[EvaluatorStats, Quantiles]] = field(default_factory=dict)
    recent_errors: deque[str] = field(default_factory=lambda: deque(maxlen=5))

    @property
    def cost(self) -> float | None:
        return None if self.cost_unknown else self.cost_known

    def count_result(self, result: RecordResult) -> None:
        if result.transform is not None and result.transform.output is not None:
            self.transformed += 1
        if result.scores or result.verdict is not None:
            self.evaluated += 1
        made_calls = False
        for call in result.calls:
            if call.cached:
                self.cache_hits += 1
            else:
                self.llm_calls += 1
                made_calls = True
            self.input_tokens += call.input_tokens
            self.output_tokens += call.output_tokens
            _add(self.cost_by_stage, call.stage, call.cost_usd)
            _add(self.cost_by_model, call.model, call.cost_usd)
            if call.cost_usd is None:
                self.cost_unknown = True
            else:
                self.cost_known += call.cost_usd
        if made_calls and result.transform is not None:
            self.latency.add(result.transform.latency_s)
        for score in result.scores:
            stats, values = self.evaluators[score.evaluator]
            stats.count += 1
            stats.passed += score.passed
            if score.error is None:  # a judge that could not score has no value to count
                values.add(score.value)
            if score.calls:
                cost = score.cost_usd
                stats.cost_usd = None if cost is None or stats.cost_usd is None else stats.cost_usd + cost
        if result.stage is Stage.EVALUATE and result.error_type not in (None, "QualityGate"):
            name = (result.reason or "").split(":", 1)[0]
            if name in self.evaluators:
                self.evaluators[name][0].errors += 1

    def evaluator_stats(self) -> list[EvaluatorStats]:
        out = []
        for stats, values in self.evaluators.values():
            stats.mean, stats.std = values.mean, values.std
            stats.min, stats.max = values.min, values.max
            stats.p50, stats.p95 = values.quantile(0.5), values.quantile(0.95)
            out.append(stats)
        return out


def _add(bucket: dict[str, float | None], key: str, cost: float | None) -> None:
    current = bucket.get(key, 0.0)
    bucket[key] = None if current is None or cost is None else current + cost


class Engine:
    def __init__(self, loaded: LoadedSpec, store: Store, *, options: RunOptions | None = None,
                 config: LoomConfig | None = None, listeners: Iterable[Listener] = (),
                 controller: RunController | None = None) -> None:
        self.options = options or RunOptions()
        # `{shard}` in the destination, and the refusal of one that shards would clobber.
        self.loaded = bind_destination(loaded, self.options.shard)
        self.store = store
        self.config = config or load_config()
        self.listeners = list(listeners)
        self.controller = controller or RunController()
        self.run_id = self.options.run_id or new_run_id()
        self.tally = _Tally()
        self.warnings: list[str] = []
        self.resolver = SecretResolver(on_warning=self._warn, credentials=self.config.credentials)
        self._started = 0.0
        self._in_flight_records: dict[int, Any] = {}
        self._unqueued: deque[Any] = deque()
        self._unfinished: list[RecordResult] = []
        self._total_hint: int | None = None
        self._pending_store: list[RecordResult] = []
        self._last_store_flush = 0.0
        self._stop_reason: str | None = None
        self._stop_status: str | None = None
        self._runtime: Runtime | None = None

    # ------------------------------------------------------------------ events

    def _emit(self, event: Event) -> None:
        for listener in self.listeners:
            listener(event)

    def _warn(self, message: str) -> None:
        message = self.resolver.redact(message)
        if message not in self.warnings:
            self.warnings.append(message)
            self._emit(RunWarning(self.run_id, message))

    def progress(self) -> Progress:
        tally = self.tally
        elapsed = max(time.monotonic() - self._started, 1e-9) if self._started else 0.0
        finished = tally.loaded + tally.quarantined + tally.skipped
        return Progress(
            run_id=self.run_id, extracted=tally.extracted, transformed=tally.transformed,
            evaluated=tally.evaluated, loaded=tally.loaded, quarantined=tally.quarantined,
            skipped=tally.skipped, in_flight=len(self._in_flight_records), elapsed_s=elapsed,
            records_per_s=finished / elapsed if elapsed else 0.0, cost_usd=tally.cost,
            budget_usd=self.loaded.spec.budget.max_cost_usd, input_tokens=tally.input_tokens,
            output_tokens=tally.output_tokens, llm_calls=tally.llm_calls,
            cache_hits=tally.cache_hits, latency_p50_s=tally.latency.quantile(0.5),
            latency_p95_s=tally.latency.quantile(0.95),
            concurrency=self._concurrency(),
            recent_errors=tuple(tally.recent_errors), total_hint=self._total_hint,
        )

    def _concurrency(self) -> int:
        """Requests in flight allowed right now: the adaptive limit, which 429s lower."""
        if self._runtime is not None:
            return self._runtime.client.limits.concurrency.limit
        return self.loaded.spec.transform.concurrency

    # ------------------------------------------------------------------ the run

    async def run(self) -> RunSummary:
        """Run the pipeline to the end. Raises LoomError for errors that prevent a run at all
        (a missing secret, an unreadable prompt); everything after the start is in the summary."""
        spec = self.loaded.spec
        runtime = Runtime.build(
            self.loaded, config=self.config, cache=self.store, use_cache=self.options.use_cache,
            resolver=self.resolver, on_warning=self._warn, record_path=self.options.record_path)
        try:
            return await self._run(runtime)
        finally:
            await runtime.aclose()

    async def _run(self, runtime: Runtime) -> RunSummary:
        spec = self.loaded.spec
        self._runtime = runtime
        prompts = runtime.prompts
        for evaluator in runtime.processor.evaluators:
            self.tally.evaluators[evaluator.name] = (
                EvaluatorStats(evaluator=evaluator.name, type=evaluator.type,
                               threshold=evaluator.threshold, weight=evaluator.weight),
                Quantiles())
        started_at = datetime.now(timezone.utc)
        self._started = time.monotonic()
        await self._record_start(runtime, started_at)
        self._emit(RunStarted(
            run_id=self.run_id, pipeline=spec.name, pipeline_path=str(self.loaded.path),
            started_at=started_at, model=spec.transform.model, provider=spec.transform.provider,
            prompt_hash=prompts.prompt_hash, source=redact_uri(spec.extract.source),
            destination=redact_uri(spec.load.destination), budget_usd=spec.budget.max_cost_usd))

        source: Source | None = None
        sink: Sink | None = None
        status, reason, error = RunStatus.SUCCESS, None, None
        fatal: BaseException | None = None
        try:
            source = open_source(runtime.loaded)
            opening = open_sink(runtime.loaded)
            await opening.open(self.run_id)
            sink = opening  # only a sink that opened is committed or aborted
            with contextlib.suppress(Exception):
                self._total_hint = await source.count_hint()
                if self.options.shard is not None and self.options.shard.count > 1:
                    self._total_hint = None  # the source's count, not this shard's
                if self._total_hint is not None and self.options.limit is not None:
                    self._total_hint = min(self._total_hint, self.options.limit)
            await self._pump(runtime, source, sink)
        except FatalRunError as exc:
            fatal, status, error = exc, RunStatus.FAILED, self.resolver.redact(str(exc))
        except LoomError as exc:
            fatal, status, error = exc, RunStatus.FAILED, self.resolver.redact(str(exc))
        except asyncio.CancelledError:
            status, reason = RunStatus.CANCELLED, "interrupted"
            self.controller.cancel("interrupted")
        finally:
            if source is not None:
                with contextlib.suppress(Exception):
                    await source.aclose()
        if status == RunStatus.SUCCESS and self.controller.cancelled.is_set():
            status, reason = self.controller.status, self.controller.reason
        if status == RunStatus.SUCCESS and self._stop_status:
            status, reason = self._stop_status, self._stop_reason

        # Whatever stopped the run, the records it had read end somewhere.
        await self._skip_unfinished(error or reason or "run stopped")
        if sink is not None:
            status, error = await self._finish_sink(sink, status, error)
        await self._flush_store(force=True)

        if status == RunStatus.SUCCESS:
            limit = spec.evaluate.max_rejection_rate
            processed = self.tally.loaded + self.tally.quarantined
            rate = self.tally.quarantined / processed if processed else 0.0
            if limit is not None and rate > limit:
                status = RunStatus.PARTIAL
                reason = f"rejection rate {rate:.1%} is above max_rejection_rate {limit:.1%}"
        summary = await self._monitor(self._summary(status, reason or error), started_at)
        await self._record_finish(summary, sink)
        self._emit(Progress(**{**_as_dict(self.progress()), "in_flight": 0}))
        self._emit(RunFinished(self.run_id, summary))
        if isinstance(fatal, FatalRunError) and fatal.exit_code == 2:
            # A template the sandbox refused: the user must fix the pipeline (exit 2), and the
            # run is still recorded as failed.
            raise fatal
        return summary

    async def _pump(self, runtime: Runtime, source: Source, sink: Sink) -> None:
        spec = self.loaded.spec
        # More workers than calls in flight: while some render, validate and evaluate, others
        # hold every one of the provider's `concurrency` slots (the client enforces that bound).
        workers_count = max(1, spec.transform.concurrency) + max(2, spec.transform.concurrency // 4)
        work: asyncio.Queue[Any] = asyncio.Queue(maxsize=workers_count * 2)
        done: asyncio.Queue[Any] = asyncio.Queue(maxsize=workers_count * 2 + spec.load.batch_size)
        stop = self.controller.cancelled
        processor = runtime.processor
        in_flight = self._in_flight_records
        budget = runtime.budget
        controller = self.controller

        async def produce() -> None:
            await extract()
            # Only a clean end tells the workers to finish; on a failure they are cancelled.
            for _ in range(workers_count):
                await work.put(None)

        async def extract() -> None:
            limit = self.options.limit if self.options.limit is not None else spec.extract.limit
            shard = self.options.shard
            async for batch in source.batches(limit):
                if shard is not None:
                    # Other shards' records are not this run's: not extracted, not skipped.
                    # The limit counts source rows, so N shards with --limit L together
                    # process exactly the L records an unsharded run would.
                    batch = shard.select(batch)
                    if not batch:
                        continue
                self.tally.extracted += len(batch)
                self._emit(RecordsExtracted(self.run_id, len(batch), self.tally.extracted))
                # Until a record is in the work queue, the producer answers for it: if the run
                # stops here, `_drain` finds it in `_unqueued` and skips it with the reason.
                self._unqueued = deque(batch)
                while self._unqueued:
                    if stop.is_set():
                        # Read but never started: explicitly skipped, never lost.
                        while self._unqueued:
                            await done.put(_skipped(self._unqueued[0], self.controller.reason))
                            self._unqueued.popleft()
                        return
                    await work.put(self._unqueued[0])
                    self._unqueued.popleft()
                if stop.is_set():
                    return

        async def process() -> None:
            while True:
                record = await work.get()
                if record is None:
                    return
                if stop.is_set():
                    await done.put(_skipped(record, self.controller.reason))
                    continue
                in_flight[record.ordinal] = record
                result = await processor.process(record)
                if budget.exceeded is not None and not stop.is_set():
                    # The budget refused a call: stop reading, let the records in flight
                    # finish, load what passed, and end the run partial.
                    controller.stop(budget.exceeded, RunStatus.PARTIAL)
                await done.put(result)
                # Only once the result is queued does the record stop being the worker's.
                del in_flight[record.ordinal]

        async def tick() -> None:
            last_heartbeat = time.monotonic()
            while True:
                await asyncio.sleep(PROGRESS_INTERVAL_S)
                progress = self.progress()
                self._emit(progress)
                if time.monotonic() - last_heartbeat >= HEARTBEAT_INTERVAL_S:
                    last_heartbeat = time.monotonic()
                    with contextlib.suppress(LoomError):
                        await self.store.heartbeat(self.run_id, progress)

        collector = asyncio.create_task(self._collect(done, sink), name="loom-collect")
        ticker = asyncio.create_task(tick(), name="loom-progress")
        workers = [asyncio.create_task(process(), name=f"loom-worker-{i}") for i in range(workers_count)]
        producer = asyncio.create_task(produce(), name="loom-extract")
        stages = [producer, *workers]
        try:
            # The first failure anywhere stops everything; a clean finish drains in order.
            running = {*stages, collector}
            while running - {collector}:
                finished, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in finished:
                    if task.exception() is not None:
                        raise task.exception()  # type: ignore[misc]
                if collector in finished:
                    raise LoomError("the loader stopped before the workers finished")
            await done.put(None)
            await collector
        finally:
            ticker.cancel()
            for task in [*stages, collector]:
                if not task.done():
                    task.cancel()
            await asyncio.gather(ticker, *stages, collector, return_exceptions=True)
            # Records read but not finished when a failure stopped the run: skipped, with why.
            self._drain(work, done)

    def _drain(self, work: asyncio.Queue[Any], done: asyncio.Queue[Any]) -> None:
        leftovers: list[RecordResult] = []
        while not done.empty():
            item = done.get_nowait()
            if item is not None:
                leftovers.append(item)
        unstarted = [*self._in_flight_records.values(), *self._unqueued]
        while not work.empty():
            item = work.get_nowait()
            if item is not None:
                unstarted.append(item)
        leftovers.extend(_skipped(r, "run stopped before this record finished") for r in unstarted)
        self._in_flight_records.clear()
        self._unqueued.clear()
        self._unfinished = leftovers

    async def _collect(self, done: asyncio.Queue[Any], sink: Sink) -> None:
        """Batch passing records into the sink and every result into the store."""
        batch_size = self.loaded.spec.load.batch_size
        to_load: list[RecordResult] = []
        last_load = time.monotonic()
        self._last_store_flush = time.monotonic()
        self._to_load = to_load
        while True:
            try:
                result = await asyncio.wait_for(done.get(), timeout=LOAD_FLUSH_S)
            except asyncio.TimeoutError:
                result = ...
            if result is None:
                break
            if result is not ...:
                if result.outcome is Outcome.LOADED:
                    to_load.append(result)
                else:
                    self._finish_record(result)
            now = time.monotonic()
            if len(to_load) >= batch_size or (to_load and now - last_load >= LOAD_FLUSH_S):
                await self._load(sink, to_load)
                to_load.clear()
                last_load = now
            await self._flush_store()
        if to_load:
            await self._load(sink, to_load)
            to_load.clear()

    async def _load(self, sink: Sink, results: list[RecordResult]) -> None:
        rows = [build_row(self.loaded, r.record, r.output) for r in results]
        try:
            await sink.write(rows)
        except LoadError as exc:
            message = self.resolver.redact(str(exc))
            for result in results:
                result.outcome, result.stage = Outcome.QUARANTINED, Stage.LOAD
                result.reason, result.error_type = message, type(exc).__name__
        for result in results:
            self._finish_record(result)
        if results and results[0].outcome is Outcome.LOADED:
            self._emit(BatchLoaded(self.run_id, len(results), self.tally.loaded))

    def _finish_record(self, result: RecordResult) -> None:
        tally = self.tally
        if result.outcome is Outcome.LOADED:
            tally.loaded += 1
        elif result.outcome is Outcome.QUARANTINED:
            tally.quarantined += 1
            if result.reason:
                result.reason = self.resolver.redact(result.reason)
                tally.recent_errors.append(f"{result.record.id}: {result.reason}"[:300])
        else:
            tally.skipped += 1
        tally.count_result(result)
        self._pending_store.append(result)
        self._emit(RecordFinished(self.run_id, result))

    async def _flush_store(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self._pending_store:
            return
        if not force and len(self._pending_store) < STORE_FLUSH_RECORDS and \
                now - self._last_store_flush < STORE_FLUSH_S:
            return
        batch, self._pending_store = self._pending_store, []
        self._last_store_flush = now
        await self.store.write_results(self.run_id, self.loaded.spec.name, batch)

    async def _skip_unfinished(self, reason: str) -> None:
        """Records read but not finished when the run stopped: skipped, with why."""
        for result in self._unfinished:
            if result.outcome is Outcome.LOADED:
                # Passed the gate but never reached the sink.
                result = _skipped(result.record, f"not loaded: {reason}")
            self._finish_record(result)
        self._unfinished = []
        for result in getattr(self, "_to_load", []):
            self._finish_record(_skipped(result.record, f"not loaded: {reason}"))
        if hasattr(self, "_to_load"):
            self._to_load.clear()

    async def _finish_sink(self, sink: Sink, status: str, error: str | None) -> tuple[str, str | None]:
        """Commit what loaded. A `replace` destination is all or nothing: a run that did not
        succeed leaves it as it was, and its records count as skipped."""
        replace = self.loaded.spec.load.mode == "replace"
        if status in (RunStatus.FAILED, RunStatus.CANCELLED) and replace:
            with contextlib.suppress(Exception):
                await sink.abort()
            await self._flush_store(force=True)
            demoted = await self.store.demote_loaded(
                self.run_id, f"not loaded: replace mode loads all or nothing and the run {status}")
            self.tally.loaded -= demoted
            self.tally.skipped += demoted
            return status, error
        try:
            await sink.commit()
        except LoomError as exc:
            with contextlib.suppress(Exception):
                await sink.abort()
            await self._flush_store(force=True)
            message = self.resolver.redact(
                f"commit to {redact_uri(self.loaded.spec.load.destination)} failed: {exc}")
            demoted = await self.store.demote_loaded(self.run_id, message, quarantine=True)
            self.tally.loaded -= demoted
            self.tally.quarantined += demoted
            return RunStatus.FAILED, message
        return status, error

    # ------------------------------------------------------------------ history

    async def _record_start(self, runtime: Runtime, started_at: datetime) -> None:
        spec = self.loaded.spec
        prompts = runtime.prompts
        await self.store.record_pipeline(spec.name, spec.version, spec.description,
                                         snapshot(self.loaded), str(self.loaded.path))
        await self.store.save_version("prompt", prompts.prompt_hash, prompts.prompt_text,
                                      path=str(prompts.prompt_path), pipeline=spec.name)
        if prompts.system_text is not None and prompts.system_path is not None:
            await self.store.save_version("system", prompts.system_hash or "", prompts.system_text,
                                          path=str(prompts.system_path), pipeline=spec.name)
        for doc in prompts.contexts.values():
            await self.store.save_version("context", doc.hash, doc.text, path=str(doc.path),
                                          pipeline=spec.name, name=doc.name)
        judge_prompts: dict[str, list[str]] = {}
        for evaluator in runtime.processor.evaluators:
            for version in evaluator.prompt_versions():
                await self.store.save_version("judge", version.hash, version.text,
                                              path=version.path, pipeline=spec.name)
                judge_prompts.setdefault(evaluator.name, []).append(version.hash)
        await self.store.start_run(RunStart(
            run_id=self.run_id, pipeline=spec.name, pipeline_version=spec.version,
            pipeline_path=str(self.loaded.path), started_at=started_at, config=snapshot(self.loaded),
            model=spec.transform.model, provider=spec.transform.provider,
            prompt_hash=prompts.prompt_hash, system_hash=prompts.system_hash,
            context_hashes=prompts.context_hashes, params=dict(spec.params),
            options={"limit": self.options.limit, "use_cache": self.options.use_cache,
                     "record": str(self.options.record_path) if self.options.record_path else None,
                     "pid": os.getpid(), "judge_prompts": judge_prompts,
                     **({"shard": self.options.shard.label} if self.options.shard else {})},
            source=redact_uri(spec.extract.source), destination=redact_uri(spec.load.destination),
            shard=self.options.shard))

    async def _monitor(self, summary: RunSummary, started_at: datetime) -> RunSummary:
        """Compare the run with the pipeline's recent runs; the summary gains its alerts (and
        any warning posting them raised). Monitoring never fails a run."""
        alerts: list[Any] = []
        try:
            alerts = await monitor_run(self.store, self.loaded.spec, summary,
                                       self.tally.evaluator_stats(), started_at=started_at,
                                       resolver=self.resolver, on_warning=self._warn)
        except LoomError as exc:
            self._warn(f"monitoring skipped: {exc}")
        return dataclasses.replace(summary, warnings=tuple(self.warnings), extra={
            **summary.extra, "alerts": [alert.to_dict() for alert in alerts]})

    async def _record_finish(self, summary: RunSummary, sink: Sink | None) -> None:
        spec = self.loaded.spec
        lineage = {
            "source": redact_uri(spec.extract.source),
            "query": spec.extract.query or spec.extract.table,
            "destination": redact_uri(spec.load.destination), "table_name": spec.load.table,
            "records_in": summary.extracted, "records_out": summary.loaded,
        }
        await self.store.finish_run(summary, self.tally.evaluator_stats(), lineage)

    def _summary(self, status: str, reason: str | None) -> RunSummary:
        tally = self.tally
        limits = self._runtime.limits.all() if self._runtime is not None else []
        transform = self._runtime.client.limits if self._runtime is not None else None
        return RunSummary(
            run_id=self.run_id, pipeline=self.loaded.spec.name, status=status,
            status_reason=reason, extracted=tally.extracted, loaded=tally.loaded,
            quarantined=tally.quarantined, skipped=tally.skipped, cost_usd=_round(tally.cost),
            cost_by_stage={k: _round(v) for k, v in tally.cost_by_stage.items()},
            cost_by_model={k: _round(v) for k, v in tally.cost_by_model.items()},
            input_tokens=tally.input_tokens, output_tokens=tally.output_tokens,
            llm_calls=tally.llm_calls, cache_hits=tally.cache_hits,
            duration_s=time.monotonic() - self._started,
            latency_p50_s=_round(tally.latency.quantile(0.5), 4),
            latency_p95_s=_round(tally.latency.quantile(0.95), 4),
            latency_p99_s=_round(tally.latency.quantile(0.99), 4),
            warnings=tuple(self.warnings),
            extra={"shard": self.options.shard.to_json()} if self.options.shard else {},
            concurrency=self.loaded.spec.transform.concurrency,
            concurrency_min=transform.concurrency.lowest if transform else None,
            concurrency_final=transform.concurrency.limit if transform else None,
            throttled=sum(limit.stats.throttled for limit in limits),
            retries=sum(limit.stats.retries for limit in limits),
            budget_usd=self.loaded.spec.budget.max_cost_usd,
        )


def _skipped(record: Any, reason: str) -> RecordResult:
    return RecordResult(record, Outcome.SKIPPED, None, reason, None)


def _round(value: float | None, digits: int = 6) -> float | None:
    return None if value is None else round(value, digits)


def _as_dict(progress: Progress) -> dict[str, Any]:
    return {name: getattr(progress, name) for name in progress.__dataclass_fields__}
