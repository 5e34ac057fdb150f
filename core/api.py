"""The facade the command line and the workbench use: `Workspace`.

Everything a UI needs goes through here — finding pipelines, validating them, previewing
records, rendering a prompt for a record, running a sample, running a whole pipeline as an
async stream of events, and reading the history and the quarantine — so that the TUI never
reaches into the engine's internals and the headless CLI behaves exactly like the TUI.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from core.agreement import JudgeAgreement
from core.compare import (ComparedValue, PromptComparison, RunComparison, VerdictChange,
                          compare_runs, compare_verdicts)
from core.config import LoomConfig, load_config, store_url
from core.console import money
from core.connectors.registry import REDACTED, open_source
from core.credentials import KeyringSecrets, SecretResolver, placeholder_names
from core.engine import Engine, Listener, RunController, RunOptions
from core.estimate import Estimate, estimate as estimate_run
from core.errors import LoomError, PipelineError, TemplateError, UsageError
from core.events import Event, RunSummary
from core.preview import (IMPLICIT_KEYS, LOCAL_BASE_URL, PROVIDERS, KeyStatus, PreviewModel,
                          key_status)
from core.processing import Runtime
from core.release import ReleaseResult, release_run
from core.run_pipeline import run_pipeline
from core.quarantine import ActionResult, QuarantineDesk
from core.prompts import content_hash, template_syntax_error
from core.records import Record, RecordResult
from core.resume import ResumeRequest, find_resumable, is_resumable, resume_problem
from core.sharding import (Shard, ShardGroup, gather_groups, history_entries,
                           page_groups)
from core.spec import LoadedSpec, load_spec
from core.store import (EvaluationResult, PipelineRun, QuarantineAction, QuarantinedRecord,
                        Store)
from core.store.models import MonitoringAlert
from core.safe_yaml import YamlError, load_yaml
from core.variants import PromptVariant, prompt_variants

# What a UI needs from the engine, importable from this one module (the workbench imports
# nothing else from core but the events and the record types).
__all__ = [
    "money",
    "ActionResult", "ComparedValue", "EvaluationResult", "LoadedSpec", "LoomError",
    "PipelineEntry", "PipelineRun", "PromptComparison", "PromptSource", "QuarantineAction",
    "QuarantinedRecord", "RenderResult", "RunComparison", "RunController", "RunOptions",
    "RunPoint", "SavedPrompt", "VerdictChange", "Workspace", "find_pipeline_files",
    "Estimate", "JudgeAgreement", "MonitoringAlert", "ShardGroup", "EditCheck",
    "PromptVariant", "PreviewModel", "KeyStatus", "PROVIDERS", "LOCAL_BASE_URL",
]

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


@dataclass(frozen=True)
class PromptSource:
    """A pipeline's prompt file as it is on disk."""

    path: Path
    text: str
    hash: str


@dataclass(frozen=True)
class SavedPrompt:
    """A prompt written to its file and stored as a version."""

    path: Path
    text: str
    hash: str
    previous_hash: str
    previous_text: str

    @property
    def changed(self) -> bool:
        return self.hash != self.previous_hash


@dataclass(frozen=True)
class EditCheck:
    """The evaluators' word on a hand-edited quarantined output (Workspace.check_edited)."""

    schema_error: str | None
    scores: list[Any]
    verdict: Any  # core.records.Verdict; None when the schema or an evaluator failed first
    evaluator_error: str | None = None

    @property
    def passes(self) -> bool:
        return self.schema_error is None and self.evaluator_error is None and \
            self.verdict is not None and self.verdict.passed

    def failing(self) -> list[str]:
        """One line per thing that still fails."""
        if self.schema_error:
            return [self.schema_error]
        lines = [f"{s.evaluator} {s.value:.2f} < {s.threshold:.2f}"
                 + (f": {s.explanation}" if s.explanation else "")
                 for s in self.scores if not s.passed]
        if self.evaluator_error:
            lines.append(f"could not score: {self.evaluator_error}")
        if not lines and self.verdict is not None and not self.verdict.passed:
            lines.append(self.verdict.reason or "the gate rejects it")
        return lines


