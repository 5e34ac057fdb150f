"""Releasing a held run: `loom release RUN_ID`, `Workspace.release(run_id)`.

A `replace` run that ends `partial` (max_rejection_rate, a budget stop) publishes nothing while
`load.on_partial` is `hold` (the default): the destination stays byte for byte as it was, and the
records that passed stay in the store, skipped with their outputs (core.engine). A person who
has looked at the run and wants its records anyway releases it: the run's passing records, and
only those, replace the destination, exactly as a successful run would have, from the stored
outputs (no model call). A run is released once: the store moves it held -> releasing ->
released with conditional updates, so of two releases one wins and the other says so.

The destination is the run's own: the pipeline file the run recorded, with the run's `--set`
overrides and its shard; a pipeline whose destination has changed since is refused.
"""

from __future__ import annotations

import contextlib
import getpass
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from core.connectors.base import build_row
from core.connectors.registry import open_sink, redact_uri
from core.credentials import SecretResolver
from core.crashpoints import crash_point
from core.errors import LoomError, UsageError
from core.processing import resolve_secrets
from core.records import Outcome, Record
from core.sharding import with_shard_index
from core.spec import LoadedSpec, load_spec
from core.store import Store

HELD, RELEASING, RELEASED = "held", "releasing", "released"


@dataclass(frozen=True)
class ReleaseResult:
    run_id: str
    released: int  # records loaded by this release (0: nothing done)
    destination: str
    message: str  # one line for people


def _passed(verdict: Any) -> bool:
    return isinstance(verdict, dict) and verdict.get("passed") is True


def _actor() -> str:
    with contextlib.suppress(Exception):
        return getpass.getuser()
    return "someone"


async def release_run(store: Store, run_id: str) -> ReleaseResult:
    """Publish a held run's passing records into its destination, once. Raises UsageError
    (one line) for a run that is not held; answers "already released" for one that was."""
    run = await store.get_run(run_id)
    if run is None:
        raise UsageError(f"there is no run {run_id}")
    if run.commit_state == RELEASED:
        return ReleaseResult(run.run_id, 0, run.destination or "",
                             f"run {run.run_id} was already released; nothing done")
    if run.commit_state == RELEASING:
        raise UsageError(f"run {run.run_id} is being released by another process (or a release "
                         f"of it was interrupted)")
    if run.commit_state != HELD:
        raise UsageError(f"run {run.run_id} ended {run.status} and holds nothing back: there is "
                         f"nothing to release")
    loaded = _pipeline(run)
    if not await store.set_commit_state(run.run_id, RELEASING, only_from=HELD):
        return ReleaseResult(run.run_id, 0, run.destination or "",
                             f"run {run.run_id} was already released; nothing done")
    try:
        count, row_ids = await _publish(store, run.run_id, loaded)
    except BaseException:
        await store.set_commit_state(run.run_id, HELD, only_from=RELEASING)
        raise
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    await store.finish_release(run.run_id, row_ids,
                               f"released by {_actor()} at {stamp}: {count} records loaded")
    destination = redact_uri(loaded.spec.load.destination)
    return ReleaseResult(run.run_id, count, destination,
                         f"released run {run.run_id}: {count} record{'s' if count != 1 else ''} "
                         f"loaded into {destination}")


def _pipeline(run: Any) -> LoadedSpec:
    """The run's pipeline, as the run ran it: its file, its --set overrides, its shard."""
    overrides = [str(item) for item in (run.options or {}).get("overrides") or []]
    try:
        loaded = load_spec(Path(run.pipeline_path), overrides)
    except LoomError as exc:
        raise UsageError(f"cannot release run {run.run_id}: {exc}") from None
    loaded = with_shard_index(loaded, run.shard_index or 0)
    if loaded.spec.load.mode != "replace":
        raise UsageError(f"cannot release run {run.run_id}: its pipeline's load.mode is now "
                         f"{loaded.spec.load.mode}, not replace")
    now = redact_uri(loaded.spec.load.destination)
    if run.destination and now != run.destination:
        raise UsageError(f"cannot release run {run.run_id}: its pipeline's destination changed "
                         f"since it ran ({run.destination} then, {now} now)")
    return loaded


async def _publish(store: Store, run_id: str, loaded: LoadedSpec) -> tuple[int, list[int]]:
    """Write the run's passing records (skipped, with an output and a passing verdict) and
    commit: the destination is replaced by them in one step, as by a successful run."""
    sink = open_sink(resolve_secrets(loaded, SecretResolver()))
    batch_size = loaded.spec.load.batch_size
    row_ids: list[int] = []
    await sink.open(run_id)
    try:
        async for page in store.resume_rows(run_id):
            wanted = [row.id for row in page if row.outcome == Outcome.SKIPPED.value
                      and row.has_output and _passed(row.verdict)]
            for start in range(0, len(wanted), batch_size):
                rows = await store.stored_results(wanted[start:start + batch_size])
                rows.sort(key=lambda row: row.id)
                await sink.write_records(
                    [build_row(loaded, Record(id=row.record_id, data=row.input or {},
                                              ordinal=row.ordinal), row.output) for row in rows],
                    [row.record_id for row in rows])
                row_ids.extend(row.id for row in rows)
        if not row_ids:
            raise UsageError(f"run {run_id} holds no passing record: there is nothing to release")
        await sink.prepare_commit()
        crash_point("release:committing")
        await sink.commit()
        crash_point("release:committed")
    except BaseException:
        with contextlib.suppress(Exception):
            await sink.abort()
        raise
    return len(row_ids), row_ids
