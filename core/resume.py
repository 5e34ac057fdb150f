"""Resuming a run that did not finish: `loom --run PIPELINE --resume [RUN_ID]`.

What keeps a run resumable is the engine's checkpointing (core.engine): every record's result is
in the history store within about 100 ms of its model answer — a record that passed the gate as
`passed`, with its output — before any sink batch holds it. The store does not follow each batch
(that would cost a write per record); the destination itself says what it holds: a sink that
commits batch by batch keeps a ledger row per batch in the same transaction, a sink that
publishes at commit (files, replace tables) holds nothing until then, and leaves a token to tell
whether a commit that began went through. So after a crash (kill -9, power loss, OOM) Loom knows,
for every record, whether it was paid for and whether the destination has it.

A resumed run keeps its run id and reads the source again. For each record it decides from the
checkpoints (`ResumeIndex`):

- loaded (at the destination) or quarantined: nothing to do, nothing paid again;
- passed and not at the destination (see `Sink.resume_policy`): loaded now from the stored
  output, without a model call;
- skipped without an answer, or no row at all (in flight at the crash, never reached): processed.

Before that, `reconcile` settles what the previous attempt left half-way with the destination
itself: a "ledger" sink says which `passed` records its batches already hold; a "publish" sink
says whether a commit that began went through (`committed(token)`); a "rewrite" sink withdraws
the run's output, which is then written again whole.

Memory: the index holds each record id of the run (about 100 bytes per record), like the
duplicate-id check does; records themselves stream as in any run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from core.claims import describe, holder_alive, host_name, process_alive
from core.errors import ResumeError
from core.events import RunStatus
from core.records import Outcome
from core.spec import LoadedSpec, snapshot
from core.store import PASSED, PipelineRun, Store

if TYPE_CHECKING:
    from core.connectors.base import Sink
    from core.processing import Runtime
    from core.sharding import Shard

# A `running` run whose heartbeat (every 2 s) is older than this is taken for dead even when its
# process cannot be checked (another machine) or its pid now belongs to someone else.
STALE_AFTER_S = 60.0
# error_type of the rows the duplicate-id check writes (core.engine): never the "primary" row.
DUPLICATE_ID = "DuplicateId"

# What a resumed run does with a record the store has a row for.
DONE = 0  # at the destination, or quarantined: nothing
LOAD = 1  # passed, not at the destination: load the stored output (no call)
RELOAD = 2  # loaded, but a replace destination is rebuilt: write it again, still counted loaded
PROCESS = 3  # skipped without an answer: process it, its new row replaces the old one


def heartbeat_age(run: PipelineRun, now: datetime | None = None) -> float:
    now = now or datetime.now(timezone.utc)
    updated = run.updated_at if run.updated_at.tzinfo else run.updated_at.replace(tzinfo=timezone.utc)
    return max(0.0, (now - updated).total_seconds())


def is_alive(run: PipelineRun, now: datetime | None = None) -> bool:
    """Whether a `running` run still has a process working on it: its process is alive on
    this machine (its pid, started when the run's process did: a reused pid is not it) and
    its heartbeat is fresh (on another machine: the heartbeat alone)."""
    if run.status != RunStatus.RUNNING:
        return False
    options = run.options or {}
    pid, host = options.get("pid"), options.get("host")
    # Runs recorded before the start time was kept have none: their pid alone says it.
    started = options.get("process_started")
    started = started if isinstance(started, str) else ""
    if isinstance(pid, int) and host == host_name() and not process_alive(pid, started):
        return False
    return heartbeat_age(run, now) < STALE_AFTER_S


def resume_problem(run: PipelineRun) -> str | None:
    """Why `run` cannot be resumed, as one line; None when it can."""
    if run.status == RunStatus.RUNNING:
        if not is_alive(run):
            return None
        options = run.options or {}
        return (f"run {run.run_id} is still running (pid {options.get('pid', '?')} on "
                f"{options.get('host', '?')}, last heartbeat {heartbeat_age(run):.0f} s ago)")
    if run.commit_state == "releasing" and holder_alive(run.claim_holder, run.claimed_at):
        # Both would write its destination; a dead release's claim is no obstacle (the resume
        # rebuilds the replace destination whole).
        return (f"run {run.run_id} is being released by "
                f"{describe(run.claim_holder, run.claimed_at)} (loom release)")
    if run.status in (RunStatus.CANCELLED, RunStatus.FAILED, RunStatus.PARTIAL):
        # A resume that failed before it settled with the destination kept the run's counts,
        # which may not show what is left: it may be resumed again whatever they say.
        if run.skipped or (run.status == RunStatus.FAILED and (run.attempts or 1) > 1):
            return None
        return f"run {run.run_id} ended {run.status} with no record left unfinished: nothing to resume"
    return f"run {run.run_id} finished ({run.status}): there is nothing to resume"


def is_resumable(run: PipelineRun) -> bool:
    return resume_problem(run) is None


async def find_resumable(store: Store, pipeline: str, run_id: str | None = None, *,
                         shard: "Shard | None" = None, path: str | None = None) -> PipelineRun:
    """The run to resume: `run_id` (or a unique prefix of it), else the pipeline's newest
    unfinished one (of this shard, when one is given). A pipeline is its name and its file
    (`path`): a copy of it elsewhere never resumes the original's runs. Raises ResumeError
    with one line."""
    if run_id is not None:
        run = await store.get_run(run_id)
        if run is None:
            raise ResumeError(f"--resume {run_id}: there is no such run")
        if run.pipeline_name != pipeline:
            raise ResumeError(f"--resume {run_id}: that run is of pipeline {run.pipeline_name}, "
                              f"not {pipeline}")
        if path is not None and run.pipeline_path and run.pipeline_path != path:
            raise ResumeError(f"--resume {run_id}: that run is of the pipeline file "
                              f"{run.pipeline_path}, not {path} (another file with the same "
                              f"name: resume it from there)")
        problem = resume_problem(run)
        if problem is not None:
            raise ResumeError(f"--resume: {problem}")
        return run
    alive: PipelineRun | None = None
    for run in await store.unfinished_runs(pipeline=pipeline, path=path, limit=200):
        if shard is not None and (run.shard_index, run.shard_count, run.shard_group) != (
                shard.index, shard.count, shard.group):
            continue
        if resume_problem(run) is None:
            return run
        if alive is None and run.status == RunStatus.RUNNING:
            alive = run
    if alive is not None:
        raise ResumeError(f"--resume: {resume_problem(alive)}; nothing else of pipeline "
                          f"{pipeline} is unfinished")
    raise ResumeError(f"--resume: pipeline {pipeline} has no unfinished run "
                      "(running with its process gone, or cancelled or failed with records left)")


# ---------------------------------------------------------------- has the pipeline changed?


def pipeline_change(run: PipelineRun, loaded: LoadedSpec, runtime: "Runtime") -> str | None:
    """What differs between the pipeline a run started with and the one at hand, as a phrase;
    None when nothing that shapes a record's result did."""
    prompts = runtime.prompts
    if run.prompt_hash != prompts.prompt_hash:
        return f"the prompt {prompts.prompt_path.name} was edited"
    if run.system_hash != prompts.system_hash:
        return "the system prompt was edited"
    before = run.context_hashes or {}
    now = prompts.context_hashes
    for name in sorted(set(before) | set(now)):
        if before.get(name) != now.get(name):
            return f"context {name} was {'edited' if name in before and name in now else 'added or removed'}"
    judges_then = (run.options or {}).get("judge_prompts") or {}
    judges_now = {evaluator.name: [v.hash for v in evaluator.prompt_versions()]
                  for evaluator in runtime.processor.evaluators if evaluator.prompt_versions()}
    for name in sorted(set(judges_then) | set(judges_now)):
        if judges_then.get(name) != judges_now.get(name):
            return f"the prompt of judge {name} was edited"
    difference = _first_difference(_shaping(run.config or {}), _shaping(snapshot(loaded)))
    if difference is not None:
        path, then, now_value = difference
        return f"{path or 'the pipeline'}: {_shown(then)} then, {_shown(now_value)} now"
    return None


_ABSENT = object()
# Settings that change how a run goes, not what a record's result is: a resumed run may differ in
# these (a larger budget for a run a budget stopped, a lower concurrency after 429s, a rotated key).
# Where the model is reached (base_url, headers) is operational too: fixing the endpoint that
# stopped a run, then resuming it, is the point of the circuit breaker.
_OPERATIONAL = {"description": None, "budget": None, "monitoring": None, "circuit_breaker": None,
                "transform": ("concurrency", "rate_limit", "timeout_s", "max_retries", "api_key",
                              "base_url", "headers"),
                "extract": ("batch_size",), "load": ("batch_size", "on_partial")}


def _shaping(config: dict[str, Any]) -> dict[str, Any]:
    """The pipeline without its operational settings."""
    shaped = dict(config)
    for section, keys in _OPERATIONAL.items():
        if keys is None:
            shaped.pop(section, None)
        elif isinstance(shaped.get(section), dict):
            shaped[section] = {k: v for k, v in shaped[section].items() if k not in keys}
    return shaped


def _first_difference(then: Any, now: Any, path: str = "") -> tuple[str, Any, Any] | None:
    if isinstance(then, dict) and isinstance(now, dict):
        for key in list(then) + [k for k in now if k not in then]:
            found = _first_difference(then.get(key, _ABSENT), now.get(key, _ABSENT),
                                      f"{path}.{key}" if path else str(key))
            if found is not None:
                return found
        return None
    if isinstance(then, list) and isinstance(now, list) and len(then) == len(now):
        for index, (a, b) in enumerate(zip(then, now)):
            found = _first_difference(a, b, f"{path}[{index}]")
            if found is not None:
                return found
        return None
    return None if then == now else (path, then, now)


def _shown(value: Any) -> str:
    if value is _ABSENT:
        return "absent"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ---------------------------------------------------------------- the index


class Entry:
    """A record the store has a (primary) row for."""

    __slots__ = ("pk", "kind", "seen")

    def __init__(self, pk: int, kind: int) -> None:
        self.pk = pk
        self.kind = kind
        self.seen = False  # read from the source by this attempt


@dataclass
class ResumeIndex:
    """What a resumed attempt knows from the store, by record id."""

    attempt: int
    entries: dict[str, Entry] = field(default_factory=dict)
    # (record id, ordinal) of the rows the duplicate-id check wrote: recorded already.
    duplicates: set[tuple[str, int]] = field(default_factory=set)
    loaded: int = 0
    quarantined: int = 0
    skipped: int = 0  # duplicate rows that are skipped (keep_last)
    from_store: int = 0
    rewritten: int = 0
    to_process: int = 0


StoredRowCounter = Callable[[Any, int], None]


async def reconcile(store: Store, run: PipelineRun, sink: "Sink", *, attempt: int,
                    rebuilds: bool, count: StoredRowCounter) -> ResumeIndex:
    """Settle with the destination what the run's earlier attempts left, then index its rows.

    `rebuilds`: the destination is rebuilt from this run alone (mode replace), so what was
    loaded is written again. `count(row, kind)` feeds each row's counts and cost to the run's
    totals, once. Rows change state here only to say the truth about the destination: passed
    rows that a commit which went through published, or that a committed batch holds, are
    loaded; loaded rows a "rewrite" sink withdrew are passed again; skipped rows that had passed
    are passed again. Every change is idempotent, so a crash during this is resumed the same way.
    """
    published = False
    if run.commit_state == "committing":
        published = await sink.committed(run.commit_token)
    ledger: set[str] = set()
    if sink.resume_policy == "ledger":
        ledger = await sink.written_ids()
    rewrite = sink.resume_policy == "rewrite"
    if rewrite:
        await sink.withdraw()

    index = ResumeIndex(attempt=attempt)
    flips: dict[str, list[int]] = {PASSED: [], Outcome.LOADED.value: []}
    entries = index.entries
    async for page in store.resume_rows(run.run_id):
        for row in page:
            outcome = row.outcome
            record_id = row.record_id
            if row.error_type == DUPLICATE_ID or record_id in entries:
                index.duplicates.add((record_id, row.ordinal))
                if outcome == Outcome.QUARANTINED.value:
                    index.quarantined += 1
                else:
                    index.skipped += 1
                count(row, DONE)
                continue
            state = outcome
            if state == PASSED and (published or record_id in ledger):
                state = Outcome.LOADED.value  # at the destination; the store had not said so yet
            if state == Outcome.LOADED.value and rewrite:
                state = PASSED  # withdrawn: written again
            if state == Outcome.SKIPPED.value and row.has_output and _passed(row.verdict):
                state = PASSED  # answered and passed, then the run stopped before loading it
            if state != outcome:
                flips[state].append(row.id)
            if state == Outcome.QUARANTINED.value:
                kind = DONE
                index.quarantined += 1
            elif state == Outcome.LOADED.value:
                kind = RELOAD if rebuilds else DONE
                index.loaded += 1
                index.rewritten += kind == RELOAD
            elif state == PASSED:
                kind = LOAD
                index.from_store += 1
            else:
                kind = PROCESS
                index.to_process += 1
            entries[record_id] = Entry(row.id, kind)
            count(row, kind)
    if index.rewritten and (published or run.commit_state == "committed") and \
            not index.to_process and not index.from_store:
        # The replace an earlier attempt published is in place and nothing is left to add to
        # it: rebuilding it would only drop what other runs appended to it since.
        for entry in entries.values():
            if entry.kind == RELOAD:
                entry.kind = DONE
        index.rewritten = 0
    for outcome, row_ids in flips.items():
        if row_ids:
            await store.set_outcomes(row_ids, outcome)
    await store.reset_commit_state(run.run_id)
    return index


def _passed(verdict: Any) -> bool:
    return isinstance(verdict, dict) and verdict.get("passed") is True


@dataclass
class ResumeRequest:
    """Resume `run` (as found by `find_resumable`); `force`: even if the pipeline changed."""

    run: PipelineRun
    force: bool = False