@dataclass(frozen=True)
class RunPoint:
    """One run of a pipeline, as a point on its cost and latency charts."""

    run_id: str
    started_at: Any
    status: str
    cost_usd: float | None
    latency_p50_s: float | None
    latency_p95_s: float | None
    rejection_rate: float | None
    extracted: int


def pipeline_key(path: str | Path) -> str:
    """A pipeline file as the history knows it (with its name: a pipeline's identity)."""
    path = Path(path)
    return str((path / "pipeline.yaml" if path.is_dir() else path).resolve())


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
        # Several workbench workers may ask for the store at once: open it only once.
        self._store_lock: asyncio.Lock | None = None

    def detached(self) -> "Workspace":
        """The same folder, config and store, for another thread's event loop (a store's
        connections belong to the loop that opened them). The caller closes it."""
        return Workspace(self.folder, store_url_override=self._store_url, config=self.config)

    async def __aenter__(self) -> "Workspace":
        await self.store()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def store(self) -> Store:
        if self._store is None:
            if self._store_lock is None:
                self._store_lock = asyncio.Lock()
            async with self._store_lock:
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
            error_line = None
            if exc.detail.startswith("line "):
                head = exc.detail[5:].split(":", 1)[0]
                error_line = int(head) if head.isdigit() else None
            text = prompt_text if prompt_text is not None else prompts.prompt_text
            return RenderResult(None, plain_template_error(exc.detail, text, record.data,
                                                           prompts), error_line)

    def prompt_source(self, loaded: LoadedSpec) -> PromptSource:
        """The prompt file the pipeline names, as it is on disk now."""
        from core.prompts import load_prompts

        prompts = load_prompts(loaded)
        return PromptSource(prompts.prompt_path, prompts.prompt_text, prompts.prompt_hash)

    def prompt_variants(self, loaded: LoadedSpec) -> list[PromptVariant]:
        """The prompt texts kept beside the pipeline's prompt to try (core.variants)."""
        return prompt_variants(loaded.resolve(loaded.spec.transform.prompt))

    # ------------------------------------------------------------ the preview's model

    def load_for_preview(self, path: str | Path, model: PreviewModel | None) -> LoadedSpec:
        """The pipeline as the workbench previews it: with `model` as `--set` overrides (this
        session only; the file is untouched). Raises PipelineError for what it refuses."""
        if model is None:
            return self.load(path)
        return self.load(path, model.overrides(self.load(path).spec.transform))

    def preview_providers(self, loaded: LoadedSpec) -> list[str]:
        """What a preview can switch to: replay only for a pipeline with a cassette."""
        has_cassette = bool(loaded.spec.transform.cassette)
        return [p for p in PROVIDERS if p != "replay" or has_cassette]

    def known_models(self, provider: str) -> list[str]:
        """The models Loom's capability data knows for a provider (none for a local server:
        it serves whatever it loaded)."""
        from core.llm.capabilities import known_models

        return known_models(provider) if provider in ("openai", "anthropic") else []

    def key_status(self, loaded: LoadedSpec, provider: str) -> KeyStatus:
        """Whether the key `provider` would read is in the keyring or the environment (by name;
        blocks on the keyring: call it from a worker)."""
        try:
            names: set[str] | None = set(KeyringSecrets().names())
        except LoomError:
            names = None
        return key_status(provider, loaded.spec.transform, names)

    async def save_prompt(self, loaded: LoadedSpec, text: str) -> SavedPrompt:
        """Write the prompt file and keep both it and the text it replaces as stored versions,
        so that a later run (or the A/B below) can always say what changed."""
        current = self.prompt_source(loaded)
        store = await self.store()
        name = loaded.spec.name
        await store.save_version("prompt", current.hash, current.text, path=str(current.path),
                                 pipeline=name)
        if text != current.text:
            try:
                _write_atomically(current.path, text)
            except OSError as exc:
                raise PipelineError(f"cannot write the prompt: {exc.strerror or exc}",
                                    file=str(current.path)) from None
        saved = SavedPrompt(current.path, text, content_hash(text), current.hash, current.text)
        await store.save_version("prompt", saved.hash, text, path=str(current.path), pipeline=name)
        return saved

    async def compare_prompts(self, loaded: LoadedSpec, records: Sequence[Record], before: str,
                              after: str, *, use_cache: bool = True) -> PromptComparison:
        """Judge the same records under two prompt texts: which changed verdict (the A/B).
        Answers already paid for come from the cache, so re-judging a sample is usually free."""
        records = list(records)
        old = await self.run_sample(loaded, records, prompt_text=before, use_cache=use_cache)
        new = await self.run_sample(loaded, records, prompt_text=after, use_cache=use_cache)
        return compare_verdicts(old, new, before_hash=content_hash(before),
                                after_hash=content_hash(after))

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
                                on_warning=lambda message: warnings.append(resolver.redact(message)),
                                prompt_text=prompt_text,
                                concurrency=concurrency, budget_usd=None)
        try:
            results = list(await asyncio.gather(*(runtime.processor.process(r)
                                                  for r in records)))
        finally:
            await runtime.aclose()
        for result in results:
            if result.reason:  # shown in the workbench: masked like a run's stored reasons
                result.reason = resolver.redact(result.reason)
            if result.error_type == "TemplateError" and result.reason:
                result.reason = plain_template_error(result.reason, runtime.prompts.prompt_text,
                                                     result.record.data, runtime.prompts)
        return results

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
        queue: asyncio.Queue[Event | BaseException | _Done] = asyncio.Queue()
        task = asyncio.create_task(self.run_to_end(loaded, options, listeners=[queue.put_nowait],
                                                   controller=controller))
        task.add_done_callback(lambda t: queue.put_nowait(
            (t.exception() or _Done()) if not t.cancelled() else _Done()))
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
        run = await find_resumable(await self.store(), loaded.spec.name, run_id, shard=shard,
                                   path=str(loaded.path))
        stored = run.options or {}
        if limit is not None and limit != stored.get("limit"):
            raise UsageError(f"--resume continues run {run.run_id} with its own --limit "
                             f"({stored.get('limit', 'none')}); leave --limit out")
        given = overrides or []
        kept = stored.get("overrides") or []
        keys_given = {item.partition("=")[0].strip() for item in given}
        for item in kept:
            key = item.partition("=")[0].strip()
            # A literal secret was stored as *** (redact_override): it cannot be read back.
            if REDACTED in item.partition("=")[2] and key not in keys_given:
                raise UsageError(f"run {run.run_id} was started with --set {key}=… holding a "
                                 f"secret, which Loom does not store: resume with --set "
                                 f"{key}=… again (or a ${{NAME}} placeholder)")
        overrides = [*(item for item in kept if item.partition("=")[0].strip() not in keys_given
                       or REDACTED not in item), *given]
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

    async def count_runs(self, *, pipeline: str | None = None, status: str | None = None) -> int:
        return await (await self.store()).count_runs(pipeline=pipeline, status=status)

    async def history(self, *, pipeline: str | None = None, limit: int = 50) -> list[Any]:
        """The newest `limit` runs, newest first, with the runs of a shard group gathered into
        one `ShardGroup` (placed where its newest run is; it holds every run of the group,
        also those past `limit`). Other runs come as they are (core.store.PipelineRun)."""
        store = await self.store()
        runs = await store.list_runs(pipeline=pipeline, limit=limit)
        groups = page_groups(runs)
        return history_entries(runs, await store.shard_group_runs(groups) if groups else [])

    async def shard_groups(self, runs: Sequence[PipelineRun]) -> dict[tuple[str, str], ShardGroup]:
        """The shard groups these runs belong to, each whole (every run of the group, retries
        and runs outside `runs` too), by (pipeline, group), in one query. For a page of
        history read with `runs(...)`: the workbench pages runs by keyset and gathers groups
        itself."""
        groups = page_groups(runs)
        if not groups:
            return {}
        return gather_groups(runs, await (await self.store()).shard_group_runs(groups))

    async def count_history(self, *, pipeline: str | None = None, status: str | None = None) -> int:
        """How many lines the history shows with shard groups gathered: each run that is not a
        shard, and for each shard group with a matching run its summed line and all its runs."""
        return await (await self.store()).count_history_rows(pipeline=pipeline, status=status)

    async def get_run(self, run_id: str) -> Any:
        return await (await self.store()).get_run(run_id)

    async def last_runs(self) -> dict[str, PipelineRun]:
        """Each pipeline's newest run, by pipeline name (of any file with that name)."""
        return await (await self.store()).last_run_per_pipeline()

    async def last_runs_by_file(self) -> dict[str, PipelineRun]:
        """Each pipeline file's newest run, by `pipeline_key(path)`: a copy of a pipeline in
        another folder has its own. A name whose every file is gone (the folder moved) is a key
        too, with its newest run, so that a moved pipeline still shows its last run."""
        runs = await (await self.store()).last_run_per_file()
        found: dict[str, PipelineRun] = {}
        by_name: dict[str, list[PipelineRun]] = {}
        for run in runs:
            if run.pipeline_path:
                found[run.pipeline_path] = run
            by_name.setdefault(run.pipeline_name, []).append(run)
        for name, named in by_name.items():
            if not any(r.pipeline_path and Path(r.pipeline_path).is_file() for r in named):
                found[name] = max(named, key=lambda r: (r.started_at, r.run_id))
        return found

    async def pipeline_names(self) -> list[str]:
        """Every pipeline the history has seen."""
        return [p.name for p in await (await self.store()).list_pipelines()]

    async def run_series(self, pipeline: str, *, limit: int = 60) -> list[RunPoint]:
        """A pipeline's last `limit` finished runs, oldest first: its cost and latency charts."""
        runs = await (await self.store()).list_runs(pipeline=pipeline, limit=limit * 2)
        finished = [r for r in runs if r.status != "running"][:limit]
        return [RunPoint(r.run_id, r.started_at, r.status, r.cost_usd, r.latency_p50_s,
                         r.latency_p95_s, r.rejection_rate, r.extracted)
                for r in reversed(finished)]

    async def compare_runs(self, run_a: str, run_b: str) -> RunComparison:
        """Two runs side by side: their configuration (prompt, context, model) and results."""
        store = await self.store()
        runs = []
        for run_id in (run_a, run_b):
            run = await store.get_run(run_id)
            if run is None:
                raise UsageError(f"there is no run {run_id}")
            runs.append(run)
        a, b = runs
        prompts = []
        for run in runs:
            version = await store.get_version(run.prompt_hash) if run.prompt_hash else None
            prompts.append(version[1] if version else None)
        return compare_runs(a, b, evaluators_a=await store.evaluation_results(a.run_id),
                            evaluators_b=await store.evaluation_results(b.run_id),
                            prompt_a=prompts[0], prompt_b=prompts[1])

    async def release(self, run_id: str) -> ReleaseResult:
        """Publish the passing records a held run kept back (a `replace` run that ended partial
        with load.on_partial: hold) into the run's own destination, once (core.release)."""
        return await release_run(await self.store(), run_id)

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

    async def check_edited(self, quarantine_id: int, output: Any) -> "EditCheck":
        """What the pipeline's evaluators and gate say of a hand-edited output, before it is
        approved (nothing is loaded or recorded): the schema error if any, every score, the
        verdict. LLM judges are called (cached like any answer)."""
        import jsonschema

        from core.errors import EvaluatorError
        from core.evaluate.gates import apply_gate
        from core.transform import load_output_schema

        row = await self.quarantined(quarantine_id)
        if row is None:
            raise LoomError(f"quarantined record {quarantine_id} is not there")
        run = await self.get_run(row.run_id)
        if run is None or not run.pipeline_path:
            raise LoomError(f"run {row.run_id} of quarantined record {quarantine_id} is gone")
        loaded = run_pipeline(run)  # the run's --set overrides too, as the approval uses
        schema = load_output_schema(loaded)
        if schema is not None:
            error = jsonschema.exceptions.best_match(
                jsonschema.validators.validator_for(schema)(schema).iter_errors(output))
            if error is not None:
                where = "/".join(str(p) for p in error.absolute_path) or "(root)"
                return EditCheck(f"does not match output_schema at {where}: {error.message}",
                                 [], None)
        warnings: list[str] = []
        resolver = SecretResolver(credentials=self.config.credentials)
        runtime = Runtime.build(loaded, config=self.config, cache=await self.store(),
                                use_cache=True, resolver=resolver,
                                on_warning=lambda message: warnings.append(resolver.redact(message)),
                                budget_usd=None)
        scores = []
        try:
            for evaluator in runtime.processor.evaluators:
                try:
                    scores.append(await evaluator.score(row.input or {}, output))
                except EvaluatorError as exc:
                    failed = getattr(exc, "score", None)
                    if failed is not None:
                        scores.append(failed)
                    return EditCheck(None, scores, None,
                                     resolver.redact(f"{evaluator.name}: {exc}"))
        finally:
            await runtime.aclose()
        return EditCheck(None, scores, apply_gate(scores, loaded.spec.evaluate))

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

    def secret_references(self) -> dict[str, list[str]]:
        """Which pipelines under the folder ask for each secret: `${NAME}` name -> pipeline
        names (valid pipelines only; reads their files, so call it from a worker too)."""
        users: dict[str, set[str]] = {}
        for entry in self.pipelines():
            if entry.loaded is not None:
                for name in placeholder_names(entry.loaded.raw):
                    users.setdefault(name, set()).add(entry.name)
                # A provider reads its usual variable when the pipeline names no api_key.
                implicit = _IMPLICIT_KEYS.get(entry.loaded.spec.transform.provider)
                if implicit and entry.loaded.spec.transform.api_key is None:
                    users.setdefault(implicit, set()).add(entry.name)
        return {name: sorted(found) for name, found in sorted(users.items())}

    # ------------------------------------------------------------ the workbench's settings

    def remember_theme(self, theme: str) -> None:
        """Keep the workbench's theme in `$LOOM_HOME/config.yaml` (workbench.theme), leaving
        every other setting in the file as it is."""
        from core.config import ConfigError
        from core.home import loom_home

        path = loom_home() / "config.yaml"
        try:
            raw = load_yaml(path.read_text(encoding="utf-8")) if path.is_file() else {}
        except (OSError, UnicodeDecodeError, YamlError) as exc:
            raise ConfigError(f"{path}: cannot read it: {exc}") from None
        raw = raw if isinstance(raw, dict) else {}
        workbench = raw.get("workbench")
        raw["workbench"] = {**(workbench if isinstance(workbench, dict) else {}), "theme": theme}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists():
                path.write_text("", encoding="utf-8")
            _write_atomically(path, yaml.safe_dump(raw, sort_keys=False))
        except OSError as exc:
            raise ConfigError(f"{path}: cannot write it: {exc.strerror or exc}") from None
        self.config.workbench.theme = theme


