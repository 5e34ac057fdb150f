"""The history store: runs, record results, quarantine, prompt versions and the LLM cache.

Writes are Core statements in short transactions (one per call); reads return SQLModel
instances, detached and fully loaded. Another process may be writing the same SQLite file at
the same time: transactions stay short and writers queue on SQLite's lock (WAL, busy_timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (ColumnElement, Row, Table, bindparam, case, func, insert, literal, or_,
                        select, update)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.sql import Select
from sqlmodel import SQLModel, col

from core.agreement import JudgeAgreement, judge_decisions
from core.claims import Claim, ClaimState, describe, holder_alive
from core.config import load_config, store_url
from core.errors import StoreError
from core.events import Progress, RunStatus, RunSummary
from core.llm.adaptation import Adaptation, AdaptationKind
from core.records import EvaluatorStats, Outcome, RecordResult, Stage
from core.store.cache_reader import SQLiteCacheReader, storage_time
from core.store.checkpoint_writer import SQLiteCheckpointWriter
from core.store.engine import SINGLE_READ, WRITE, StoreTarget, dumps, raw_json, without_nul
from core.store.migrate import migrate
from core.store.models import (
    ContextVersion,
    EvaluationResult,
    JudgeAgreementRow,
    LLMCacheEntry,
    Lineage,
    ModelAdaptationRow,
    MonitoringAlert,
    Pipeline,
    PipelineRun,
    PromptVersion,
    QuarantineAction,
    QuarantinedRecord,
    RecordResultRow,
    utcnow,
)

_M = TypeVar("_M")  # what a one-entity select returns: a table model

QUARANTINE_STATUSES = ("open", "approved", "reprocessed", "discarded")
VERSION_KINDS = ("prompt", "system", "context", "judge")
LINEAGE_KEYS = frozenset({"source", "query", "destination", "table_name", "records_in",
                          "records_out"})
# Cache hits are counted in memory and written with the next write (or at this many), so that
# a cache lookup on the hot path stays a read.
_HIT_FLUSH_AT = 256
# New cache entries wait in memory and are written together: with the next batch of record
# results, when this many wait, or when the oldest has waited this long.
_CACHE_WRITE_AT = 1024
_CACHE_WRITE_AFTER_S = 2.0
# Keys per `IN (...)` when concurrent cache lookups are read together.
_CACHE_READ_CHUNK = 500
_IN_CHUNK = 500
# The state of a record while its run goes (see RecordResultRow.outcome): answered, passed the
# gate, output stored; loaded (or skipped) when the run ends.
PASSED = "passed"

# A quarantined record that no action holds (core.claims).
_NO_CLAIM: dict[str, Any] = {"claim_id": None, "claim_holder": None, "claimed_at": None,
                             "claim_action": None, "claim_output": None, "commit_token": None}


def _table(model: type[SQLModel]) -> Table:
    """The Core table of a table model (SQLModel's classes declare no `__table__` to a checker)."""
    table = getattr(model, "__table__")
    assert isinstance(table, Table)
    return table


_runs = _table(PipelineRun)
_pipelines = _table(Pipeline)
_record_results = _table(RecordResultRow)
_evaluations = _table(EvaluationResult)
_quarantine = _table(QuarantinedRecord)
_actions = _table(QuarantineAction)
_prompts = _table(PromptVersion)
_contexts = _table(ContextVersion)
_cache = _table(LLMCacheEntry)
_lineage = _table(Lineage)
_alerts = _table(MonitoringAlert)
_agreements = _table(JudgeAgreementRow)

# A record that passed was not written: the run stopped first.
_SKIP_PASSED = update(_record_results).where(
    (_record_results.c.run_id == bindparam("b_run"))
    & (_record_results.c.record_id == bindparam("b_record"))
    & (_record_results.c.outcome == PASSED)).values(
        outcome=Outcome.SKIPPED.value, stage=Stage.LOAD.value, reason=bindparam("b_reason"))
# A sink batch refused these records (passed ones; or, resuming into a destination that is
# rebuilt, loaded ones written again).
_MARK_REFUSED = update(_record_results).where(
    (_record_results.c.run_id == bindparam("b_run"))
    & (_record_results.c.record_id == bindparam("b_record"))
    & _record_results.c.outcome.in_([PASSED, Outcome.LOADED.value])).values(
        outcome=Outcome.QUARANTINED.value, stage=Stage.LOAD.value, reason=bindparam("b_reason"),
        error_type=bindparam("b_type"))


@dataclass(slots=True)
class RunStart:
    """What a run is about to do: the snapshot that makes it reproducible."""

    run_id: str
    pipeline: str
    pipeline_version: str
    pipeline_path: str
    started_at: datetime
    config: dict[str, Any]  # the YAML as written, placeholders unresolved
    model: str
    provider: str
    prompt_hash: str
    system_hash: str | None
    context_hashes: dict[str, str]
    params: dict[str, Any]
    options: dict[str, Any]
    source: str
    destination: str
    shard: Any = None  # core.sharding.Shard: this run is one shard of a group


class Store:
    """The history store. Open with `await Store.open()` (or `async with await Store.open()`)."""

    def __init__(self, engine: AsyncEngine, target: StoreTarget) -> None:
        self._engine = engine
        self._writer = engine.execution_options(**{WRITE: True})
        # Every read is one statement: no transaction around it (see engine.SINGLE_READ).
        self._reader = engine.execution_options(**{SINGLE_READ: True})
        self._sessions = async_sessionmaker(self._reader, class_=AsyncSession,
                                            expire_on_commit=False)
        self._target = target
        self._pending_hits: Counter[str] = Counter()
        self._pending_cache: dict[str, dict[str, Any]] = {}
        self._pending_cache_since = 0.0
        # SQLite: lookups read the file inline (see cache_reader); PostgreSQL: batched async reads.
        self._cache_file = SQLiteCacheReader(target.path) if target.path is not None else None
        # SQLite: checkpoints in one thread hop each (see checkpoint_writer).
        self._checkpoint_file = SQLiteCheckpointWriter(target.path) if target.path is not None \
            else None
        self._cache_waiting: dict[str, list[asyncio.Future[dict[str, Any] | None]]] = {}
        self._cache_reader: asyncio.Task[None] | None = None
        self.url = target.display
        # PostgreSQL text cannot hold NUL; record data and model answers sometimes do.
        self._text = without_nul if engine.dialect.name == "postgresql" else _same

    # -- lifecycle ---------------------------------------------------------------------------

    @classmethod
    async def open(cls, url: str | None = None) -> "Store":
        """Open (and create or upgrade) the store at `url`, by default Loom's configured one."""
        target = StoreTarget.parse(url or store_url(load_config()))
        target.prepare()
        try:
            await migrate(target)
        except (SQLAlchemyError, OSError) as exc:
            raise target.error("open", exc) from exc
        return cls(target.create_engine(), target)

    async def close(self) -> None:
        try:
            if self._cache_reader is not None:
                await self._cache_reader
            await self.cache_flush()
        finally:
            if self._cache_file is not None:
                self._cache_file.close()
            if self._checkpoint_file is not None:
                self._checkpoint_file.close()
            await self._engine.dispose()

    async def __aenter__(self) -> "Store":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- plumbing ----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        """One short write transaction; database failures become one-line StoreErrors."""
        try:
            async with self._writer.begin() as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise self._target.error("write to", exc) from exc

    async def _all(self, statement: Select[_M]) -> list[_M]:
        try:
            async with self._sessions() as session:
                return list((await session.scalars(statement)).all())
        except SQLAlchemyError as exc:
            raise self._target.error("read", exc) from exc

    async def _rows(self, statement: Select[Any]) -> list[Any]:
        """Rows of several columns (not ORM objects)."""
        try:
            async with self._reader.connect() as conn:
                return list((await conn.execute(statement)).all())
        except SQLAlchemyError as exc:
            raise self._target.error("read", exc) from exc

    async def _first(self, statement: Select[_M]) -> _M | None:
        rows = await self._all(statement.limit(1))
        return rows[0] if rows else None

    def _upsert(self, table: Table, values: dict[str, Any], keys: Sequence[str],
                update_columns: Sequence[str] | None) -> Any:
        """INSERT … ON CONFLICT: update `update_columns`, or do nothing when None."""
        dialect = postgresql if self._engine.dialect.name == "postgresql" else sqlite
        statement = dialect.insert(table).values(values)
        if update_columns is None:
            return statement.on_conflict_do_nothing(index_elements=list(keys))
        return statement.on_conflict_do_update(
            index_elements=list(keys),
            set_={name: statement.excluded[name] for name in update_columns})

    # -- what models refused (core.llm.adaptation) ---------------------------------------------

    async def load_adaptations(self) -> list[tuple[tuple[str, str, str], Adaptation]]:
        rows = await self._all(select(ModelAdaptationRow)
                               .order_by(col(ModelAdaptationRow.learned_at)))
        found = []
        for row in rows:
            try:
                found.append(((row.provider, row.base_url, row.model),
                              Adaptation(AdaptationKind(row.kind), row.value, row.reason)))
            except ValueError:
                continue  # a kind a newer Loom wrote
        return found

    async def save_adaptation(self, key: tuple[str, str, str], adaptation: Adaptation) -> None:
        provider, base_url, model = key
        values = {"provider": provider, "base_url": base_url, "model": model,
                  "kind": adaptation.kind.value, "value": adaptation.value,
                  "reason": adaptation.reason[:500], "learned_at": utcnow()}
        async with self._write() as conn:
            await conn.execute(self._upsert(
                _table(ModelAdaptationRow), values,
                ["provider", "base_url", "model", "kind", "value"], ["reason", "learned_at"]))

    # -- pipelines and versions ----------------------------------------------------------------

    async def record_pipeline(self, name: str, version: str, description: str | None,
                              definition: dict[str, Any], path: str) -> None:
        """Remember a pipeline's latest definition (insert or update)."""
        async with self._write() as conn:
            await conn.execute(self._pipeline_upsert(name, version, description, definition, path))

    async def list_pipelines(self) -> list[Pipeline]:
        """Every pipeline the store has seen, by name."""
        return await self._all(select(Pipeline).order_by(_pipelines.c.name))

    def _pipeline_upsert(self, name: str, version: str, description: str | None,
                         definition: dict[str, Any], path: str | None) -> Any:
        now = utcnow()
        values = {"name": name, "version": str(version), "description": description,
                  "definition": definition, "path": path, "created_at": now, "updated_at": now}
        return self._upsert(_pipelines, values, ["name"],
                            ["version", "description", "definition", "path", "updated_at"])

    async def save_version(self, kind: str, content_hash: str, content: str, *, path: str,
                           pipeline: str, name: str | None = None) -> None:
        """Keep a prompt, system or context text under its hash; saving it again does nothing."""
        if kind not in VERSION_KINDS:
            raise ValueError(f"version kind must be one of {VERSION_KINDS}, not {kind!r}")
        values: dict[str, Any] = {"hash": content_hash, "pipeline_name": pipeline, "path": path,
                                  "content": content, "created_at": utcnow()}
        if kind == "context":
            values["name"] = name or Path(path).stem
            statement = self._upsert(_contexts, values, ["hash"], None)
        else:
            values["kind"] = kind
            statement = self._upsert(_prompts, values, ["hash"], None)
        async with self._write() as conn:
            await conn.execute(statement)

    async def get_version(self, content_hash: str) -> tuple[str, str] | None:
        """(kind, content) of a saved text, or None."""
        prompt = await self._first(select(PromptVersion)
                                   .where(col(PromptVersion.hash) == content_hash))
        if prompt is not None:
            return prompt.kind, prompt.content
        context = await self._first(select(ContextVersion)
                                    .where(col(ContextVersion.hash) == content_hash))
        if context is not None:
            return "context", context.content
        return None

    # -- runs ----------------------------------------------------------------------------------

    async def start_run(self, run: RunStart) -> None:
        """Record a run as `running`, with its configuration snapshot."""
        description = run.config.get("description") if isinstance(run.config, dict) else None
        values: dict[str, Any] = {
            "run_id": run.run_id, "pipeline_name": run.pipeline,
            "pipeline_version": str(run.pipeline_version), "pipeline_path": run.pipeline_path,
            "started_at": run.started_at, "updated_at": run.started_at,
            "status": RunStatus.RUNNING, "config": run.config, "model": run.model,
            "provider": run.provider, "prompt_hash": run.prompt_hash,
            "system_hash": run.system_hash, "context_hashes": run.context_hashes,
            "params": run.params, "options": run.options, "source": run.source,
            "destination": run.destination,
            "cost_usd": 0.0, "cost_by_stage": {}, "cost_by_model": {}, "warnings": [], "extra": {},
            "shard_group": run.shard.group if run.shard is not None else None,
            "shard_index": run.shard.index if run.shard is not None else None,
            "shard_count": run.shard.count if run.shard is not None else None,
        }
        async with self._write() as conn:
            # The run points at its pipeline: keep the pipeline's latest definition too.
            await conn.execute(self._pipeline_upsert(run.pipeline, run.pipeline_version,
                                                     description, run.config, run.pipeline_path))
            await conn.execute(insert(_runs), values)

    async def heartbeat(self, run_id: str, progress: Progress) -> None:
        """Write a running run's counts so far; `updated_at` shows it is alive."""
        values = {
            "updated_at": utcnow(), "extracted": progress.extracted,
            "transformed": progress.transformed, "evaluated": progress.evaluated,
            "loaded": progress.loaded, "quarantined": progress.quarantined,
            "skipped": progress.skipped, "cost_usd": progress.cost_usd,
            "input_tokens": progress.input_tokens, "output_tokens": progress.output_tokens,
            "llm_calls": progress.llm_calls, "cache_hits": progress.cache_hits,
            "cache_read_tokens": progress.cache_read_tokens,
            "cache_write_tokens": progress.cache_write_tokens,
            "reasoning_tokens": progress.reasoning_tokens,
            "savings_usd": {"prompt_cache": round(progress.prompt_cache_saved_usd, 6)}
            if progress.cache_read_tokens or progress.cache_write_tokens else {},
            "latency_p50_s": progress.latency_p50_s, "latency_p95_s": progress.latency_p95_s,
            "duration_s": progress.elapsed_s, "concurrency_final": progress.concurrency,
        }
        async with self._write() as conn:
            result = await conn.execute(update(_runs).where(_runs.c.run_id == run_id).values(values))
            self._require_run(result.rowcount, run_id)

    def _require_run(self, rowcount: int, run_id: str) -> None:
        if rowcount == 0:
            raise StoreError(f"history store {self._target.where}: run {run_id} was never started")

    async def write_results(self, run_id: str, pipeline: str, results: list[RecordResult]) -> None:
        """Write a batch of finished records, and a quarantine row for each quarantined one.

        One transaction, one executemany per table, and each JSON value serialized exactly once
        even when it goes to two tables. (The engine itself writes through `checkpoint`.)
        """
        if not results:
            return
        rows, quarantined = self._result_rows(run_id, pipeline, results, passed=Outcome.LOADED.value)
        async with self._write() as conn:
            await conn.execute(insert(_record_results), rows)
            if quarantined:
                await conn.execute(insert(_quarantine), quarantined)
            await self._flush_cache(conn)

    def _result_rows(self, run_id: str, pipeline: str, results: Sequence[RecordResult], *,
                     passed: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """record_results rows (a record that passed the gate stored as `passed`) and the
        quarantine rows of the quarantined ones."""
        now = utcnow()
        text = self._text
        rows: list[dict[str, Any]] = []
        quarantined: list[dict[str, Any]] = []
        for result in results:
            record = result.record
            transform = result.transform
            input_tokens, output_tokens, cost, latency, made = _call_totals(result)
            tokens = result.tokens
            output = raw_json(transform.output) if transform is not None else None
            scores = raw_json([score.to_dict() for score in result.scores])
            verdict = raw_json(result.verdict.to_dict()) if result.verdict is not None else None
            outcome = result.outcome.value
            if outcome == Outcome.LOADED.value:
                outcome = passed
            stage = result.stage.value if result.stage is not None else None
            reason = text(result.reason)
            record_id = text(record.id)
            data = raw_json(record.data)
            rows.append({
                "run_id": run_id, "record_id": record_id, "ordinal": record.ordinal,
                "outcome": outcome, "stage": stage, "reason": reason,
                "error_type": result.error_type, "input": data, "output": output, "scores": scores,
                "verdict": verdict, "input_tokens": input_tokens, "output_tokens": output_tokens,
                "cost_usd": cost, "latency_s": latency,
                "cached": transform is not None and transform.cached, "llm_calls": made,
                "cache_read_tokens": tokens.cache_read, "cache_write_tokens": tokens.cache_write,
                "reasoning_tokens": tokens.reasoning,
                "prompt_cache_saved_usd": tokens.prompt_cache_saved_usd,
                "created_at": now,
            })
            if outcome == Outcome.QUARANTINED.value:
                quarantined.append(self._quarantine_row(run_id, pipeline, result, data, output,
                                                        scores, verdict, now))
        return rows, quarantined

    def _quarantine_row(self, run_id: str, pipeline: str, result: RecordResult, data: Any,
                        output: Any, scores: Any, verdict: Any, now: datetime) -> dict[str, Any]:
        text = self._text
        record = result.record
        transform = result.transform
        stage = result.stage.value if result.stage is not None else None
        return {
            "run_id": run_id, "pipeline_name": pipeline, "record_id": text(record.id),
            "ordinal": record.ordinal, "stage": stage or _inferred_stage(result),
            "reason": text(result.reason) or text(record.extract_error),
            "error_type": result.error_type, "input": data, "output": output,
            "raw_output": text(transform.raw_text) if transform is not None else None,
            "messages": raw_json(transform.messages) if transform is not None else None,
            "scores": scores, "verdict": verdict, "quarantined_at": now,
            "status": "open", "resolved_at": None, "resolution_note": None,
            "final_output": None,
        }

    # -- checkpoints: what makes a run resumable (core.resume) ----------------------------------

    async def checkpoint(self, run_id: str, pipeline: str, results: Sequence[RecordResult], *,
                         refused: Sequence[RecordResult] = (),
                         replaced: Sequence[int] = ()) -> None:
        """The engine's checkpoint, in one short transaction, about ten times a second:

        - `replaced`: rows (ids) of a resumed run's records that are being processed again.
        - `results`: records just transformed and evaluated. One that passed the gate is stored
          `passed`, its output kept, so that a crash never pays for it again; the others with
          their final outcome (and a quarantine row).
        - `refused`: records of a batch the sink refused (quarantined at stage load): their
          `passed` rows are quarantined, with a quarantine row each.
        A record's result is always checkpointed before a sink batch holds it.
        """
        if not (results or refused or replaced):
            return
        if self._checkpoint_file is not None:
            await self._checkpoint_sqlite(self._checkpoint_file, run_id, pipeline, results,
                                          refused, replaced)
            return
        rows, quarantined = self._result_rows(run_id, pipeline, results, passed=PASSED)
        refusals: list[dict[str, Any]] = []
        if refused:
            now = utcnow()
            text = self._text
            for result in refused:
                data = raw_json(result.record.data)
                output = raw_json(result.output)
                scores = raw_json([score.to_dict() for score in result.scores])
                verdict = raw_json(result.verdict.to_dict()) if result.verdict is not None else None
                refusals.append({"b_run": run_id, "b_record": text(result.record.id),
                                 "b_reason": text(result.reason), "b_type": result.error_type})
                quarantined.append(self._quarantine_row(run_id, pipeline, result, data, output,
                                                        scores, verdict, now))
        async with self._write() as conn:
            for start in range(0, len(replaced), _IN_CHUNK):
                await conn.execute(_record_results.delete().where(
                    _record_results.c.id.in_(list(replaced[start:start + _IN_CHUNK]))))
            if rows:
                await conn.execute(insert(_record_results), rows)
            if refusals:
                await conn.execute(_MARK_REFUSED, refusals)
            if quarantined:
                await conn.execute(insert(_quarantine), quarantined)

    async def _checkpoint_sqlite(self, writer: SQLiteCheckpointWriter, run_id: str,
                                 pipeline: str, results: Sequence[RecordResult],
                                 refused: Sequence[RecordResult], replaced: Sequence[int]) -> None:
        """`checkpoint` on SQLite: the same rows, as tuples, in one thread hop."""
        now = storage_time(utcnow())
        records: list[tuple[Any, ...]] = []
        quarantined: list[tuple[Any, ...]] = []
        loaded = Outcome.LOADED.value
        for result in results:
            record = result.record
            transform = result.transform
            input_tokens, output_tokens, cost, latency, made = _call_totals(result)
            tokens = result.tokens
            output = dumps(transform.output) if transform is not None and \
                transform.output is not None else None
            scores = dumps([score.to_dict() for score in result.scores])
            verdict = dumps(result.verdict.to_dict()) if result.verdict is not None else None
            outcome = result.outcome.value
            stage = result.stage.value if result.stage is not None else None
            data = dumps(record.data)
            records.append((
                run_id, record.id, record.ordinal, PASSED if outcome == loaded else outcome,
                stage, result.reason, result.error_type, data, output, scores, verdict,
                input_tokens, output_tokens, cost, latency,
                1 if transform is not None and transform.cached else 0, made, now,
                tokens.cache_read, tokens.cache_write, tokens.reasoning,
                tokens.prompt_cache_saved_usd))
            if outcome == Outcome.QUARANTINED.value:
                quarantined.append(self._quarantine_tuple(run_id, pipeline, result, data, output,
                                                          scores, verdict, now))
        refusals: list[tuple[Any, ...]] = []
        for result in refused:
            output = dumps(result.output) if result.output is not None else None
            scores = dumps([score.to_dict() for score in result.scores])
            verdict = dumps(result.verdict.to_dict()) if result.verdict is not None else None
            refusals.append((result.reason, result.error_type, run_id, result.record.id))
            quarantined.append(self._quarantine_tuple(run_id, pipeline, result,
                                                      dumps(result.record.data), output, scores,
                                                      verdict, now))
        try:
            await writer.write(records, quarantined, refusals, replaced)
        except sqlite3.Error as exc:
            raise self._target.error("write to", exc) from exc

    @staticmethod
    def _quarantine_tuple(run_id: str, pipeline: str, result: RecordResult, data: str,
                          output: str | None, scores: str, verdict: str | None,
                          now: str) -> tuple[Any, ...]:
        record = result.record
        transform = result.transform
        stage = result.stage.value if result.stage is not None else None
        return (run_id, pipeline, record.id, record.ordinal, stage or _inferred_stage(result),
                result.reason or record.extract_error, result.error_type, data, output,
                transform.raw_text if transform is not None else None,
                dumps(transform.messages) if transform is not None else None, scores, verdict,
                now, "open", None, None, None)

    async def skip_passed(self, run_id: str, record_ids: Sequence[str], reason: str) -> None:
        """Records that passed but that no sink batch took (the run stopped first): skipped.
        Their output stays: resuming the run loads them without a call."""
        if not record_ids:
            return
        reason = self._text(reason) or ""
        async with self._write() as conn:
            await conn.execute(_SKIP_PASSED, [
                {"b_run": run_id, "b_record": self._text(record_id), "b_reason": reason}
                for record_id in record_ids])

    async def begin_commit(self, run_id: str, token: str | None) -> None:
        """The sink is about to publish: a crash from here on is resolved with `token`."""
        async with self._write() as conn:
            await conn.execute(update(_runs).where(_runs.c.run_id == run_id).values(
                commit_state="committing", commit_token=token, updated_at=utcnow()))

    async def finish_commit(self, run_id: str) -> int:
        """The run's load is published: its passed records are loaded. Call it once every record
        that was not written is skipped (`skip_passed`). Returns how many."""
        async with self._write() as conn:
            result = await conn.execute(
                update(_record_results).where((_record_results.c.run_id == run_id)
                                              & (_record_results.c.outcome == PASSED))
                .values(outcome=Outcome.LOADED.value))
            await conn.execute(update(_runs).where(_runs.c.run_id == run_id).values(
                commit_state="committed", updated_at=utcnow()))
            return int(result.rowcount)

    async def hold_run(self, run_id: str) -> None:
        """A partial `replace` run published nothing: its passing records (skipped, outputs
        kept) wait to be released (core.release)."""
        async with self._write() as conn:
            await conn.execute(update(_runs).where(_runs.c.run_id == run_id).values(
                commit_state="held", updated_at=utcnow()))

    async def set_commit_state(self, run_id: str, state: str | None, *,
                               only_from: str | None = None) -> bool:
        """Move a run's commit state (for a release: held -> releasing -> released), only
        from `only_from` when given. Returns whether this call moved it: of two releases of
        one run, one wins."""
        condition = _runs.c.run_id == run_id
        if only_from is not None:
            condition = condition & (_runs.c.commit_state == only_from)
        async with self._write() as conn:
            result = await conn.execute(update(_runs).where(condition).values(
                commit_state=state, updated_at=utcnow()))
            return result.rowcount == 1

    async def finish_release(self, run_id: str, row_ids: Sequence[int], note: str) -> None:
        """A held run's records are at its destination: loaded, and the run says so."""
        async with self._write() as conn:
            for start in range(0, len(row_ids), _IN_CHUNK):
                await conn.execute(update(_record_results).where(
                    _record_results.c.id.in_(list(row_ids[start:start + _IN_CHUNK]))).values(
                    outcome=Outcome.LOADED.value, reason=None))
            run = (await conn.execute(select(_runs.c.loaded, _runs.c.skipped, _runs.c.status_reason)
                                      .where(_runs.c.run_id == run_id))).one()
            reason = "; ".join(part for part in (run.status_reason, note) if part)
            await conn.execute(update(_runs).where(_runs.c.run_id == run_id).values(
                loaded=run.loaded + len(row_ids), skipped=max(0, run.skipped - len(row_ids)),
                status_reason=self._text(reason), commit_state="released", commit_token=None,
                claim_holder=None, claimed_at=None, updated_at=utcnow()))

    async def claim_run(self, run_id: str, *, status: str, updated_at: datetime,
                        options: dict[str, Any]) -> int | None:
        """Take over an unfinished run to resume it, if nobody else did since it was read as
        (`status`, `updated_at`): it is `running` again, with one more attempt. Returns the
        attempt's number, or None when another process claimed it first."""
        async with self._write() as conn:
            result = await conn.execute(
                update(_runs).where((_runs.c.run_id == run_id) & (_runs.c.status == status)
                                    & (_runs.c.updated_at == updated_at))
                .values(status=RunStatus.RUNNING, finished_at=None, status_reason=None,
                        error_message=None, updated_at=utcnow(), options=options,
                        attempts=_runs.c.attempts + 1))
            if result.rowcount != 1:
                return None
            attempts = (await conn.execute(
                select(_runs.c.attempts).where(_runs.c.run_id == run_id))).scalar_one()
            return int(attempts)

    async def resume_rows(self, run_id: str, *, page: int = 5000
                          ) -> AsyncIterator[Sequence[Row[Any]]]:
        """A run's record rows for resuming it, a page at a time by row id: everything but
        the record's input and output (read later for the records that need them)."""
        c = _record_results.c
        columns = (c.id, c.record_id, c.ordinal, c.outcome, c.stage, c.error_type,
                   c.output.is_not(None).label("has_output"), c.verdict, c.scores,
                   c.input_tokens, c.output_tokens, c.cost_usd, c.latency_s, c.cached, c.llm_calls,
                   c.cache_read_tokens, c.cache_write_tokens, c.reasoning_tokens,
                   c.prompt_cache_saved_usd)
        after = 0
        while True:
            try:
                async with self._reader.connect() as conn:
                    rows = (await conn.execute(
                        select(*columns).where((c.run_id == run_id) & (c.id > after))
                        .order_by(c.id).limit(page))).all()
            except SQLAlchemyError as exc:
                raise self._target.error("read", exc) from exc
            if not rows:
                return
            yield rows
            after = rows[-1].id
            if len(rows) < page:
                return

    async def stored_results(self, row_ids: Sequence[int]) -> list[RecordResultRow]:
        """Record rows by id, whole (input and output too)."""
        found: list[RecordResultRow] = []
        for start in range(0, len(row_ids), _IN_CHUNK):
            found.extend(await self._all(select(RecordResultRow).where(
                _record_results.c.id.in_(list(row_ids[start:start + _IN_CHUNK])))))
        return found

    async def record_ids_with_outcome(self, run_id: str, record_ids: Sequence[str],
                                      outcomes: Sequence[str]) -> set[str]:
        """Which of these record ids have a row of the run with one of `outcomes`."""
        c = _record_results.c
        found: set[str] = set()
        for start in range(0, len(record_ids), _IN_CHUNK):
            found.update(await self._all(select(c.record_id).where(
                (c.run_id == run_id) & c.outcome.in_(list(outcomes))
                & c.record_id.in_(list(record_ids[start:start + _IN_CHUNK])))))
        return found

    async def set_outcomes(self, row_ids: Sequence[int], outcome: str, *,
                           stage: str | None = None, reason: str | None = None) -> None:
        """Set the outcome of record rows by id (and their stage and reason, when given)."""
        values: dict[str, Any] = {"outcome": outcome}
        if stage is not None:
            values["stage"] = stage
        if reason is not None:
            values["reason"] = self._text(reason)
        async with self._write() as conn:
            for start in range(0, len(row_ids), _IN_CHUNK):
                await conn.execute(update(_record_results).where(
                    _record_results.c.id.in_(list(row_ids[start:start + _IN_CHUNK]))).values(values))

    async def reset_commit_state(self, run_id: str) -> None:
        """A resumed attempt settled what the previous one published: it starts afresh."""
        async with self._write() as conn:
            await conn.execute(update(_runs).where(_runs.c.run_id == run_id).values(
                commit_state=None, commit_token=None))

    async def unfinished_runs(self, *, pipeline: str | None = None, path: str | None = None,
                              limit: int = 50) -> list[PipelineRun]:
        """Runs that may be resumed, newest first: `running` ones (alive or not: see
        core.resume.is_alive) and stopped ones that left records skipped."""
        statement = select(PipelineRun).where(or_(
            _runs.c.status == RunStatus.RUNNING,
            _runs.c.status.in_([RunStatus.CANCELLED, RunStatus.FAILED, RunStatus.PARTIAL])
            & (_runs.c.skipped > 0),
            (_runs.c.status == RunStatus.FAILED) & (_runs.c.attempts > 1)))
        if pipeline is not None:
            statement = statement.where(col(PipelineRun.pipeline_name) == pipeline)
        if path is not None:  # the pipeline is its file too: a copy's runs are not this one's
            statement = statement.where(_runs.c.pipeline_path == path)
        statement = statement.order_by(_runs.c.started_at.desc(), _runs.c.run_id.desc())
        return await self._all(statement.limit(limit))

    async def demote_loaded(self, run_id: str, reason: str, *, quarantine: bool = False,
                            from_outcome: str = Outcome.LOADED.value) -> int:
        """Records of a run written as loaded (or `from_outcome`: passed, for a load that was
        never published) that did not reach the destination after all.

        The sink's commit failed (`quarantine=True`: each becomes an open quarantined record at
        stage `load`, with its input, output, scores and verdict) or a `replace` load was
        abandoned (they become skipped). Returns how many records changed.
        """
        outcome = Outcome.QUARANTINED.value if quarantine else Outcome.SKIPPED.value
        reason = self._text(reason) or ""
        loaded = (_record_results.c.run_id == run_id) & (
            _record_results.c.outcome == from_outcome)
        async with self._write() as conn:
            if quarantine:
                pipeline = select(_runs.c.pipeline_name).where(_runs.c.run_id == run_id) \
                    .scalar_subquery()
                now = utcnow()
                copied = select(
                    _record_results.c.run_id, pipeline, _record_results.c.record_id,
                    _record_results.c.ordinal, literal(Stage.LOAD.value), literal(reason),
                    _record_results.c.input, _record_results.c.output, _record_results.c.scores,
                    _record_results.c.verdict, literal(now, _quarantine.c.quarantined_at.type),
                    literal("open"),
                ).where(loaded).order_by(_record_results.c.id)
                await conn.execute(insert(_quarantine).from_select(
                    ["run_id", "pipeline_name", "record_id", "ordinal", "stage", "reason", "input",
                     "output", "scores", "verdict", "quarantined_at", "status"], copied))
            result = await conn.execute(update(_record_results).where(loaded).values(
                outcome=outcome, stage=Stage.LOAD.value, reason=reason))
            return int(result.rowcount)

    async def finish_run(self, summary: RunSummary, evaluator_stats: list[EvaluatorStats],
                         lineage: dict[str, Any] | None = None, *, resumed: bool = False) -> None:
        """Close a run: final status, counts, cost, latency, per-evaluator stats and lineage.
        A `resumed` run's statistics and lineage replace those an earlier attempt wrote."""
        if lineage is not None and not LINEAGE_KEYS.issuperset(lineage):
            unknown = ", ".join(sorted(set(lineage) - LINEAGE_KEYS))
            raise ValueError(f"unknown lineage keys: {unknown}")
        now = utcnow()
        status_reason = self._text(summary.status_reason)
        values = {
            "status": summary.status, "status_reason": status_reason,
            "error_message": status_reason if summary.status == RunStatus.FAILED else None,
            "finished_at": now, "updated_at": now, "extracted": summary.extracted,
            "loaded": summary.loaded, "quarantined": summary.quarantined,
            "skipped": summary.skipped, "rejection_rate": summary.rejection_rate,
            "cost_usd": summary.cost_usd, "cost_by_stage": summary.cost_by_stage,
            "cost_by_model": summary.cost_by_model, "input_tokens": summary.input_tokens,
            "output_tokens": summary.output_tokens, "llm_calls": summary.llm_calls,
            "cache_hits": summary.cache_hits, "duration_s": summary.duration_s,
            "latency_p50_s": summary.latency_p50_s, "latency_p95_s": summary.latency_p95_s,
            "latency_p99_s": summary.latency_p99_s, "warnings": list(summary.warnings),
            "extra": summary.extra, "concurrency": summary.concurrency,
            "concurrency_min": summary.concurrency_min,
            "concurrency_final": summary.concurrency_final, "throttled": summary.throttled,
            "retries": summary.retries, "budget_usd": summary.budget_usd,
            "cache_read_tokens": summary.cache_read_tokens,
            "cache_write_tokens": summary.cache_write_tokens,
            "reasoning_tokens": summary.reasoning_tokens,
            "savings_usd": dict(summary.savings_usd),
        }
        stats: list[dict[str, Any]] = [{
            "run_id": summary.run_id, "evaluator": s.evaluator, "type": s.type,
            "threshold": s.threshold, "weight": s.weight, "count": s.count, "passed": s.passed,
            "errors": s.errors, "mean": s.mean, "std": s.std, "min": s.min, "max": s.max,
            "p50": s.p50, "p95": s.p95, "pass_rate": s.pass_rate, "cost_usd": s.cost_usd,
            "details": {}, "created_at": now,
        } for s in evaluator_stats]
        async with self._write() as conn:
            result = await conn.execute(
                update(_runs).where(_runs.c.run_id == summary.run_id).values(values))
            self._require_run(result.rowcount, summary.run_id)
            if resumed:
                await conn.execute(_evaluations.delete().where(
                    _evaluations.c.run_id == summary.run_id))
                await conn.execute(_lineage.delete().where(_lineage.c.run_id == summary.run_id))
            if stats:
                await conn.execute(insert(_evaluations), stats)
            if lineage is not None:
                await conn.execute(insert(_lineage),
                                   {**dict.fromkeys(LINEAGE_KEYS), **lineage,
                                    "run_id": summary.run_id, "created_at": now})
            await self._flush_cache(conn)

    async def list_runs(self, *, pipeline: str | None = None, status: str | None = None,
                        limit: int = 50, before: tuple[datetime, str] | None = None,
                        after: tuple[datetime, str] | None = None,
                        oldest: bool = False) -> list[PipelineRun]:
        """Runs, newest first. Page down with `before=(last.started_at, last.run_id)`, up with
        `after=(first.started_at, first.run_id)` (the `limit` runs just newer than it); `oldest`
        gives the last page (the `limit` oldest runs). Every page comes back newest first."""
        statement = select(PipelineRun).where(*self._run_filters(pipeline, status))
        if before is not None:
            started_at, run_id = before
            statement = statement.where(or_(
                _runs.c.started_at < started_at,
                (_runs.c.started_at == started_at) & (_runs.c.run_id < run_id)))
        if after is not None:
            started_at, run_id = after
            statement = statement.where(or_(
                _runs.c.started_at > started_at,
                (_runs.c.started_at == started_at) & (_runs.c.run_id > run_id)))
        if after is not None or oldest:
            # Walk the index upwards from the anchor, then give the page back newest first.
            statement = statement.order_by(_runs.c.started_at, _runs.c.run_id)
            return list(reversed(await self._all(statement.limit(limit))))
        statement = statement.order_by(_runs.c.started_at.desc(), _runs.c.run_id.desc())
        return await self._all(statement.limit(limit))

    async def count_runs(self, *, pipeline: str | None = None, status: str | None = None) -> int:
        rows = await self._all(select(func.count()).select_from(_runs)
                               .where(*self._run_filters(pipeline, status)))
        return int(rows[0])

    @staticmethod
    def _run_filters(pipeline: str | None, status: str | None) -> list[ColumnElement[bool]]:
        filters: list[ColumnElement[bool]] = []
        if pipeline is not None:
            filters.append(_runs.c.pipeline_name == pipeline)
        if status is not None:
            filters.append(_runs.c.status == status)
        return filters

    async def shard_group_runs(self, groups: Sequence[str], *,
                               pipeline: str | None = None) -> list[PipelineRun]:
        """Every run of these shard groups (retries included), newest first."""
        if not groups:
            return []
        statement = select(PipelineRun).where(_runs.c.shard_group.in_(sorted(set(groups))))
        if pipeline is not None:
            statement = statement.where(col(PipelineRun.pipeline_name) == pipeline)
        statement = statement.order_by(_runs.c.started_at.desc(), _runs.c.run_id.desc())
        return await self._all(statement)

    async def count_history_rows(self, *, pipeline: str | None = None,
                                 status: str | None = None) -> int:
        """The lines a history of these runs shows with shard groups gathered: each run that
        matches and is not a shard, plus, for each shard group with a matching run, its
        summed line and every one of its runs (retries too)."""
        filters = self._run_filters(pipeline, status)
        touched = (select(_runs.c.pipeline_name, _runs.c.shard_group)
                   .where(*filters, _runs.c.shard_group.is_not(None)).distinct().subquery())
        members = (select(func.count()).select_from(_runs).join(touched, (
            _runs.c.pipeline_name == touched.c.pipeline_name)
            & (_runs.c.shard_group == touched.c.shard_group)).scalar_subquery())
        statement = select(
            select(func.count()).select_from(_runs)
            .where(*filters, _runs.c.shard_group.is_(None)).scalar_subquery(),
            select(func.count()).select_from(touched).scalar_subquery(), members)
        try:
            async with self._reader.connect() as conn:
                alone, groups, grouped = (await conn.execute(statement)).one()
        except SQLAlchemyError as exc:
            raise self._target.error("read", exc) from exc
        return int(alone) + int(groups) + int(grouped)

    async def get_run(self, run_id: str) -> PipelineRun | None:
        """A run by its id or by a prefix of it that matches one run only."""
        run = await self._first(select(PipelineRun).where(col(PipelineRun.run_id) == run_id))
        if run is not None or not run_id:
            return run
        # substr, not LIKE: exact case on both SQLite and PostgreSQL, no escaping.
        matches = await self._all(select(PipelineRun)
                                  .where(func.substr(_runs.c.run_id, 1, len(run_id)) == run_id)
                                  .order_by(_runs.c.run_id).limit(3))
        if len(matches) > 1:
            shown = ", ".join(m.run_id for m in matches[:2])
            raise StoreError(f"run id {run_id!r} matches more than one run ({shown}, …): "
                             "give more of it")
        return matches[0] if matches else None

    async def last_run_per_pipeline(self) -> dict[str, PipelineRun]:
        """Each pipeline's newest run, by name (the newest of any file with that name)."""
        return {run.pipeline_name: run for run in await self.last_run_per_file()}

    async def last_run_per_file(self) -> list[PipelineRun]:
        """Each pipeline file's newest run (a pipeline is its name and its file), oldest first."""
        rank = func.row_number().over(
            partition_by=(_runs.c.pipeline_name, _runs.c.pipeline_path),
            order_by=(_runs.c.started_at.desc(), _runs.c.run_id.desc())).label("rank")
        newest = select(_runs.c.run_id, rank).subquery()
        statement = (select(PipelineRun).join(newest, newest.c.run_id == _runs.c.run_id)
                     .where(newest.c.rank == 1)
                     .order_by(_runs.c.pipeline_name, _runs.c.started_at, _runs.c.run_id))
        return await self._all(statement)

    async def pipeline_files(self, names: Sequence[str] | None = None) -> dict[str, list[str]]:
        """The files each pipeline name has run from, oldest first; only the `names` asked."""
        statement = (select(_runs.c.pipeline_name, _runs.c.pipeline_path,
                            func.min(_runs.c.started_at).label("first"))
                     .group_by(_runs.c.pipeline_name, _runs.c.pipeline_path))
        if names is not None:
            statement = statement.where(_runs.c.pipeline_name.in_(list(names)))
        files: dict[str, list[tuple[Any, str]]] = {}
        for name, path, first in await self._rows(statement):
            if path is not None:
                files.setdefault(name, []).append((first, path))
        return {name: [path for _, path in sorted(found, key=lambda item: (str(item[0]), item[1]))]
                for name, found in files.items()}

    async def trailing_runs(self, pipeline: str, *, before: datetime, exclude_run_id: str | None = None,
                            statuses: Sequence[str] = (RunStatus.SUCCESS, RunStatus.PARTIAL),
                            limit: int = 10) -> list[PipelineRun]:
        """A pipeline's newest runs in `statuses` that started before `before`: the window a
        run is compared with."""
        statement = select(PipelineRun).where(
            col(PipelineRun.pipeline_name) == pipeline, _runs.c.status.in_(list(statuses)),
            _runs.c.started_at <= before)
        if exclude_run_id is not None:
            # Runs of the same file as that run: a copy with the same name is another pipeline.
            own = _runs.alias("own")
            statement = statement.where(
                _runs.c.run_id != exclude_run_id,
                _runs.c.pipeline_path.is_not_distinct_from(
                    select(own.c.pipeline_path).where(own.c.run_id == exclude_run_id)
                    .scalar_subquery()))
        statement = statement.order_by(_runs.c.started_at.desc(), _runs.c.run_id.desc())
        return await self._all(statement.limit(limit))

    async def evaluation_results_for(self, run_ids: Sequence[str]) -> list[EvaluationResult]:
        """Per-evaluator statistics of several runs, in one query."""
        if not run_ids:
            return []
        return await self._all(select(EvaluationResult)
                               .where(_evaluations.c.run_id.in_(list(run_ids)))
                               .order_by(_evaluations.c.id))

    async def evaluation_results(self, run_id: str) -> list[EvaluationResult]:
        return await self._all(select(EvaluationResult)
                               .where(col(EvaluationResult.run_id) == run_id)
                               .order_by(_evaluations.c.id))

    async def record_results(self, run_id: str, *, after_ordinal: int | None = None,
                             limit: int = 100) -> list[RecordResultRow]:
        """A run's records in source order; page with `after_ordinal=last.ordinal`."""
        statement = select(RecordResultRow).where(col(RecordResultRow.run_id) == run_id)
        if after_ordinal is not None:
            statement = statement.where(_record_results.c.ordinal > after_ordinal)
        return await self._all(statement.order_by(_record_results.c.ordinal,
                                                  _record_results.c.id).limit(limit))

    async def lineage(self, run_id: str) -> list[Lineage]:
        return await self._all(select(Lineage).where(col(Lineage.run_id) == run_id)
                               .order_by(_lineage.c.id))

    # -- quarantine ----------------------------------------------------------------------------

    @staticmethod
    def _quarantine_filters(pipeline: str | None, run_id: str | None, stage: str | None,
                            reason_contains: str | None,
                            status: str | None) -> list[ColumnElement[bool]]:
        filters: list[ColumnElement[bool]] = []
        if pipeline is not None:
            filters.append(_quarantine.c.pipeline_name == pipeline)
        if run_id is not None:
            filters.append(_quarantine.c.run_id == run_id)
        if stage is not None:
            filters.append(_quarantine.c.stage == str(stage))
        if reason_contains:
            filters.append(_quarantine.c.reason.icontains(reason_contains, autoescape=True))
        if status is not None:
            filters.append(_quarantine.c.status == status)
        return filters

    async def list_quarantine(self, *, pipeline: str | None = None, run_id: str | None = None,
                              stage: str | None = None, reason_contains: str | None = None,
                              status: str | None = "open", limit: int = 50,
                              after_id: int | None = None, before_id: int | None = None,
                              last: bool = False) -> list[QuarantinedRecord]:
        """Quarantined records by id; page with `after_id=last.id`, back with
        `before_id=first.id` (the `limit` records just before it), or take the `last` page.
        Every page comes back in id order. `status=None`: any status."""
        filters = self._quarantine_filters(pipeline, run_id, stage, reason_contains, status)
        if after_id is not None:
            filters.append(_quarantine.c.id > after_id)
        if before_id is not None:
            filters.append(_quarantine.c.id < before_id)
        statement = select(QuarantinedRecord).where(*filters)
        if before_id is not None or last:
            statement = statement.order_by(_quarantine.c.id.desc())
            return list(reversed(await self._all(statement.limit(limit))))
        return await self._all(statement.order_by(_quarantine.c.id).limit(limit))

    async def count_quarantine(self, *, pipeline: str | None = None, run_id: str | None = None,
                               stage: str | None = None, reason_contains: str | None = None,
                               status: str | None = "open") -> int:
        filters = self._quarantine_filters(pipeline, run_id, stage, reason_contains, status)
        rows = await self._all(select(func.count()).select_from(_quarantine).where(*filters))
        return int(rows[0])

    async def get_quarantined(self, quarantine_id: int) -> QuarantinedRecord | None:
        return await self._first(select(QuarantinedRecord)
                                 .where(col(QuarantinedRecord.id) == quarantine_id))

    async def resolve_quarantined(self, quarantine_id: int, *, action: str, status: str,
                                  final_output: Any = None, note: str | None = None,
                                  actor: str | None = None, reason: str | None = None,
                                  scores: list[Any] | None = None, verdict: Any = None,
                                  details: dict[str, Any] | None = None) -> None:
        """Record what someone did to a quarantined record, and its new state, atomically.

        `reason`, `scores` and `verdict` replace the stored ones when given (a reprocess that
        still fails says why now). Status `open` clears `resolved_at`. `details` adds to what
        the action row records (what a reprocess cost, say). The record's claim (the action's
        own: see claim_quarantined) and any kept reprocess answer go with it.
        """
        if status not in QUARANTINE_STATUSES:
            raise ValueError(f"quarantine status must be one of {QUARANTINE_STATUSES}, not {status!r}")
        now = utcnow()
        values: dict[str, Any] = {"status": status, "resolved_at": None if status == "open" else now,
                                  **_NO_CLAIM, "answer": None}
        if final_output is not None:
            values["final_output"] = final_output
        if note is not None:
            values["resolution_note"] = note
        if reason is not None:
            values["reason"] = reason
        if scores is not None:
            values["scores"] = [s.to_dict() if hasattr(s, "to_dict") else s for s in scores]
        if verdict is not None:
            values["verdict"] = verdict.to_dict() if hasattr(verdict, "to_dict") else verdict
        async with self._write() as conn:
            current = (await conn.execute(
                select(_quarantine.c.status, _quarantine.c.scores, _quarantine.c.run_id,
                       _quarantine.c.pipeline_name, _quarantine.c.record_id)
                .where(_quarantine.c.id == quarantine_id).with_for_update())).first()
            if current is None:
                raise StoreError(f"there is no quarantined record {quarantine_id}")
            await conn.execute(update(_quarantine).where(_quarantine.c.id == quarantine_id)
                               .values(values))
            if status != "open":
                # The person's decision against each judge's verdict on the scores they saw.
                for decision in judge_decisions(current.scores, action):
                    await conn.execute(self._upsert(_agreements, {
                        "quarantine_id": quarantine_id, "run_id": current.run_id,
                        "pipeline_name": current.pipeline_name, "record_id": current.record_id,
                        "evaluator": decision.evaluator, "evaluator_type": decision.evaluator_type,
                        "judge_value": decision.judge_value, "judge_passed": decision.judge_passed,
                        "action": decision.action, "agreed": decision.agreed, "actor": actor,
                        "decided_at": now,
                    }, ["quarantine_id", "evaluator"],
                        ["judge_value", "judge_passed", "action", "agreed", "actor", "decided_at"]))
            recorded = {"from": current.status, "to": status, "note": note, "reason": reason,
                        "final_output": final_output, **(details or {})}
            await conn.execute(insert(_actions), {
                "quarantine_id": quarantine_id, "action": action, "at": now, "actor": actor,
                "details": {k: v for k, v in recorded.items() if v is not None}})

    async def judge_agreement(self, *, pipeline: str | None = None) -> list[JudgeAgreement]:
        """Each LLM judge's agreement with the people who resolved its pipeline's quarantine,
        by pipeline and judge."""
        statement = select(
            _agreements.c.pipeline_name, _agreements.c.evaluator, _agreements.c.evaluator_type,
            func.count().label("decisions"),
            func.sum(case((_agreements.c.agreed, 1), else_=0)).label("agreed"),
            func.sum(case((~_agreements.c.judge_passed & (_agreements.c.action == "approve"), 1),
                          else_=0)).label("too_strict"),
            func.sum(case((_agreements.c.judge_passed & (_agreements.c.action != "approve"), 1),
                          else_=0)).label("too_lenient"),
        ).group_by(_agreements.c.pipeline_name, _agreements.c.evaluator,
                   _agreements.c.evaluator_type
                   ).order_by(_agreements.c.pipeline_name, _agreements.c.evaluator)
        if pipeline is not None:
            statement = statement.where(_agreements.c.pipeline_name == pipeline)
        try:
            async with self._reader.connect() as conn:
                rows = (await conn.execute(statement)).all()
        except SQLAlchemyError as exc:
            raise self._target.error("read", exc) from exc
        return [JudgeAgreement(pipeline=row.pipeline_name, evaluator=row.evaluator,
                               evaluator_type=row.evaluator_type, decisions=int(row.decisions),
                               agreed=int(row.agreed or 0), too_strict=int(row.too_strict or 0),
                               too_lenient=int(row.too_lenient or 0)) for row in rows]

    async def judge_decisions(self, quarantine_id: int) -> list[JudgeAgreementRow]:
        """The judges' verdicts on one resolved record, against the person's."""
        return await self._all(select(JudgeAgreementRow)
                               .where(col(JudgeAgreementRow.quarantine_id) == quarantine_id)
                               .order_by(_agreements.c.id))

    async def quarantine_actions(self, quarantine_id: int) -> list[QuarantineAction]:
        return await self._all(select(QuarantineAction)
                               .where(col(QuarantineAction.quarantine_id) == quarantine_id)
                               .order_by(_actions.c.id))

    # -- claims: a release holds its run, an action its records (core.claims) ------------------

    async def claim_release(self, run_id: str, holder: str) -> Claim:
        """Claim a held run for `holder` to release it: held -> releasing. A run `releasing`
        under a dead holder is taken over (its commit token comes back: the dead release may
        have published). Refused while a live quarantine action holds a record of the run (it
        may be writing to the same destination). One transaction, the run's row locked first
        (PostgreSQL), as claim_quarantined locks it: of a release and an action, one waits."""
        async with self._write() as conn:
            run = (await conn.execute(
                select(_runs.c.commit_state, _runs.c.claim_holder, _runs.c.claimed_at,
                       _runs.c.commit_token).where(_runs.c.run_id == run_id)
                .with_for_update())).first()
            if run is None:
                return Claim(ClaimState.MISSING)
            if run.commit_state == "released":
                return Claim(ClaimState.RESOLVED, run.commit_state)
            if run.commit_state == "releasing":
                if holder_alive(run.claim_holder, run.claimed_at):
                    return Claim(ClaimState.HELD, run.commit_state,
                                 describe(run.claim_holder, run.claimed_at))
                taken = await conn.execute(update(_runs).where(
                    (_runs.c.run_id == run_id) & (_runs.c.commit_state == "releasing")
                    & _runs.c.claim_holder.is_not_distinct_from(run.claim_holder))
                    .values(claim_holder=holder, claimed_at=utcnow(), updated_at=utcnow()))
                if taken.rowcount != 1:
                    return Claim(ClaimState.HELD, run.commit_state, describe(None, None))
                return Claim(ClaimState.TAKEN_OVER, run.commit_state, token=run.commit_token)
            if run.commit_state != "held":
                return Claim(ClaimState.REFUSED, run.commit_state)
            for key, at in (await conn.execute(
                    select(_quarantine.c.claim_holder, _quarantine.c.claimed_at)
                    .where((_quarantine.c.run_id == run_id)
                           & _quarantine.c.claim_id.is_not(None)))).all():
                if holder_alive(key, at):
                    return Claim(ClaimState.BUSY, run.commit_state, describe(key, at))
            await conn.execute(update(_runs).where(_runs.c.run_id == run_id).values(
                commit_state="releasing", claim_holder=holder, claimed_at=utcnow(),
                commit_token=None, updated_at=utcnow()))
            return Claim(ClaimState.CLAIMED, "held")

    async def note_release_token(self, run_id: str, holder: str, token: str | None) -> bool:
        """The release is about to publish: a holder that dies from here on left `token`, by
        which the next one tells whether the publish went through. Also renews the claim."""
        async with self._write() as conn:
            result = await conn.execute(update(_runs).where(
                (_runs.c.run_id == run_id) & (_runs.c.claim_holder == holder)
                & (_runs.c.commit_state == "releasing"))
                .values(commit_token=token, claimed_at=utcnow(), updated_at=utcnow()))
            return result.rowcount == 1

    async def renew_release(self, run_id: str, holder: str) -> None:
        async with self._write() as conn:
            await conn.execute(update(_runs).where(
                (_runs.c.run_id == run_id) & (_runs.c.claim_holder == holder))
                .values(claimed_at=utcnow()))

    async def abandon_release(self, run_id: str, holder: str) -> None:
        """The release failed before it published: the run is held again, unclaimed."""
        async with self._write() as conn:
            await conn.execute(update(_runs).where(
                (_runs.c.run_id == run_id) & (_runs.c.claim_holder == holder)
                & (_runs.c.commit_state == "releasing"))
                .values(commit_state="held", claim_holder=None, claimed_at=None,
                        commit_token=None, updated_at=utcnow()))

    async def claim_quarantined(self, ids: Sequence[int], action: str, holder: str,
                                claim_id: str) -> dict[int, Claim]:
        """Claim open quarantined records for one action, atomically: each id is claimed by
        this call (`claim_id`), taken over from a dead holder (its claim id, output and commit
        token kept: the dead action may have loaded it), or answered with why not (resolved,
        held by a live action, its run being released by a live release, missing)."""
        found: dict[int, Claim] = {}
        if not ids:
            return found
        q = _quarantine.c
        async with self._write() as conn:
            rows = (await conn.execute(
                select(q.id, q.status, q.run_id, q.claim_id, q.claim_holder, q.claimed_at,
                       q.claim_action, q.commit_token)
                .where(q.id.in_(list(ids))).order_by(q.id).with_for_update())).all()
            runs = {run.run_id: run for run in (await conn.execute(
                select(_runs.c.run_id, _runs.c.commit_state, _runs.c.claim_holder,
                       _runs.c.claimed_at).where(_runs.c.run_id.in_(sorted({r.run_id for r in rows})))
                .order_by(_runs.c.run_id).with_for_update())).all()}
            fresh: list[int] = []
            now = utcnow()
            for row in rows:
                run = runs.get(row.run_id)
                if row.status != "open":
                    found[row.id] = Claim(ClaimState.RESOLVED, row.status)
                elif row.claim_id is not None and holder_alive(row.claim_holder, row.claimed_at):
                    # This process's own claim too: another action of it (a workbench worker)
                    # is at work on the record.
                    found[row.id] = Claim(ClaimState.HELD, row.claim_action,
                                          describe(row.claim_holder, row.claimed_at))
                elif run is not None and run.commit_state == "releasing" and \
                        holder_alive(run.claim_holder, run.claimed_at):
                    found[row.id] = Claim(ClaimState.RELEASING, row.status,
                                          describe(run.claim_holder, run.claimed_at))
                elif row.claim_id is not None:
                    await conn.execute(update(_quarantine).where(
                        (q.id == row.id) & (q.claim_id == row.claim_id))
                        .values(claim_holder=holder, claimed_at=now))
                    found[row.id] = Claim(ClaimState.TAKEN_OVER, row.claim_action,
                                          claim_id=row.claim_id, token=row.commit_token)
                else:
                    fresh.append(row.id)
                    found[row.id] = Claim(ClaimState.CLAIMED, row.status, claim_id=claim_id)
            for start in range(0, len(fresh), _IN_CHUNK):
                await conn.execute(update(_quarantine).where(
                    q.id.in_(fresh[start:start + _IN_CHUNK])).values(
                    claim_id=claim_id, claim_holder=holder, claimed_at=now, claim_action=action,
                    claim_output=None, commit_token=None))
        for quarantine_id in ids:
            found.setdefault(quarantine_id, Claim(ClaimState.MISSING))
        return found

    async def restart_claim(self, ids: Sequence[int], holder: str, claim_id: str,
                            action: str) -> None:
        """Taken-over records whose dead action did not load them: they start afresh under
        this holder's claim."""
        await self._claim_update(ids, holder, claim_id=claim_id, claim_action=action,
                                 claim_output=None, commit_token=None, claimed_at=utcnow())

    async def stage_claim(self, outputs: dict[int, Any], holder: str) -> None:
        """What each claimed record is about to load (before the sink sees it)."""
        async with self._write() as conn:
            for quarantine_id, output in outputs.items():
                await conn.execute(update(_quarantine).where(
                    (_quarantine.c.id == quarantine_id)
                    & (_quarantine.c.claim_holder == holder))
                    .values(claim_output=output, claimed_at=utcnow()))

    async def note_claim_token(self, ids: Sequence[int], holder: str, token: str | None) -> None:
        """The sink is about to publish these records: a holder that dies from here on left
        `token` (core.connectors.base.Sink.committed)."""
        await self._claim_update(ids, holder, commit_token=token, claimed_at=utcnow())

    async def save_answer(self, quarantine_id: int, holder: str, answer: dict[str, Any]) -> None:
        """A reprocess's answer, kept until it is loaded or judged: not paid for twice."""
        await self._claim_update([quarantine_id], holder, answer=answer, claimed_at=utcnow())

    async def renew_claims(self, ids: Sequence[int], holder: str) -> None:
        await self._claim_update(ids, holder, claimed_at=utcnow())

    async def drop_claims(self, ids: Sequence[int], holder: str) -> None:
        """The action gave up on these records (nothing loaded): open, unclaimed; a
        reprocess's answer stays for the next one."""
        await self._claim_update(ids, holder, **_NO_CLAIM)

    async def _claim_update(self, ids: Sequence[int], holder: str, **values: Any) -> None:
        ids = list(ids)
        async with self._write() as conn:
            for start in range(0, len(ids), _IN_CHUNK):
                await conn.execute(update(_quarantine).where(
                    _quarantine.c.id.in_(ids[start:start + _IN_CHUNK])
                    & (_quarantine.c.claim_holder == holder)).values(values))

    # -- LLM response cache --------------------------------------------------------------------

    async def cache_get(self, key: str) -> dict[str, Any] | None:
        """The cached response, or None when missing or expired. Counts a hit.

        SQLite: a primary-key read on the loop's thread (core.store.cache_reader), tens of
        microseconds. PostgreSQL: lookups made while another is in flight are read together in
        one query, since one round trip per lookup would cost more than the rest of a record.
        Entries written by this store but not yet flushed are found too.
        """
        pending = self._pending_cache.get(key)
        if pending is not None:
            expires_at = pending["expires_at"]
            value = None if expires_at is not None and expires_at <= utcnow() else \
                copy.deepcopy(pending["response"])
        elif self._cache_file is not None:
            try:
                value = self._cache_file.get(key, utcnow())
            except sqlite3.Error as exc:
                raise self._target.error("read", exc) from exc
        else:
            value = await self._cache_read_batched(key)
        if value is not None:
            self._pending_hits[key] += 1
            if len(self._pending_hits) >= _HIT_FLUSH_AT:
                await self.cache_flush()
        return value

    async def _cache_read_batched(self, key: str) -> dict[str, Any] | None:
        future: asyncio.Future[dict[str, Any] | None] = asyncio.get_running_loop().create_future()
        self._cache_waiting.setdefault(key, []).append(future)
        if self._cache_reader is None:
            self._cache_reader = asyncio.create_task(self._read_cache_batches())
        return await future

    async def _read_cache_batches(self) -> None:
        try:
            while self._cache_waiting:
                waiting, self._cache_waiting = self._cache_waiting, {}
                try:
                    found = await self._read_cache(list(waiting))
                except Exception as exc:  # every waiter gets the failure, none hangs
                    for futures in waiting.values():
                        for future in futures:
                            if not future.done():
                                future.set_exception(exc)
                    continue
                for key, futures in waiting.items():
                    value = found.get(key)
                    for n, future in enumerate(futures):
                        if not future.done():  # a waiter may have been cancelled
                            # Waiters on the same key each get their own copy.
                            future.set_result(value if n == 0 or value is None else copy.deepcopy(value))
        finally:
            self._cache_reader = None

    async def _read_cache(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        now = utcnow()
        found: dict[str, dict[str, Any]] = {}
        try:
            async with self._reader.connect() as conn:
                for start in range(0, len(keys), _CACHE_READ_CHUNK):
                    chunk = keys[start:start + _CACHE_READ_CHUNK]
                    rows = await conn.execute(
                        select(_cache.c.key, _cache.c.response, _cache.c.expires_at)
                        .where(_cache.c.key.in_(chunk)))
                    for row in rows:
                        if row.expires_at is None or row.expires_at > now:
                            found[row.key] = row.response
        except SQLAlchemyError as exc:
            raise self._target.error("read", exc) from exc
        return found

    async def cache_put(self, key: str, value: dict[str, Any], *, provider: str, model: str,
                        ttl_s: float | None = None) -> None:
        """Keep a response (replacing any older one); `ttl_s=None` keeps it for good.

        Entries are written in batches (see _CACHE_WRITE_AT): this store's own reads see them at
        once, other processes once they are flushed — at the latest when the store closes.
        """
        now = utcnow()
        if not self._pending_cache:
            self._pending_cache_since = time.monotonic()
        self._pending_cache.pop(key, None)
        self._pending_cache[key] = {
            "key": key, "provider": provider, "model": model, "response": value,
            "created_at": now,
            "expires_at": now + timedelta(seconds=ttl_s) if ttl_s is not None else None,
            "hits": 0}
        self._pending_hits.pop(key, None)  # a fresh entry starts at 0 hits
        if len(self._pending_cache) >= _CACHE_WRITE_AT or \
                time.monotonic() - self._pending_cache_since >= _CACHE_WRITE_AFTER_S:
            await self.cache_flush()

    async def cache_flush(self) -> None:
        """Write the cache entries and hit counts waiting in memory."""
        if self._pending_cache or self._pending_hits:
            async with self._write() as conn:
                await self._flush_cache(conn)

    async def cache_prune(self) -> int:
        """Delete expired responses; returns how many."""
        await self.cache_flush()
        async with self._write() as conn:
            result = await conn.execute(_cache.delete().where(_cache.c.expires_at <= utcnow()))
            return int(result.rowcount)

    async def cache_entry(self, key: str) -> LLMCacheEntry | None:
        """The whole cache row (hits, expiry), for inspection."""
        await self.cache_flush()
        return await self._first(select(LLMCacheEntry).where(col(LLMCacheEntry.key) == key))

    async def _flush_cache(self, conn: AsyncConnection) -> None:
        """Inside a write transaction: waiting entries first, then hit counts."""
        entries, self._pending_cache = self._pending_cache, {}
        hits, self._pending_hits = self._pending_hits, Counter()
        try:
            if entries:
                dialect = postgresql if self._engine.dialect.name == "postgresql" else sqlite
                statement = dialect.insert(_cache)
                statement = statement.on_conflict_do_update(
                    index_elements=["key"],
                    set_={name: statement.excluded[name] for name in
                          ("provider", "model", "response", "created_at", "expires_at", "hits")})
                await conn.execute(statement, list(entries.values()))
            if hits:
                await conn.execute(
                    update(_cache).where(_cache.c.key == bindparam("hit_key"))
                    .values(hits=_cache.c.hits + bindparam("hit_count")),
                    [{"hit_key": key, "hit_count": count} for key, count in hits.items()])
        except BaseException:
            # Not written: keep them for the next write (newer entries for a key win).
            self._pending_cache = {**entries, **self._pending_cache}
            self._pending_hits.update(hits)
            raise

    # -- monitoring alerts ---------------------------------------------------------------------

    async def add_alert(self, *, pipeline: str, alert_type: str, severity: str, message: str,
                        run_id: str | None = None, details: dict[str, Any] | None = None,
                        threshold_value: float | None = None,
                        actual_value: float | None = None,
                        notification_channel: str | None = None) -> int:
        """Record an alert; returns its id."""
        values = {"pipeline_name": pipeline, "run_id": run_id, "alert_type": alert_type,
                  "severity": severity, "message": message, "details": details or {},
                  "threshold_value": threshold_value, "actual_value": actual_value,
                  "triggered_at": utcnow(), "acknowledged": False,
                  "notification_channel": notification_channel, "notification_sent": False}
        async with self._write() as conn:
            result = await conn.execute(insert(_alerts), values)
            key = result.inserted_primary_key
            assert key is not None  # a single-row INSERT always has its primary key
            return int(key[0])

    async def list_alerts(self, *, run_id: str | None = None, pipeline: str | None = None,
                          unacknowledged: bool = False, limit: int = 100) -> list[MonitoringAlert]:
        """Alerts, newest first."""
        statement = select(MonitoringAlert)
        if run_id is not None:
            statement = statement.where(col(MonitoringAlert.run_id) == run_id)
        if pipeline is not None:
            statement = statement.where(col(MonitoringAlert.pipeline_name) == pipeline)
        if unacknowledged:
            statement = statement.where(_alerts.c.acknowledged.is_(False))
        statement = statement.order_by(_alerts.c.triggered_at.desc(), _alerts.c.id.desc())
        return await self._all(statement.limit(limit))

    async def alerts_for_runs(self, run_ids: Sequence[str]) -> dict[str, list[MonitoringAlert]]:
        """Each run's alerts, oldest first, in one query (for a page of history)."""
        found: dict[str, list[MonitoringAlert]] = {run_id: [] for run_id in run_ids}
        if not run_ids:
            return found
        rows = await self._all(select(MonitoringAlert)
                               .where(_alerts.c.run_id.in_(list(run_ids)))
                               .order_by(_alerts.c.id))
        for row in rows:
            if row.run_id is not None:  # always: NULL is in no IN (...)
                found[row.run_id].append(row)
        return found

    async def mark_alerts_notified(self, alert_ids: Sequence[int]) -> None:
        """The alerts reached their notification channel."""
        if not alert_ids:
            return
        async with self._write() as conn:
            await conn.execute(update(_alerts).where(_alerts.c.id.in_(list(alert_ids))).values(
                notification_sent=True, notification_sent_at=utcnow()))

    async def acknowledge_alert(self, alert_id: int, *, by: str | None = None) -> None:
        async with self._write() as conn:
            result = await conn.execute(update(_alerts).where(_alerts.c.id == alert_id).values(
                acknowledged=True, acknowledged_at=utcnow(), acknowledged_by=by))
            if result.rowcount == 0:
                raise StoreError(f"there is no alert {alert_id}")


def _same(text: str | None) -> str | None:
    return text


def _call_totals(result: RecordResult) -> tuple[int, int, float | None, float, int]:
    """A record's model calls summed for its row: input and output tokens, cost (None once any
    call's price is unknown), latency, and how many calls were made rather than cached."""
    input_tokens = output_tokens = made = 0
    latency = 0.0
    cost: float | None = 0.0
    for call in result.calls:
        input_tokens += call.input_tokens
        output_tokens += call.output_tokens
        latency += call.latency_s
        if cost is not None:
            cost = None if call.cost_usd is None else cost + call.cost_usd
        if not call.cached:
            made += 1
    return input_tokens, output_tokens, cost, latency, made


def _inferred_stage(result: RecordResult) -> str:
    """The stage of a quarantined result that did not say (the column cannot be empty)."""
    if result.record.extract_error is not None:
        return Stage.EXTRACT.value
    if result.verdict is not None or result.scores:
        return Stage.EVALUATE.value
    return Stage.TRANSFORM.value
