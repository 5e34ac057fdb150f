"""The streaming runner: source -> N transform workers -> gate -> sink, events out.

Bounded queues give back-pressure, so memory stays flat whatever the input size. The engine
never prints: it emits events (core.events) to its listeners and writes the history itself,
in batches, so a run is recorded whether or not anybody is watching.

Every extracted record ends in exactly one place — loaded, quarantined or skipped — and the
run's row says so: extracted = loaded + quarantined + skipped.

Checkpoints make a run resumable (core.resume). Each record's result reaches the store within
CHECKPOINT_S of its model answer — a record that passed the gate as `passed`, with its output —
and always before a sink batch holds it. So a crash costs at most the calls in flight and the
answers of the last ~100 ms: `--resume` pays for nothing else again. The checkpoint is one short
transaction (one executemany insert) about ten times a second, never one per record, and it is
the only write a record costs: which passed records a sink holds is not written per batch. At
the end the few that no batch took (the run stopped) are skipped by id, and one statement makes
the rest `loaded` once the sink has published them; after a crash, the sink itself says what it
holds (a ledger, a commit token: see Sink.resume_policy).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from core.approved import write_approved
from core.claims import host_name, start_time
from core.config import LoomConfig, load_config
from core.home import loom_home
from core.connectors.base import Sink, Source, build_row
from core.connectors.registry import (literal_secrets, open_sink, open_source, redact_override,
                                      redact_tree, redact_uri)
from core.credentials import SecretResolver
from core.errors import DestinationBusy, LoadError, LoomError, ResumeError, StoreError
from core.llm.answer_journal import AnswerJournal, journal_path
from core.events import (BatchLoaded, Event, Progress, RecordFinished, RecordsExtracted,
                         RunFinished, RunResumed, RunStarted, RunStatus, RunSummary, RunWarning)
from core.monitoring import monitor_run
from core.processing import PROVIDER_FAILURE, FatalRunError, Runtime
from core.records import EvaluatorStats, Outcome, Record, RecordResult, Stage, TransformResult, Verdict
from core.resume import (DONE, DUPLICATE_ID, LOAD, PROCESS, RELOAD, ResumeIndex, ResumeRequest,
                         pipeline_change, reconcile)
from core.sharding import Shard, bind_destination
from core.spec import LoadedSpec, snapshot
from core.stats import Quantiles
from core.store import PASSED, RunStart, Store

_log = logging.getLogger(__name__)

Listener = Callable[[Event], None]

PROGRESS_INTERVAL_S = 0.25  # a few snapshots a second: enough for a live view, cheap for a UI
HEARTBEAT_INTERVAL_S = 2.0
# How long a cancelled stage of the pump may take to end before it is cancelled again.
CANCEL_PATIENCE_S = 5.0
# A record's result is in the store at most this long after it is known (or as soon as this many
# wait): what a crash can cost again is the calls in flight plus ~CHECKPOINT_S of answers.
CHECKPOINT_S = 0.1
CHECKPOINT_RECORDS = 256
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
    # Resume this unfinished run (core.resume) instead of starting one: Workspace.resume_options.
    resume: ResumeRequest | None = None
    # The --set overrides the pipeline was loaded with: kept with the run, for resuming it.
    overrides: list[str] = field(default_factory=list)


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
    # Of skipped: records whose provider failed (not their fault): they wait for --resume.
    provider_failures: int = 0
    last_provider_failure: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0  # of input_tokens
    cache_write_tokens: int = 0  # of input_tokens
    reasoning_tokens: int = 0  # of output_tokens
    prompt_cache_saved: float = 0.0
    llm_calls: int = 0  # every call the run made, across its attempts
    calls_this_attempt: int = 0  # of llm_calls: made by this process
    calls_repeated: int = 0  # of llm_calls: sent by an attempt that died before their answer
    cache_hits: int = 0
    cost_known: float = 0.0
    cost_unknown: bool = False
    cost_by_stage: dict[str, float | None] = field(default_factory=dict)
    cost_by_model: dict[str, float | None] = field(default_factory=dict)
    latency: Quantiles = field(default_factory=Quantiles)
    evaluators: dict[str, tuple[EvaluatorStats, Quantiles]] = field(default_factory=dict)
    recent_errors: deque[str] = field(default_factory=lambda: deque(maxlen=5))
    first_error: str | None = None

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
                self.calls_this_attempt += not call.replayed
                made_calls = True
            self.input_tokens += call.input_tokens
            self.output_tokens += call.output_tokens
            self.cache_read_tokens += call.cached_tokens
            self.cache_write_tokens += call.cache_written_tokens
            self.reasoning_tokens += call.reasoning_tokens
            self.prompt_cache_saved += call.prompt_cache_saved_usd or 0.0
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

    def count_stored(self, row: Any, kind: int, models: dict[str, str], transform_model: str) -> None:
        """A row an earlier attempt of a resumed run wrote: what it cost was paid then, once.
        Rows that will be processed again add only their cost; the others their scores too."""
        self.llm_calls += row.llm_calls or 0
        self.cache_hits += bool(row.cached)
        self.input_tokens += row.input_tokens or 0
        self.output_tokens += row.output_tokens or 0
        self.cache_read_tokens += row.cache_read_tokens or 0
        self.cache_write_tokens += row.cache_write_tokens or 0
        self.reasoning_tokens += row.reasoning_tokens or 0
        self.prompt_cache_saved += row.prompt_cache_saved_usd or 0.0
        scores = row.scores or []
        judged_cost = 0.0
        judged_latency = 0.0
        for score in scores:
            if "cost_usd" in score:
                cost = score["cost_usd"]
                model = models.get(str(score.get("evaluator")), transform_model)
                _add(self.cost_by_stage, "evaluate", cost)
                _add(self.cost_by_model, model, cost)
                judged_cost += cost or 0.0
                judged_latency += score.get("latency_s") or 0.0
        if row.cost_usd is None:
            self.cost_unknown = True
            _add(self.cost_by_stage, "transform", None)
            _add(self.cost_by_model, transform_model, None)
        else:
            self.cost_known += row.cost_usd
            if row.cost_usd - judged_cost > 1e-12 or row.llm_calls:
                transform_cost = max(0.0, row.cost_usd - judged_cost)
                _add(self.cost_by_stage, "transform", transform_cost)
                _add(self.cost_by_model, transform_model, transform_cost)
        if kind == PROCESS:
            return
        if row.has_output:
            self.transformed += 1
        if scores or row.verdict is not None:
            self.evaluated += 1
        if row.llm_calls and not row.cached:
            self.latency.add(max(0.0, (row.latency_s or 0.0) - judged_latency))
        for score in scores:
            entry = self.evaluators.get(str(score.get("evaluator")))
            if entry is None:
                continue
            stats, values = entry
            stats.count += 1
            stats.passed += bool(score.get("passed"))
            if score.get("error") is None and isinstance(score.get("value"), (int, float)):
                values.add(float(score["value"]))
            if "cost_usd" in score:
                cost = score["cost_usd"]
                stats.cost_usd = None if cost is None or stats.cost_usd is None else stats.cost_usd + cost

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
        self._broken_listeners: set[int] = set()
        self.controller = controller or RunController()
        resume = self.options.resume
        self.run_id = resume.run.run_id if resume else (self.options.run_id or new_run_id())
        self.tally = _Tally()
        self.warnings: list[str] = []
        self.resolver = SecretResolver(on_warning=self._warn, credentials=self.config.credentials)
        # Literal secrets written in the pipeline or a --set (api_key: sk-…, a URI's password)
        # are redacted from every text the run writes, like resolved ${NAME} values.
        self.resolver.add_known(literal_secrets(self.loaded.raw))
        self._started = 0.0
        self._in_flight_records: dict[int, Any] = {}
        self._unqueued: deque[Any] = deque()
        self._handing: Any = None  # what the producer is handing on for `_unqueued[0]`
        self._unfinished: list[Any] = []
        self._to_load: list[RecordResult] = []
        self._total_hint: int | None = None
        self._stop_reason: str | None = None
        self._stop_status: str | None = None
        self._runtime: Runtime | None = None
        # The checkpoint waiting to be written (see Store.checkpoint).
        self._checkpoint: list[RecordResult] = []
        self._refused: list[RecordResult] = []
        self._replaced: list[int] = []
        self._last_checkpoint = 0.0
        # Record ids whose rows are `passed` but that no sink batch took: skipped at the end.
        self._not_loaded: list[str] = []
        self._batches_written = 0
        self._held = 0  # passing records a partial replace run keeps in the store (released later)
        # Duplicate ids (extract.on_duplicate_id): first-seen ids, or for keep_last each id's
        # last ordinal (-1 once it was taken). Ids only, never records.
        self._keep_last = self.loaded.spec.extract.on_duplicate_id == "keep_last"
        self._seen: dict[str, str | None] = {}
        self._latest: dict[str, int] = {}
        self._duplicates = 0
        self._first_duplicate: str | None = None
        # Resuming (core.resume): the earlier attempts' rows, by record id.
        self._index: ResumeIndex | None = None
        self._attempt = 1
        self._prior_duration = 0.0
        self._journal: AnswerJournal | None = None
        self._abandoned = 0  # calls cancelled in flight as this attempt stopped

    # ------------------------------------------------------------------ events

    def _emit(self, event: Event) -> None:
        # A display that breaks on an event (a terminal gone, a bug in a consumer) must never
        # stop the run half-way: after the sink committed, the store would keep it `running`
        # and every resume would break the same way. The failure is logged, once per listener.
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:  # noqa: BLE001 - listeners are outside the engine's contract
                if id(listener) not in self._broken_listeners:
                    self._broken_listeners.add(id(listener))
                    _log.warning("an event listener failed on %s; the run goes on",
                                 type(event).__name__, exc_info=_log.isEnabledFor(logging.DEBUG))

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
            cache_read_tokens=tally.cache_read_tokens,
            cache_write_tokens=tally.cache_write_tokens, reasoning_tokens=tally.reasoning_tokens,
            prompt_cache_saved_usd=tally.prompt_cache_saved,
            latency_p95_s=tally.latency.quantile(0.95),
            concurrency=self._concurrency(),
            recent_errors=tuple(tally.recent_errors), total_hint=self._total_hint,
            **self._waiting(),
        )

    def _waiting(self) -> dict[str, Any]:
        """How long new calls are held by a rate limit, and why: shown, not guessed at."""
        if self._runtime is None:
            return {}
        limits = self._runtime.client.limits
        left = limits.resume_at - time.monotonic()
        if left <= 0:
            return {}
        return {"waiting_s": left, "waiting_reason": limits.waiting_for}

    def _concurrency(self) -> int:
        """Requests in flight allowed right now: the adaptive limit, which 429s lower."""
        if self._runtime is not None:
            return self._runtime.client.limits.concurrency.limit
        return self.loaded.spec.transform.concurrency

    # ------------------------------------------------------------------ the run

    async def run(self) -> RunSummary:
        """Run the pipeline to the end. Raises LoomError for errors that prevent a run at all
        (a missing secret, an unreadable prompt, a run that cannot be resumed); everything
        after the start is in the summary."""
        # What earlier attempts were answered but never checkpointed, and every answer this one
        # gets, the moment it arrives (core.llm.answer_journal).
        self._journal = AnswerJournal.open(journal_path(loom_home(), self.run_id))
        try:
            runtime = Runtime.build(
                self.loaded, config=self.config, cache=self.store,
                use_cache=self.options.use_cache, resolver=self.resolver, on_warning=self._warn,
                record_path=self.options.record_path, journal=self._journal)
            try:
                if self.options.resume is not None:
                    self._check_unchanged(runtime, self.options.resume)
                return await self._run(runtime)
            finally:
                await runtime.aclose()
        finally:
            self._journal.close()

    def _check_unchanged(self, runtime: Runtime, request: ResumeRequest) -> None:
        change = pipeline_change(request.run, self.loaded, runtime)
        if change is None:
            return
        if not request.force:
            raise ResumeError(f"cannot resume run {self.run_id}: the pipeline changed since it "
                              f"started ({change}); run it afresh, or resume anyway with --force")
        self._warn(f"resumed with --force although the pipeline changed since the run started "
                   f"({change}): records finished before keep what the earlier version made")

    async def _run(self, runtime: Runtime) -> RunSummary:
        self._runtime = runtime
        # A stop (ctrl+c, SIGTERM, the workbench) also ends the calls' waits for rate limits.
        stopper = asyncio.get_running_loop().create_task(self._stop_calls_on_cancel(runtime))
        try:
            return await self._run_pipeline(runtime)
        finally:
            stopper.cancel()

    async def _stop_calls_on_cancel(self, runtime: Runtime) -> None:
        await self.controller.cancelled.wait()
        runtime.client.stop()
        runtime.prompts.stop()  # a render under way stops at its next check, not at its budget

    async def _run_pipeline(self, runtime: Runtime) -> RunSummary:
        spec = self.loaded.spec
        prompts = runtime.prompts
        for evaluator in runtime.processor.evaluators:
            self.tally.evaluators[evaluator.name] = (
                EvaluatorStats(evaluator=evaluator.name, type=evaluator.type,
                               threshold=evaluator.threshold, weight=evaluator.weight),
                Quantiles())
        resume = self.options.resume
        started_at = resume.run.started_at if resume else datetime.now(timezone.utc)
        if resume is not None:
            self._prior_duration = resume.run.duration_s or 0.0
        self._started = time.monotonic() - self._prior_duration
        await self._warn_namesakes()
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
            opening.notify = self._warn
            await opening.open(self.run_id)
            sink = opening  # only a sink that opened is committed or aborted
            if resume is not None:
                await self._reconcile(runtime, resume, sink)
            with contextlib.suppress(Exception):
                self._total_hint = await source.count_hint()
                if self.options.shard is not None and self.options.shard.count > 1:
                    self._total_hint = None  # the source's count, not this shard's
                if self._total_hint is not None and self.options.limit is not None:
                    self._total_hint = min(self._total_hint, self.options.limit)
            if self._keep_last:
                await self._find_last_occurrences(source)
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
        if resume is not None and self._index is None:
            # The resume stopped before it knew what earlier attempts did: the run keeps their
            # counts (its rows are untouched), so that it can be resumed again.
            self._keep_counts(resume.run)

        # Whatever stopped the run, the records it had read end somewhere.
        why = error or reason or "run stopped"
        try:
            if isinstance(fatal, StoreError):
                raise fatal
            await self._skip_unfinished(why)
            self._settle_unread(why)
            await self._flush_checkpoint()
            await self.store.skip_passed(self.run_id, self._not_loaded,
                                         self.resolver.redact(f"not loaded: {why}"))
            self._not_loaded = []
            status, reason = self._judge(status, reason, error)
            if sink is not None:
                status, error = await self._finish_sink(sink, status, error)
        except StoreError:
            # The history cannot say what the destination holds: publish nothing, and say why
            # in one line (the run stays `running` in the store, resumable once it can be
            # written again).
            if sink is not None:
                with contextlib.suppress(Exception):
                    await sink.abort()
            raise
        self._report_duplicates()

        journal = self._journal
        if journal is not None and journal.abandoned:
            # Calls cancelled in flight as the run stopped: made, and made again by a resume
            # (which counts them as repeated, from the run's row: calls_abandoned).
            self._abandoned = journal.abandoned
            self.tally.llm_calls += self._abandoned
            self.tally.calls_this_attempt += self._abandoned
        if journal is not None and journal.failed is not None and status != RunStatus.FAILED:
            self._warn(f"answer journal {journal.path} not written ({journal.failed}): had the "
                       f"run crashed, --resume would have paid again for up to ~100 ms of answers")
        summary = await self._monitor(self._summary(status, reason or error), started_at)
        await self._record_finish(summary, sink)
        if self._journal is not None:
            # Every answer the journal held is in the store now (the repeats are counted in the
            # run's row): a later resume needs none of it.
            self._journal.discard()
        self._emit(Progress(**{**_as_dict(self.progress()), "in_flight": 0}))
        self._emit(RunFinished(self.run_id, summary))
        if isinstance(fatal, FatalRunError) and fatal.exit_code == 2:
            # A template the sandbox refused: the user must fix the pipeline (exit 2), and the
            # run is still recorded as failed.
            raise fatal
        return summary

    # ------------------------------------------------------------------ resuming

    async def _reconcile(self, runtime: Runtime, request: ResumeRequest, sink: Sink) -> None:
        """Settle with the destination what earlier attempts left, and count what they did."""
        spec = self.loaded.spec
        models = {evaluator.label: getattr(evaluator, "model", None) or spec.transform.model
                  for evaluator in spec.evaluate.evaluators}
        tally = self.tally

        def count(row: Any, kind: int) -> None:
            tally.count_stored(row, kind, models, spec.transform.model)

        index = await reconcile(self.store, request.run, sink, attempt=self._attempt,
                                rebuilds=spec.load.mode == "replace", count=count)
        self._index = index
        tally.loaded += index.loaded
        tally.quarantined += index.quarantined
        tally.skipped += index.skipped
        # Calls an earlier attempt sent and died before hearing back from: made, maybe billed,
        # and made again now. Counted as calls (their cost is unknown: the budget takes what it
        # had reserved for them). Those of attempts before the last clean end are in the row.
        journal = self._journal
        if journal is not None and request.run.finished_at is not None:
            # The run ended and recorded its end (every attempt clears finished_at as it
            # starts): all the journal holds predates that end, counted in the row already —
            # a journal left behind by a kill while it was being deleted.
            journal.forget()
        earlier = journal.earlier if journal is not None else None
        stored = request.run.extra or {}
        repeated = int(stored.get("calls_repeated") or 0) + int(stored.get("calls_abandoned") or 0)
        if earlier is not None:
            repeated += earlier.unanswered
            runtime.budget.spent += earlier.unanswered_reserved_usd
        tally.calls_repeated = repeated
        tally.llm_calls += repeated
        # The budget is the run's, across its attempts.
        runtime.budget.spent += tally.cost_known
        self._emit(RunResumed(self.run_id, attempt=index.attempt, loaded=index.loaded,
                              quarantined=index.quarantined, from_store=index.from_store,
                              to_process=index.to_process, rewritten=index.rewritten))

    def _keep_counts(self, run: Any) -> None:
        tally = self.tally
        tally.extracted, tally.loaded = run.extracted, run.loaded
        tally.quarantined, tally.skipped = run.quarantined, run.skipped
        tally.cost_known, tally.cost_unknown = run.cost_usd or 0.0, run.cost_usd is None
        tally.input_tokens, tally.output_tokens = run.input_tokens, run.output_tokens
        tally.cache_read_tokens = run.cache_read_tokens or 0
        tally.cache_write_tokens = run.cache_write_tokens or 0
        tally.reasoning_tokens = run.reasoning_tokens or 0
        tally.prompt_cache_saved = (run.savings_usd or {}).get("prompt_cache") or 0.0
        tally.llm_calls, tally.cache_hits = run.llm_calls, run.cache_hits
        tally.calls_repeated = int((run.extra or {}).get("calls_repeated") or 0)

    def _settle_unread(self, reason: str) -> None:
        """Rows of a resumed run whose records this attempt never finished: not read again (the
        source shrank, or the run stopped first). Each is counted once, as it now stands."""
        index = self._index
        if index is None:
            return
        tally = self.tally
        for record_id, entry in index.entries.items():
            if not entry.seen:
                tally.extracted += 1
            if entry.kind == LOAD:
                tally.skipped += 1
                self._not_loaded.append(record_id)
            elif entry.kind == PROCESS:
                tally.skipped += 1  # its row says skipped already
        index.entries.clear()
        tally.extracted += len(index.duplicates)
        index.duplicates.clear()

    async def _find_last_occurrences(self, source: Source) -> None:
        """keep_last: read the source once for ids only, so that streaming can tell, at an
        id's first occurrence, whether a later one replaces it."""
        limit = self.options.limit if self.options.limit is not None else self.loaded.spec.extract.limit
        shard = self.options.shard
        latest = self._latest
        async for batch in source.batches(limit):
            if shard is not None:
                batch = shard.select(batch)
            for record in batch:
                if record.extract_error is None:
                    latest[record.id] = record.ordinal

    # ------------------------------------------------------------------ the pump

    def _route(self, record: Record, stored: dict[int, RecordResult]) -> Any:
        """What happens to a record read from the source: the record itself (process it), a
        result (a duplicate id, or a resumed record's stored output to load), or None (a
        resumed record that needs nothing more)."""
        record_id = record.id
        if record.extract_error is None:
            duplicate = self._duplicate(record)
            if duplicate is not None:
                index = self._index
                if index is not None and (record_id, record.ordinal) in index.duplicates:
                    index.duplicates.discard((record_id, record.ordinal))
                    return None  # recorded by an earlier attempt
                return duplicate
        index = self._index
        if index is None:
            return record
        entry = index.entries.get(record_id)
        if entry is None:
            return record
        entry.seen = True
        if entry.kind == DONE:
            del index.entries[record_id]
            return None
        if entry.kind == PROCESS:
            return record
        result = stored.get(entry.pk)
        if result is None:  # not fetched (the run is stopping), or its row is gone: process it
            return record
        return _Stored(result)

    def _duplicate(self, record: Record) -> RecordResult | None:
        """The result of a record whose id an earlier record already had, or None."""
        record_id = record.id
        if self._keep_last:
            last = self._latest.get(record_id)
            if last is None or last == record.ordinal:
                self._latest[record_id] = -1  # taken: any occurrence after it is a duplicate
                return None
            if last > record.ordinal:
                return self._note_duplicate(record, RecordResult(
                    record, Outcome.SKIPPED, Stage.EXTRACT,
                    f"duplicate id {record_id!r}: a later record has it too and replaces this "
                    f"one (extract.on_duplicate_id: keep_last)", DUPLICATE_ID))
            # Past the last occurrence the first read found: the source grew since.
            return self._note_duplicate(record, RecordResult(
                record, Outcome.QUARANTINED, Stage.EXTRACT,
                f"duplicate id {record_id!r}: the record with it was already taken (the source "
                f"changed while the run read it)", DUPLICATE_ID))
        seen = self._seen
        if record_id not in seen:
            seen[record_id] = record.origin
            return None
        first = seen[record_id]
        return self._note_duplicate(record, RecordResult(
            record, Outcome.QUARANTINED, Stage.EXTRACT,
            f"duplicate id {record_id!r}: {first or 'an earlier record'} has it too (extract."
            f"on_duplicate_id: quarantine keeps the first)", DUPLICATE_ID))

    def _note_duplicate(self, record: Record, result: RecordResult) -> RecordResult:
        self._duplicates += 1
        if self._first_duplicate is None:
            self._first_duplicate = f"{record.id!r} ({record.origin or f'record {record.ordinal}'})"
        return result

    def _report_duplicates(self) -> None:
        if not self._duplicates:
            return
        count = self._duplicates
        what = f"{count} record{'s' if count != 1 else ''}"
        if self._keep_last:
            self._warn(f"{what} had an id a later record has too, first {self._first_duplicate}: "
                       f"skipped, the last one with each id is loaded (extract.on_duplicate_id: "
                       f"keep_last)")
        else:
            self._warn(f"{what} had an id an earlier record has too, first {self._first_duplicate}: "
                       f"quarantined (extract.on_duplicate_id: quarantine; keep_last loads the "
                       f"last one instead)")

    async def _stored_results(self, batch: list[Record]) -> dict[int, RecordResult]:
        """A resumed run: the stored outputs this batch's records will load, by row id."""
        index = self._index
        if index is None:
            return {}
        wanted = []
        for record in batch:
            entry = index.entries.get(record.id)
            if entry is not None and entry.kind in (LOAD, RELOAD):
                wanted.append(entry.pk)
        if not wanted:
            return {}
        return {row.id: _result_from_row(row) for row in await self.store.stored_results(wanted)
                if row.id is not None}  # stored rows all have an id

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
            route = self._route
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
                # Until a record is handed on, the producer answers for it: if the run stops
                # here, `_drain` finds it in `_unqueued` and accounts for it.
                self._unqueued = deque(batch)
                stored = await self._stored_results(batch) if self._index is not None else {}
                unqueued = self._unqueued
                while unqueued:
                    if stop.is_set():
                        # Read but never started: explicitly skipped, never lost.
                        while unqueued:
                            item = route(unqueued[0], stored)
                            self._handing = item
                            if item is not None:
                                await done.put(_stopped(item, self.controller.reason))
                            self._handing = None
                            unqueued.popleft()
                        return
                    record = unqueued[0]
                    item = route(record, stored)
                    if item is not None:
                        self._handing = item
                        if item is record:
                            await work.put(record)
                        else:
                            await done.put(item)
                        self._handing = None
                    unqueued.popleft()
                if stop.is_set():
                    return
            # The source is read to its end: its count is known now, where the hint was a guess
            # (a CSV's lines, one more than its records when a quoted value holds a newline).
            self._total_hint = self.tally.extracted

        waiters: set[asyncio.Task[None]] = set()

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
                verdict = processor.awaiting.pop(record.ordinal, None)
                if verdict is not None:
                    # Refused with a 4xx the next calls tell apart: the record stays in flight
                    # (skipped if the breaker opens on that 4xx), the worker moves on.
                    waiter = asyncio.create_task(decided(record, result, verdict),
                                                 name="loom-awaiting-verdict")
                    waiters.add(waiter)
                    waiter.add_done_callback(waiters.discard)
                    continue
                await done.put(result)
                # Only once the result is queued does the record stop being the worker's.
                del in_flight[record.ordinal]

        async def decided(record: Record, result: RecordResult, verdict: asyncio.Future[bool]) -> None:
            if await verdict:
                await done.put(result)
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
            # No call is left to tell whether the records refused with a 4xx were refused for
            # themselves: they were (the breaker would have opened).
            processor.transformer.client.breaker.decide_all()
            if waiters:
                await asyncio.gather(*list(waiters))
            await done.put(None)
            await collector
        finally:
            await _cancel_all([ticker, *stages, collector, *list(waiters)])
            # Records read but not finished when a failure stopped the run: skipped, with why.
            self._drain(work, done)

    def _drain(self, work: asyncio.Queue[Any], done: asyncio.Queue[Any]) -> None:
        leftovers: list[Any] = []
        while not done.empty():
            item = done.get_nowait()
            if item is not None:
                leftovers.append(item)
        unstarted = list(self._in_flight_records.values())
        unqueued = self._unqueued
        if unqueued and self._handing is not None:
            # The producer was handing this record on when the run stopped.
            leftovers.append(_stopped(self._handing, "run stopped before this record finished"))
            unqueued.popleft()
        self._handing = None
        while not work.empty():
            item = work.get_nowait()
            if item is not None:
                unstarted.append(item)
        leftovers.extend(_skipped(r, "run stopped before this record finished") for r in unstarted)
        for record in unqueued:
            item = self._route(record, {})
            if item is not None:
                leftovers.append(_stopped(item, "run stopped before this record finished"))
        self._in_flight_records.clear()
        self._unqueued = deque()
        self._unfinished = leftovers

    # ------------------------------------------------------------------ the collector

    async def _collect(self, done: asyncio.Queue[Any], sink: Sink) -> None:
        """Checkpoint every result, batch the passing ones into the sink."""
        batch_size = self.loaded.spec.load.batch_size
        to_load = self._to_load
        now = time.monotonic()
        last_load = now
        self._last_checkpoint = now
        get_nowait = done.get_nowait
        passed = Outcome.LOADED
        while True:
            if done.empty():
                # Nothing waiting: sleep until the next checkpoint or load is due, at most.
                if self._checkpoint or self._refused:
                    timeout = max(0.0, self._last_checkpoint + CHECKPOINT_S - now)
                else:
                    timeout = LOAD_FLUSH_S
                try:
                    # asyncio.timeout, not wait_for, which on Python 3.11 can lose a cancel.
                    async with asyncio.timeout(timeout):
                        item = await done.get()
                except TimeoutError:
                    item = ...
            else:
                item = get_nowait()
            if item is None:
                break
            if item is not ...:
                if type(item) is _Stored:
                    to_load.append(item.result)
                elif item.outcome is passed:
                    self._checkpoint_passed(item)
                    to_load.append(item)
                else:
                    self._finish_record(item)
            now = time.monotonic()
            if to_load and (len(to_load) >= batch_size or now - last_load >= LOAD_FLUSH_S):
                await self._load(sink, to_load)
                to_load.clear()
                last_load = now = time.monotonic()
            elif len(self._checkpoint) >= CHECKPOINT_RECORDS or (
                    now - self._last_checkpoint >= CHECKPOINT_S
                    and (self._checkpoint or self._refused)):
                await self._flush_checkpoint()
                now = time.monotonic()
        if to_load:
            await self._load(sink, to_load)
            to_load.clear()

    async def _flush_checkpoint(self) -> None:
        self._last_checkpoint = time.monotonic()
        if not (self._checkpoint or self._refused or self._replaced):
            return
        results, self._checkpoint = self._checkpoint, []
        refused, self._refused = self._refused, []
        replaced, self._replaced = self._replaced, []
        # Every record's reason reaches the store here, whatever its outcome: masked here, so
        # that no path that sets a reason (a skip, a refusal, a quarantine) can store a secret.
        for result in (*results, *refused):
            self._mask_reason(result)
        await self.store.checkpoint(self.run_id, self.loaded.spec.name, results, refused=refused,
                                    replaced=replaced)

    async def _load(self, sink: Sink, results: list[RecordResult]) -> None:
        # Their results are in the store before the sink has them: a crash in between costs a
        # write from the stored output on resume, never a second call or a second row.
        await self._flush_checkpoint()
        loaded = self.loaded
        rows = [build_row(loaded, r.record, r.output) for r in results]
        refused: set[int] = set()  # positions in `results` the destination refused
        try:
            await sink.write_records(rows, [r.record.id for r in results])
            self._batches_written += 1
        except LoadError as exc:
            if len(results) == 1:
                refused.add(0)
                self._refuse(results[0], exc)
            else:
                # One bad value (a NUL in a key, a number too big for the column) must not
                # fail its neighbours: the batch (rolled back whole) is written again row by
                # row, and only the rows the destination refuses are quarantined, each with
                # the destination's own reason.
                for position, (result, row) in enumerate(zip(results, rows)):
                    try:
                        await sink.write_records([row], [result.record.id])
                        self._batches_written += 1
                    except LoadError as one:
                        refused.add(position)
                        self._refuse(result, one)
        index = self._index
        for position, result in enumerate(results):
            if index is not None:
                entry = index.entries.pop(result.record.id, None)
                if entry is not None and entry.kind == RELOAD:
                    if position in refused:  # it is no longer at the rebuilt destination
                        self.tally.loaded -= 1
                        self._settle(result)
                    continue
            self._settle(result)
        if len(refused) < len(results):
            self._emit(BatchLoaded(self.run_id, len(results) - len(refused), self.tally.loaded))

    def _refuse(self, result: RecordResult, exc: LoadError) -> None:
        """A record the destination refused: quarantined at `load` with its reason."""
        result.outcome, result.stage = Outcome.QUARANTINED, Stage.LOAD
        result.reason, result.error_type = self.resolver.redact(str(exc)), type(exc).__name__
        self._refused.append(result)

    def _checkpoint_passed(self, result: RecordResult) -> None:
        """A record that passed the gate: checkpointed now, settled once its batch is written."""
        if self._index is not None:
            self._replaces(result)
        self._checkpoint.append(result)
        self.tally.count_result(result)

    def _replaces(self, result: RecordResult) -> bool:
        """A resumed run: whether this new result of a record stands in for the record's stored
        row (which goes), or adds nothing to it (False: the row stays as it is)."""
        assert self._index is not None
        if result.error_type == DUPLICATE_ID:
            return True
        entry = self._index.entries.pop(result.record.id, None)
        if entry is None:
            return True
        if entry.kind in (DONE, RELOAD):
            return False  # counted already, as it stands
        if result.outcome is Outcome.SKIPPED and result.transform is None and not result.scores:
            # Stopped before anything was learned: the row says as much already (a passed one
            # is skipped at the end, keeping its output; a skipped one stays).
            if entry.kind == LOAD:
                self._not_loaded.append(result.record.id)
            self._settle(result, count_only=True)
            return False
        self._replaced.append(entry.pk)
        return True

    def _finish_record(self, result: RecordResult) -> None:
        """A record that did not pass (quarantined or skipped): checkpointed and settled."""
        if self._index is not None and not self._replaces(result):
            return
        self._checkpoint.append(result)
        self.tally.count_result(result)
        self._settle(result)

    def _mask_reason(self, result: RecordResult) -> None:
        if result.reason:
            result.reason = self.resolver.redact(result.reason)

    def _settle(self, result: RecordResult, *, count_only: bool = False) -> None:
        """Count a record's final outcome, and say so (its reason masked, whatever the
        outcome: the event reaches listeners, --json and the workbench)."""
        tally = self.tally
        self._mask_reason(result)
        if result.outcome is Outcome.LOADED:
            tally.loaded += 1
        elif result.outcome is Outcome.QUARANTINED:
            tally.quarantined += 1
            if result.reason:
                tally.recent_errors.append(f"{result.record.id}: {result.reason}"[:300])
                if tally.first_error is None:
                    tally.first_error = tally.recent_errors[-1]
        else:
            tally.skipped += 1
            if result.error_type == PROVIDER_FAILURE:
                tally.provider_failures += 1
                tally.last_provider_failure = result.reason or ""
        if not count_only:
            self._emit(RecordFinished(self.run_id, result))

    async def _skip_unfinished(self, reason: str) -> None:
        """Records read but not finished when the run stopped: skipped, with why. One that
        passed keeps its output (resuming loads it without a call)."""
        index = self._index
        for item in self._unfinished:
            if type(item) is _Stored:
                self._stored_not_loaded(item.result, reason)
                continue
            if item.outcome is Outcome.LOADED:
                # Passed the gate but never reached the collector: skipped, answer kept.
                item.outcome, item.stage = Outcome.SKIPPED, Stage.LOAD
                item.reason = f"not loaded: {reason}"
            self._finish_record(item)
        self._unfinished = []
        for result in self._to_load:
            # Checkpointed as passed (skipped by id at the end), or a resumed record's
            # stored output.
            if index is not None and result.record.id in index.entries:
                self._stored_not_loaded(result, reason)
                continue
            self._not_loaded.append(result.record.id)
            self._settle(RecordResult(result.record, Outcome.SKIPPED, Stage.LOAD,
                                      f"not loaded: {reason}", None, transform=result.transform,
                                      scores=result.scores, verdict=result.verdict))
        self._to_load.clear()

    def _stored_not_loaded(self, result: RecordResult, reason: str) -> None:
        """A resumed record's stored output that this attempt did not get to load."""
        assert self._index is not None
        entry = self._index.entries.pop(result.record.id, None)
        if entry is not None and entry.kind == LOAD:
            self._not_loaded.append(result.record.id)
            self._settle(RecordResult(result.record, Outcome.SKIPPED, Stage.LOAD,
                                      f"not loaded: {reason}", None, transform=result.transform,
                                      scores=result.scores, verdict=result.verdict))

    def _judge(self, status: str, reason: str | None, error: str | None) -> tuple[str, str | None]:
        """The run's status once every record is settled and before the destination is: the
        quality gate over the whole run (max_rejection_rate), and a run in which no record
        passed at all, which did not do its work whatever the cause (a template variable no
        record has, an endpoint that refuses every call): `failed`, never `success`."""
        if status != RunStatus.SUCCESS:
            return status, reason
        tally = self.tally
        processed = tally.loaded + tally.quarantined
        if processed and not tally.loaded:
            first = f" (first: {tally.first_error})" if tally.first_error else ""
            return RunStatus.FAILED, (f"no record passed: all {tally.quarantined} processed "
                                      f"record{'s were' if tally.quarantined != 1 else ' was'} "
                                      f"quarantined{first}")
        if tally.provider_failures:
            # Not done: say so, and how to finish it.
            count = tally.provider_failures
            return (RunStatus.PARTIAL if tally.loaded else RunStatus.FAILED,
                    f"{count} record{'s' if count != 1 else ''} not processed, the provider "
                    f"failed ({tally.last_provider_failure}); --resume processes them")
        limit = self.loaded.spec.evaluate.max_rejection_rate
        rate = tally.quarantined / processed if processed else 0.0
        if limit is not None and rate > limit:
            return (RunStatus.PARTIAL,
                    f"rejection rate {rate:.1%} is above max_rejection_rate {limit:.1%}")
        if not tally.extracted and self._index is None:
            self._warn("nothing to load: no record was extracted"
                       + (" (--limit 0)" if self.options.limit == 0 else "")
                       + "; the destination is unchanged")
        return status, reason

    async def _finish_sink(self, sink: Sink, status: str, error: str | None) -> tuple[str, str | None]:
        """Commit what loaded, or leave the destination exactly as it was.

        A `replace` destination is swapped only by a run that ends `success` (or `partial` with
        load.on_partial: publish) having written at least one row: a run that failed, was
        cancelled, loaded nothing or tripped the gate leaves it byte for byte as it was. Its
        passing records are skipped with their outputs kept: a partial run's wait to be
        released (`Workspace.release`), the others to be resumed. By now every passed record
        that no batch took is skipped: the `passed` rows are exactly what the sink holds."""
        spec = self.loaded.spec
        replace = spec.load.mode == "replace"
        if not self._batches_written and (replace or sink.resume_policy != "ledger"
                                          or status in (RunStatus.FAILED, RunStatus.CANCELLED)):
            # Nothing to publish: the destination stays exactly as it was (no empty file).
            with contextlib.suppress(Exception):
                await sink.abort()
            return status, error
        publish = status == RunStatus.SUCCESS or (
            status == RunStatus.PARTIAL and spec.load.on_partial == "publish")
        if replace and not publish:
            with contextlib.suppress(Exception):
                await sink.abort()
            held = status == RunStatus.PARTIAL
            why = (f"held: the run ended partial and load.on_partial is hold (release with "
                   f"loom release {self.run_id})" if held else
                   f"not loaded: replace mode loads all or nothing and the run {status}")
            demoted = await self.store.demote_loaded(self.run_id, why, from_outcome=PASSED)
            self.tally.loaded -= demoted
            self.tally.skipped += demoted
            if held and demoted:
                await self.store.hold_run(self.run_id)
                self._held = demoted
                self._warn(f"{redact_uri(spec.load.destination)} unchanged (partial run, "
                           f"load.on_partial: hold): {demoted} passing "
                           f"record{'s wait' if demoted != 1 else ' waits'} for "
                           f"loom release {self.run_id}")
            return status, error
        if sink.resume_policy == "ledger":
            # Every batch is committed at the destination already. The store says so before the
            # sink forgets its ledger (commit), so that a crash in between loses nothing.
            await self.store.finish_commit(self.run_id)
            try:
                await sink.commit()
            except LoomError as exc:
                self._warn(f"{redact_uri(self.loaded.spec.load.destination)}: {exc}")
            return status, error
        try:
            if replace:
                await self._keep_approved(sink)
            # Between the two, a crash leaves the question "did it publish?": the token answers
            # it when the run is resumed (core.resume.reconcile).
            token = await sink.prepare_commit()
            await self.store.begin_commit(self.run_id, token)
            await sink.commit()
        except StoreError:
            raise
        except DestinationBusy as exc:
            # Another run held the file past load.lock_timeout_s: nothing was written, and the
            # records are not the destination's fault: skipped with their answers, for --resume.
            with contextlib.suppress(Exception):
                await sink.abort()
            message = self.resolver.redact(str(exc))
            demoted = await self.store.demote_loaded(self.run_id, f"not loaded: {message}",
                                                     from_outcome=PASSED)
            self.tally.loaded -= demoted
            self.tally.skipped += demoted
            return RunStatus.FAILED, message
        except LoomError as exc:
            with contextlib.suppress(Exception):
                await sink.abort()
            message = self.resolver.redact(
                f"commit to {redact_uri(self.loaded.spec.load.destination)} failed: {exc}")
            demoted = await self.store.demote_loaded(self.run_id, message, quarantine=True,
                                                     from_outcome=PASSED)
            self.tally.loaded -= demoted
            self.tally.quarantined += demoted
            return RunStatus.FAILED, message
        await self.store.finish_commit(self.run_id)
        return status, error

    async def _keep_approved(self, sink: Sink) -> None:
        """A replace destination about to be swapped for this run's rows: add the records
        approved from the run's quarantine meanwhile (while it ran, or after it was killed and
        before this resume), which are in the destination now (core.approved)."""
        store, run_id = self.store, self.run_id

        async def written_by_run(record_ids: list[str]) -> set[str]:
            # By now the run's `passed` rows are what the sink holds, with the `loaded` ones
            # a resume wrote again (core.resume: RELOAD).
            return await store.record_ids_with_outcome(run_id, record_ids,
                                                       (PASSED, Outcome.LOADED.value))

        await write_approved(store, run_id, self.loaded, sink, written_by_run=written_by_run)

    # ------------------------------------------------------------------ history

    def _run_options(self) -> dict[str, Any]:
        return {"limit": self.options.limit, "use_cache": self.options.use_cache,
                "record": str(self.options.record_path) if self.options.record_path else None,
                # Who runs it, for a later --resume to tell whether it still does
                # (core.resume.is_alive): the start time tells a reused pid from this process.
                "pid": os.getpid(), "host": host_name(),
                "process_started": start_time(os.getpid()),
                # A literal secret in a --set (a URI's password, api_key=…) is never stored.
                "overrides": [redact_override(item) for item in self.options.overrides],
                **({"shard": self.options.shard.label} if self.options.shard else {})}

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
        resume = self.options.resume
        if resume is not None:
            # The run keeps its snapshot (what it started with); only who runs it changes.
            run = resume.run
            options = {**(run.options or {}), **self._run_options(),
                       "judge_prompts": (run.options or {}).get("judge_prompts", judge_prompts)}
            attempt = await self.store.claim_run(run.run_id, status=run.status,
                                                 updated_at=run.updated_at, options=options)
            if attempt is None:
                raise ResumeError(f"cannot resume run {run.run_id}: another process resumed "
                                  "it first")
            self._attempt = attempt
            return
        await self.store.start_run(RunStart(
            run_id=self.run_id, pipeline=spec.name, pipeline_version=spec.version,
            pipeline_path=str(self.loaded.path), started_at=started_at, config=snapshot(self.loaded),
            model=spec.transform.model, provider=spec.transform.provider,
            prompt_hash=prompts.prompt_hash, system_hash=prompts.system_hash,
            context_hashes=prompts.context_hashes, params=redact_tree(dict(spec.params)),
            options={**self._run_options(), "judge_prompts": judge_prompts},
            source=redact_uri(spec.extract.source), destination=redact_uri(spec.load.destination),
            shard=self.options.shard))

    async def _warn_namesakes(self) -> None:
        """A pipeline is its name and its file: another file with this name (a copied folder)
        keeps its own history, quarantine and resume. Say so, once per run, in one line."""
        spec = self.loaded.spec
        mine = str(self.loaded.path)
        files: list[str] = []
        with contextlib.suppress(LoomError):
            files = (await self.store.pipeline_files([spec.name])).get(spec.name, [])
        others = [path for path in files if path != mine and Path(path).is_file()]
        if others:
            more = f" (and {len(others) - 1} more)" if len(others) > 1 else ""
            self._warn(f"pipeline name {spec.name!r} is also the name of {others[0]}{more}: each "
                       f"file keeps its own history, quarantine and resume (rename one to tell "
                       f"them apart)")

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
        await self.store.finish_run(summary, self.tally.evaluator_stats(), lineage,
                                    resumed=self._attempt > 1)

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
            extra=self._extra(),
            concurrency=self.loaded.spec.transform.concurrency,
            concurrency_min=transform.concurrency.lowest if transform else None,
            concurrency_final=transform.concurrency.limit if transform else None,
            throttled=sum(limit.stats.throttled for limit in limits),
            retries=sum(limit.stats.retries for limit in limits),
            budget_usd=self.loaded.spec.budget.max_cost_usd,
            cache_read_tokens=tally.cache_read_tokens,
            cache_write_tokens=tally.cache_write_tokens, reasoning_tokens=tally.reasoning_tokens,
            savings_usd=_savings(tally),
            calls_this_attempt=tally.calls_this_attempt, calls_repeated=tally.calls_repeated,
        )


    def _extra(self) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if self.options.shard:
            extra["shard"] = self.options.shard.to_json()
        if self._attempt > 1:
            extra["attempts"] = self._attempt
        if self._duplicates:
            extra["duplicate_ids"] = self._duplicates
        if self._held:
            extra["held"] = self._held
        if self.tally.calls_repeated:
            extra["calls_repeated"] = self.tally.calls_repeated  # kept in the run's row
        if self._abandoned:
            extra["calls_abandoned"] = self._abandoned
        return extra


