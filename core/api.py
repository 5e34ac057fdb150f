"""The facade the command line and the workbench use: `Workspace`.

Everything a UI needs goes through here — finding pipelines, validating them, previewing
records, rendering a prompt for a record, running a sample, running a whole pipeline as an
async stream of events, and reading the history and the quarantine — so that the TUI never
reaches into the engine's internals and the headless CLI behaves exactly like the TUI.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from core.agreement import JudgeAgreement
from core.config import LoomConfig, load_config, store_url
from core.connectors.registry import open_source
from core.credentials import KeyringSecrets, SecretResolver
from core.engine import Engine, Listener, RunController, RunOptions
from core.estimate import Estimate, estimate as estimate_run
from core.errors import LoomError, PipelineError, TemplateError, UsageError
from core.events import Event, RunFinished, RunSummary
from core.processing import Runtime
from core.quarantine import ActionResult, QuarantineDesk
from core.prompts import template_syntax_error
from core.records import Record, RecordResult
from core.resume import ResumeRequest, find_resumable, is_resumable, resume_problem
from core.sharding import Shard, ShardGroup
from core.spec import LoadedSpec, load_spec
from core.store import Store

# Folders never worth scanning for pipelines.
_SKIP_DIRS = {".git", ".venv", "venv", "node_modules", "__pycache__", ".tox", ".mypy_cache",
              ".pytest_cache", "site-packages", "dist", "build", ".loom"}
_MAX_DEPTH = 5


@dataclass(frozen=True)
class PipelineEntry:
    """A pipeline file found under a folder, valid or not."""

    path: Path
    name: str
    loaded: LoadedSpec | None
    error: str | None  # the one-line validation error, when invalid

    @property
    def valid(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class RenderResult:
    messages: list[dict[str, str]] | None
    error: str | None = None
    error_line: int | None = None


def find_pipeline_files(folder: Path) -> list[Path]:
    """YAML files under `folder` that look like pipelines (top-level extract: and transform:)."""
    found: list[Path] = []
    folder = folder.resolve()
    for root, dirs, files in os.walk(folder):
        depth = len(Path(root).relative_to(folder).parts)
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith(".")
                         and depth < _MAX_DEPTH)
        for name in sorted(files):
            if name.endswith((".yaml", ".yml")) and _looks_like_pipeline(Path(root) / name):
                found.append(Path(root) / name)
    return found


def _looks_like_pipeline(path: Path) -> bool:
    try:
        with path.open(encoding="utf-8") as handle:
            head = handle.read(65536)
    except (OSError, UnicodeDecodeError):
        return False
    keys = {line.split(":", 1)[0] for line in head.splitlines()
            if line and not line[0].isspace() and ":" in line}
    return {"extract", "transform"} <= keys


class Workspace:
    """Pipelines under a folder, and the history store they run against."""

    def __init__(self, folder: str | Path = ".", *, store: Store | None = None,
                 store_url_override: str | None = None, config: LoomConfig | None = None) -> None:
        self.folder = Path(folder)
        self.config = config or load_config()
        self._store = store
        self._store_url = store_url_override
        self._owns_store = store is None

    async def __aenter__(self) -> "Workspace":
        await self.store()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def store(self) -> Store:
        if self._store is None:
            self._store = await Store.open(self._store_url or store_url(self.config))
        return self._store

    async def close(self) -> None:
        if self._store is not None and self._owns_store:
            await self._store.close()
            self._store = None

    # ------------------------------------------------------------ pipelines

    def pipelines(self) -> list[PipelineEntry]:
        entries = []
        for path in find_pipeline_files(self.folder):
            entries.append(self.inspect(path))
        return entries

    def inspect(self, path: str | Path) -> PipelineEntry:
        path = Path(path)
        try:
            loaded = load_spec(path)
            return PipelineEntry(path=path, name=loaded.spec.name, loaded=loaded, error=None)
        except LoomError as exc:
            return PipelineEntry(path=path, name=_declared_name(path), loaded=None, error=str(exc))

    def load(self, path: str | Path, overrides: list[str] | None = None) -> LoadedSpec:
        return load_spec(path, overrides)

    # ------------------------------------------------------------ records and prompts

    async def preview(self, loaded: LoadedSpec, *, limit: int = 50, offset: int = 0) -> list[Record]:
        """Records `offset`..`offset+limit` the source yields (reads only that far)."""
        from core.processing import resolve_secrets

        resolved = resolve_secrets(loaded, SecretResolver(credentials=self.config.credentials))
        source = open_source(resolved)
        out: list[Record] = []
        try:
            async for batch in source.batches(limit=offset + limit):
                for record in batch:
                    if record.ordinal >= offset:
                        out.append(record)
        finally:
            await source.aclose()
        return out

    def render(self, loaded: LoadedSpec, record: Record, prompt_text: str | None = None) -> RenderResult:
        """The messages a record's call would send; template errors come back with their line."""
        from core.prompts import load_prompts

        prompts = load_prompts(loaded)
        if prompt_text is not None:
            syntax = template_syntax_error(prompt_text)
            if syntax is not None:
                line, message = syntax
                return RenderResult(None, f"line {line}: {message}", line)
            prompts = prompts.with_prompt(prompt_text)
        try:
            return RenderResult(prompts.render(record.data))
        except TemplateError as exc:
            line = None
            if exc.detail.startswith("line "):
                head = exc.detail[5:].split(":", 1)[0]
                line = int(head) if head.isdigit() else None
            return RenderResult(None, exc.detail, line)

    async def run_sample(self, loaded: LoadedSpec, records: Iterable[Record], *,
                         prompt_text: str | None = None, use_cache: bool = True,
                         concurrency: int = 8,
                         warnings: list[str] | None = None) -> list[RecordResult]:
        """Transform and evaluate records without loading them or recording a run.
        No budget applies to a sample; warnings (an unknown price...) go to `warnings`."""
        warnings = warnings if warnings is not None else []
        resolver = SecretResolver(credentials=self.config.credentials)
        runtime = Runtime.build(loaded, config=self.config, cache=await self.store(),
                                use_cache=use_cache, resolver=resolver,
                                on_warning=warnings.append, prompt_text=prompt_text,
                                concurrency=concurrency, budget_usd=None)
        try:
            return list(await asyncio.gather(*(runtime.processor.process(r) for r in records)))
        finally:
            await runtime.aclose()

    async def estimate(self, loaded: LoadedSpec, *, sample: int = 20, limit: int | None = None,
                       use_cache: bool = True) -> Estimate:
        """Cost, tokens and duration of a whole run, projected from `sample` records that are
        transformed and evaluated now (not loaded, no run recorded)."""
        return await estimate_run(self, loaded, sample=sample, limit=limit, use_cache=use_cache)

    # ------------------------------------------------------------ runs

    async def run_to_end(self, loaded: LoadedSpec, options: RunOptions | None = None, *,
                         listeners: Iterable[Listener] = (),
                         controller: RunController | None = None) -> RunSummary:
        engine = Engine(loaded, await self.store(), options=options, config=self.config,
                        listeners=listeners, controller=controller)
        return await engine.run()

    async def run(self, loaded: LoadedSpec, options: RunOptions | None = None, *,
                  controller: RunController | None = None) -> AsyncIterator[Event]:
        """Run a pipeline, yielding its events as they happen; ends after RunFinished.
        Errors that prevent the run (a missing secret) are raised from the iterator."""
        queue: asyncio.Queue[Event | BaseException] = asyncio.Queue()
        task = asyncio.create_task(self.run_to_end(loaded, options, listeners=[queue.put_nowait],
                                                   controller=controller))
        task.add_done_callback(lambda t: queue.put_nowait(
            t.exception() if not t.cancelled() and t.exception() else _Done()))
        try:
            while True:
                item = await queue.get()
                if isinstance(item, _Done):
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            if not task.done():
                (controller or RunController()).cancel()
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    # ------------------------------------------------------------ resuming (core.resume)

    async def unfinished_runs(self, *, pipeline: str | None = None, limit: int = 50) -> list[Any]:
        """Runs `resume` can finish, newest first (PipelineRun rows): `running` ones whose
        process is gone (a crash, kill -9, a reboot), and cancelled or failed ones that left
        records unfinished. What the History screen offers a Resume action for."""
        runs = await (await self.store()).unfinished_runs(pipeline=pipeline, limit=limit)
        return [run for run in runs if is_resumable(run)]

    def resume_problem(self, run: Any) -> str | None:
        """Why a run (a PipelineRun from `runs`/`history`) cannot be resumed, in one line; None
        when it can. A run whose process is alive is not resumable: it is running."""
        return resume_problem(run)

    async def prepare_resume(self, path: str | Path, run_id: str | None = None, *,
                             force: bool = False, overrides: list[str] | None = None,
                             shard: Shard | None = None, limit: int | None = None,
                             use_cache: bool = True,
                             record_path: Path | None = None) -> tuple[LoadedSpec, RunOptions]:
        """The pipeline and the options that resume run `run_id` of the pipeline at `path` (by
        default its newest unfinished run, of `shard` when given): then `run(...)` or
        `run_to_end(...)` them. The run keeps its id, its --limit and its shard; the pipeline is
        loaded with the --set overrides the run started with, then `overrides` on top.
        Raises ResumeError (nothing to resume, still running) or UsageError."""
        loaded = self.load(path, overrides)
        run = await find_resumable(await self.store(), loaded.spec.name, run_id, shard=shard)
        stored = run.options or {}
        if limit is not None and limit != stored.get("limit"):
            raise UsageError(f"--resume continues run {run.run_id} with its own --limit "
                             f"({stored.get('limit', 'none')}); leave --limit out")
        overrides = [*(stored.get("overrides") or []), *(overrides or [])]
        if overrides:
            loaded = self.load(path, overrides)
        run_shard = None
        if run.shard_group is not None and run.shard_index is not None and run.shard_count:
            run_shard = Shard(run.shard_index, run.shard_count, run.shard_group)
        options = RunOptions(limit=stored.get("limit"),
                             use_cache=use_cache and stored.get("use_cache", True) is not False,
                             record_path=record_path, shard=run_shard,
                             resume=ResumeRequest(run, force=force), overrides=overrides)
        return loaded, options

    async def resume(self, path: str | Path, run_id: str | None = None, *, force: bool = False,
                     listeners: Iterable[Listener] = (),
                     controller: RunController | None = None) -> RunSummary:
        """Resume a run to its end (see `prepare_resume`); the summary covers the whole run."""
        loaded, options = await self.prepare_resume(path, run_id, force=force)
        return await self.run_to_end(loaded, options, listeners=listeners, controller=controller)

    # ------------------------------------------------------------ history

    async def runs(self, *, pipeline: str | None = None, limit: int = 50, **kw: Any) -> list[Any]:
        return await (await self.store()).list_runs(pipeline=pipeline, limit=limit, **kw)

    async def history(self, *, pipeline: str | None = None, limit: int = 50) -> list[Any]:
        """The newest `limit` runs, newest first, with the runs of a shard group gathered into
        one `ShardGroup` (placed where its newest run is; it holds every run of the group,
        also those past `limit`). Other runs come as they are (core.store.PipelineRun)."""
        store = await self.store()
        runs = await store.list_runs(pipeline=pipeline, limit=limit)
        groups = {run.shard_group for run in runs if run.shard_group is not None}
        members: dict[tuple[str, str], list[Any]] = {}
        for run in await store.shard_group_runs(sorted(groups), pipeline=pipeline):
            members.setdefault((run.pipeline_name, run.shard_group), []).append(run)
        entries: list[Any] = []
        shown: set[tuple[str, str]] = set()
        for run in runs:
            if run.shard_group is None:
                entries.append(run)
                continue
            key = (run.pipeline_name, run.shard_group)
            if key not in shown:
                shown.add(key)
                entries.append(ShardGroup.of(members[key]))
        return entries

    async def get_run(self, run_id: str) -> Any:
        return await (await self.store()).get_run(run_id)

    async def quarantine(self, **filters: Any) -> list[Any]:
        """Quarantined records, filtered (pipeline, run_id, stage, reason_contains, status) and
        paged by id (limit, after_id)."""
        return await (await self.store()).list_quarantine(**filters)

    async def count_quarantine(self, **filters: Any) -> int:
        return await (await self.store()).count_quarantine(**filters)

    async def quarantined(self, quarantine_id: int) -> Any:
        return await (await self.store()).get_quarantined(quarantine_id)

    async def quarantine_history(self, quarantine_id: int) -> list[Any]:
        """Every action taken on a quarantined record, oldest first."""
        return await (await self.store()).quarantine_actions(quarantine_id)

    async def _desk(self) -> QuarantineDesk:
        return QuarantineDesk(await self.store(), self.config)

    async def approve(self, ids: Sequence[int], *, note: str | None = None) -> list[ActionResult]:
        return await (await self._desk()).approve(ids, note=note)

    async def approve_edited(self, quarantine_id: int, output: Any, *,
                             note: str | None = None) -> ActionResult:
        return await (await self._desk()).approve_edited(quarantine_id, output, note=note)

    async def reprocess(self, ids: Sequence[int]) -> list[ActionResult]:
        return await (await self._desk()).reprocess(ids)

    async def discard(self, ids: Sequence[int], *, note: str | None = None) -> list[ActionResult]:
        return await (await self._desk()).discard(ids, note=note)

    async def judge_agreement(self, pipeline: str | None = None) -> list[JudgeAgreement]:
        """Each LLM judge's agreement rate with the people who approved, edited or discarded
        the records it scored, per pipeline (core.agreement)."""
        return await (await self.store()).judge_agreement(pipeline=pipeline)

    # ------------------------------------------------------------ monitoring

    async def alerts(self, *, pipeline: str | None = None, run_id: str | None = None,
                     unacknowledged: bool = False, limit: int = 100) -> list[Any]:
        """Monitoring alerts (MonitoringAlert rows), newest first."""
        return await (await self.store()).list_alerts(pipeline=pipeline, run_id=run_id,
                                                      unacknowledged=unacknowledged, limit=limit)

    async def run_alerts(self, run_ids: list[str]) -> dict[str, list[Any]]:
        """Each run's alerts, for a page of history, in one query."""
        return await (await self.store()).alerts_for_runs(run_ids)

    async def acknowledge_alert(self, alert_id: int, *, by: str | None = None) -> None:
        await (await self.store()).acknowledge_alert(alert_id, by=by)
    # ------------------------------------------------------------ secrets
    # The keyring (service "loom") that ${NAME} placeholders resolve from first. These never
    # return a value, and they block (a desktop keyring may ask D-Bus): call them from a worker.

    def secret_names(self) -> list[str]:
        """Names of the secrets stored with `loom secrets set` (never their values)."""
        return KeyringSecrets().names()

    def set_secret(self, name: str, value: str) -> None:
        """Store `value` under `name`; raises SecretError for a bad name or no usable keyring."""
        KeyringSecrets().set(name, value)

    def delete_secret(self, name: str) -> None:
        """Remove a secret; raises SecretError when it is not there."""
        KeyringSecrets().delete(name)

    def secrets_backend(self) -> str:
        """The keyring backend in use, e.g. `keyrings.alt.file.PlaintextKeyring`."""
        return KeyringSecrets().backend()


class _Done:
    pass


def _declared_name(path: Path) -> str:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        if isinstance(raw, dict) and isinstance(raw.get("name"), str):
            return raw["name"]
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        pass
    return path.parent.name if path.name.startswith("pipeline.") else path.stem