def plain_template_error(detail: str, template: str, data: Any, prompts: Any = None) -> str:
    """Jinja's words for a missing field in a person's: `'dict object' has no attribute
    'nope'` becomes `input has no field 'nope' (fields: id, text)`, naming what the template
    asked (input, context, params) and what there is."""
    import re

    match = re.search(r"'(?:dict object|[\w.]+ object)' has no attribute '([^']+)'", detail)
    if match is None:
        return detail
    name = match.group(1)
    asked = re.search(r"\b(input|context|params)\s*(?:\.\s*" + re.escape(name)
                      + r"\b|\[\s*['\"]" + re.escape(name) + r"['\"]\s*\])", template)
    where = asked.group(1) if asked else None
    if where == "input" and isinstance(data, dict):
        known = list(data)
    elif where == "context" and prompts is not None:
        known = list(getattr(prompts, "contexts", {}) or {})
    elif where == "params" and prompts is not None:
        known = list(getattr(prompts, "params", {}) or {})
    else:
        known = []
    fields = f" (fields: {', '.join(map(str, known))})" if known else ""
    plain = f"{where or 'the value'} has no field '{name}'{fields}"
    return detail[:match.start()] + plain + detail[match.end():]


# The variable each provider reads when a pipeline sets no transform.api_key.
_IMPLICIT_KEYS = IMPLICIT_KEYS


class _Done:
    pass


def _write_atomically(path: Path, text: str) -> None:
    """Replace a file's text without ever leaving it half-written."""
    temporary = path.with_name(f".{path.name}.loom-tmp")
    temporary.write_text(text, encoding="utf-8")
    with contextlib.suppress(OSError):
        shutil.copymode(path, temporary)
    os.replace(temporary, path)


def _declared_name(path: Path) -> str:
    try:
        raw = load_yaml(path.read_text(encoding="utf-8"))
        if isinstance(raw, dict) and isinstance(raw.get("name"), str):
            return str(raw["name"])
    except (OSError, UnicodeDecodeError, YamlError):
        pass
    return path.parent.name if path.name.startswith("pipeline.") else path.stem
