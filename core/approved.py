"""Records approved from a run's quarantine, kept in a `replace` destination rebuilt for the run.

An approval (or an edit, or a reprocess that passed: core.quarantine) writes its record into the
run's destination, and the store then says the record is loaded. A `replace` destination is
rebuilt whole from one run each time that run publishes it: the run's own commit (a first
attempt, or a `--resume` of one that was killed) and `loom release` of a held run. A rebuild of
the run's passing records alone would take the approved records out of the destination while
the store still says they are in it. So every rebuild writes them again, through
`write_approved`, from the store (no model call):

- each record id once: in a replace destination an approval takes the place of the row with
  its id, so of several approved records with one id (an id the source holds more than once)
  the latest approval stands;
- none whose id the rebuild has already written from the run's own rows: the destination holds
  one row per id. (Only a record with a duplicate id can be both: a record quarantined by the
  run is never processed again by a resume of it.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from core.connectors.base import build_row
from core.records import Record

if TYPE_CHECKING:
    from core.connectors.base import Sink
    from core.spec import LoadedSpec
    from core.store import QuarantinedRecord, Store

# A quarantined record with one of these statuses is at the destination (core.quarantine).
APPROVED_STATUSES = ("approved", "reprocessed")

# Which of these record ids the rebuild already wrote from the run's own rows.
WrittenByRun = Callable[[list[str]], Awaitable[set[str]]]


async def write_approved(store: "Store", run_id: str, loaded: "LoadedSpec", sink: "Sink", *,
                         written_by_run: WrittenByRun,
                         after_batch: Callable[[], Awaitable[None]] | None = None) -> int:
    """Write the records approved from `run_id`'s quarantine into `sink` (opened for a rebuild
    of the run's replace destination, not yet committed), each record id once. Returns how
    many were written. `after_batch`: called after each batch (a release renews its claim)."""
    latest = await _latest_approval_by_record(store, run_id)
    written = 0
    async for page in _approved_pages(store, run_id, loaded.spec.load.batch_size):
        kept = [row for row in page if latest.get(row.record_id) == row.id]
        if not kept:
            continue
        already = await written_by_run([row.record_id for row in kept])
        kept = [row for row in kept if row.record_id not in already]
        if not kept:
            continue
        await sink.write_records([_row(loaded, row) for row in kept],
                                 [row.record_id for row in kept])
        written += len(kept)
        if after_batch is not None:
            await after_batch()
    return written


def _row(loaded: "LoadedSpec", row: "QuarantinedRecord") -> dict[str, object]:
    record = Record(id=row.record_id, data=row.input or {}, ordinal=row.ordinal)
    return build_row(loaded, record, row.final_output)


async def _approved_pages(store: "Store", run_id: str, size: int
                          ) -> AsyncIterator[Sequence["QuarantinedRecord"]]:
    """The run's approved records that have an output to load, a page at a time."""
    for status in APPROVED_STATUSES:
        after = None
        while page := await store.list_quarantine(run_id=run_id, status=status, limit=size,
                                                  after_id=after):
            after = page[-1].id
            yield [row for row in page if row.final_output is not None]


async def _latest_approval_by_record(store: "Store", run_id: str) -> dict[str, int]:
    """The quarantine id of each record id's latest approval. Only ids are kept: the records
    are read again, a page at a time, when they are written."""
    latest: dict[str, tuple[datetime, int]] = {}
    async for page in _approved_pages(store, run_id, 1000):
        for row in page:
            when = _aware(row.resolved_at)
            if row.record_id not in latest or (when, row.number) > latest[row.record_id]:
                latest[row.record_id] = (when, row.number)
    return {record_id: quarantine_id for record_id, (_, quarantine_id) in latest.items()}


def _aware(when: datetime | None) -> datetime:
    if when is None:
        return datetime.min.replace(tzinfo=timezone.utc)
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)
