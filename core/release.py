"""Releasing a held run: `loom release RUN_ID`, `Workspace.release(run_id)`.

A `replace` run that ends `partial` (max_rejection_rate, a budget stop) publishes nothing while
`load.on_partial` is `hold` (the default): the destination stays byte for byte as it was, and the
records that passed stay in the store, skipped with their outputs (core.engine). A person who
has looked at the run and wants its records anyway releases it: the run's passing records, and
only those (with the records approved from its quarantine since), replace the destination,
exactly as a successful run would have, from the stored outputs (no model call).

A run is released once. The store moves it held -> releasing -> released, and the release
that moved it holds a claim (core.claims: pid, host, start time): of two releases one wins, and
the other is told who holds it. A release killed half-way leaves the run releasing under a dead
holder, which the next release takes over: the commit token the dead one noted before it
published tells whether the destination already holds the records (then they are not written
again), as it does for a resumed run. While a quarantine action holds a record of the run, the
run is not released (and the reverse): both write the same destination.

The destination is the run's own: the pipeline file the run recorded, with the run's `--set`
overrides and its shard; a pipeline whose destination has changed since is refused.
"""

from __future__ import annotations

import contextlib
import getpass
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from core.approved import write_approved
from core.connectors.base import build_row
from core.connectors.registry import open_sink, redact_uri
from core.claims import ClaimState, Holder
from core.credentials import SecretResolver
from core.crashpoints import crash_point
from core.errors import LoomError, UsageError
from core.processing import resolve_secrets
from core.records import Outcome, Record
from core.run_pipeline import run_pipeline
from core.spec import LoadedSpec
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
    (one line) for a run that is not held, or that a live release holds; answers "already
    released" for one that was. A release whose holder died (core.claims) is taken over and
    finished: not written again if it had published (its commit token says so)."""
    run = await store.get_run(run_id)
    if run is None:
        raise UsageError(f"there is no run {run_id}")
    if run.commit_state == RELEASED:
        return _already(run)
    if run.commit_state not in (HELD, RELEASING):
        raise _not_held(run)
    loaded = _pipeline(run)
    holder = Holder.me().key
    claim = await store.claim_release(run.run_id, holder)
    if claim.state is ClaimState.RESOLVED:
        return _already(run)
    if claim.state is ClaimState.HELD:
        raise UsageError(f"run {run.run_id} is being released by {claim.holder}; nothing done")
    if claim.state is ClaimState.BUSY:
        raise UsageError(f"run {run.run_id}: a quarantined record of it is being acted on by "
                         f"{claim.holder}; release the run once that is done")
    if claim.state is not ClaimState.CLAIMED and claim.state is not ClaimState.TAKEN_OVER:
        raise _not_held(run)
    publish = _Publish(store, run.run_id, loaded, holder)
    try:
        await publish.run(claim.token if claim.state is ClaimState.TAKEN_OVER else None)
    except BaseException:
        if not publish.began:
            # Nothing reached the destination: the run is held again, for the next release.
            with contextlib.suppress(Exception):
                await store.abandon_release(run.run_id, holder)
        raise
    count = len(publish.row_ids)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    await store.finish_release(run.run_id, publish.row_ids,
                               f"released by {_actor()} at {stamp}: {count} records loaded")
    destination = redact_uri(loaded.spec.load.destination)
    approved = (f" (and {publish.approved} approved from its quarantine)"
                if publish.approved else "")
    again = (" (published by an interrupted release; not written again)"
             if publish.found_published else "")
    return ReleaseResult(run.run_id, count, destination,
                         f"released run {run.run_id}: {count} record{'s' if count != 1 else ''} "
                         f"loaded into {destination}{approved}{again}")


def _already(run: Any) -> ReleaseResult:
    return ReleaseResult(run.run_id, 0, run.destination or "",
                         f"run {run.run_id} was already released; nothing done")


def _not_held(run: Any) -> UsageError:
    return UsageError(f"run {run.run_id} ended {run.status} and holds nothing back: there is "
                      f"nothing to release")


def _pipeline(run: Any) -> LoadedSpec:
    """The run's pipeline, as the run ran it: its file, its --set overrides, its shard."""
    try:
        loaded = run_pipeline(run)
    except LoomError as exc:
        raise UsageError(f"cannot release run {run.run_id}: {exc}") from None
    if loaded.spec.load.mode != "replace":
        raise UsageError(f"cannot release run {run.run_id}: its pipeline's load.mode is now "
                         f"{loaded.spec.load.mode}, not replace")
    now = redact_uri(loaded.spec.load.destination)
    if run.destination and now != run.destination:
        raise UsageError(f"cannot release run {run.run_id}: its pipeline's destination changed "
                         f"since it ran ({run.destination} then, {now} now)")
    return loaded