class _Stored:
    """A resumed record's stored result, on its way to the sink (it is checkpointed already)."""

    __slots__ = ("result",)

    def __init__(self, result: RecordResult) -> None:
        self.result = result


def _skipped(record: Any, reason: str) -> RecordResult:
    return RecordResult(record, Outcome.SKIPPED, None, reason, None)


async def _cancel_all(tasks: list[asyncio.Task[Any]]) -> None:
    """Cancel the tasks and wait until every one has ended. A task still running a few seconds
    after its cancel swallowed it (Python 3.11's wait_for did that when a cancel met a result;
    a library may too): it is cancelled again, rather than leaving the run waiting forever."""
    pending = {task for task in tasks if not task.done()}
    for task in pending:
        task.cancel()
    while pending:
        _, pending = await asyncio.wait(pending, timeout=CANCEL_PATIENCE_S)
        for task in pending:
            task.cancel()
    for task in tasks:
        if not task.cancelled():
            task.exception()  # retrieved: a failure that mattered was raised already


def _stopped(item: Any, reason: str) -> Any:
    """What a routed item becomes when the run stops before it goes on: a record is skipped;
    a duplicate's result and a stored result stay what they are."""
    return _skipped(item, reason) if isinstance(item, Record) else item


def _result_from_row(row: Any) -> RecordResult:
    """A stored record row as the result it was: its input, its output, its verdict (the
    scores are kept as stored; no call is made again, so none is counted again)."""
    record = Record(id=row.record_id, data=row.input or {}, ordinal=row.ordinal)
    transform = TransformResult(output=row.output, raw_text="", messages=[])
    verdict = None
    if isinstance(row.verdict, dict):
        verdict = Verdict(passed=bool(row.verdict.get("passed")), gate=str(row.verdict.get("gate")),
                          value=float(row.verdict.get("value") or 0.0),
                          threshold=row.verdict.get("threshold"),
                          reason=str(row.verdict.get("reason") or ""))
    return RecordResult(record, Outcome.LOADED, transform=transform, verdict=verdict)


def _savings(tally: _Tally) -> dict[str, float]:
    """What each cost lever saved, by lever: only the levers that were at work."""
    savings: dict[str, float] = {}
    if tally.cache_read_tokens or tally.cache_write_tokens:
        savings["prompt_cache"] = round(tally.prompt_cache_saved, 6)
    return savings


def _round(value: float | None, digits: int = 6) -> float | None:
    return None if value is None else round(value, digits)


def _as_dict(progress: Progress) -> dict[str, Any]:
    return {name: getattr(progress, name) for name in progress.__dataclass_fields__}