class _Publish:
    """Write the run's passing records (skipped, with an output and a passing verdict), and
    the records approved from its quarantine since, then commit: the destination is replaced
    by them in one step, as by a successful run. `began`: the sink was told to publish (from
    then on a failure leaves the run releasing, for the commit token to settle)."""

    def __init__(self, store: Store, run_id: str, loaded: LoadedSpec, holder: str) -> None:
        self.store = store
        self.run_id = run_id
        self.loaded = loaded
        self.holder = holder
        self.row_ids: list[int] = []
        self.approved = 0
        self.began = False
        self.found_published = False

    async def run(self, token: str | None) -> None:
        """`token`: the commit token a dead holder of the release left, if any."""
        store, run_id = self.store, self.run_id
        async for page in store.resume_rows(run_id):
            self.row_ids.extend(row.id for row in page if row.outcome == Outcome.SKIPPED.value
                                and row.has_output and _passed(row.verdict))
        if not self.row_ids:
            raise UsageError(f"run {run_id} holds no passing record: there is nothing to release")
        sink = open_sink(resolve_secrets(self.loaded, SecretResolver()))
        await sink.open(run_id)
        try:
            if token is not None and await sink.committed(token):
                # The dead holder published; the store had not said so yet.
                self.began = self.found_published = True
                await sink.abort()
                return
            if sink.resume_policy == "rewrite":
                await sink.withdraw()  # what a dead holder staged under the run's name
            await self._write(sink)
            token = await sink.prepare_commit()
            if not await store.note_release_token(run_id, self.holder, token):
                raise UsageError(f"run {run_id}: another process took the release over; "
                                 f"nothing published by this one")
            self.began = True
            crash_point("release:committing")
            await sink.commit()
            crash_point("release:committed")
        except BaseException:
            with contextlib.suppress(Exception):
                await sink.abort()
            raise

    async def _write(self, sink: Any) -> None:
        loaded, store = self.loaded, self.store
        batch_size = loaded.spec.load.batch_size
        written: set[str] = set()  # the run's own record ids, now in the sink
        for start in range(0, len(self.row_ids), batch_size):
            rows = await store.stored_results(self.row_ids[start:start + batch_size])
            rows.sort(key=lambda row: row.id or 0)  # stored rows all have an id
            await sink.write_records(
                [build_row(loaded, Record(id=row.record_id, data=row.input or {},
                                          ordinal=row.ordinal), row.output) for row in rows],
                [row.record_id for row in rows])
            written.update(row.record_id for row in rows)
            await store.renew_release(self.run_id, self.holder)

        async def written_by_run(record_ids: list[str]) -> set[str]:
            return written.intersection(record_ids)

        async def renew() -> None:
            await store.renew_release(self.run_id, self.holder)

        # Approved since the run (core.quarantine): they are in the destination now, and a
        # release that replaced it without them would lose them.
        self.approved = await write_approved(store, self.run_id, loaded, sink,
                                             written_by_run=written_by_run, after_batch=renew)
