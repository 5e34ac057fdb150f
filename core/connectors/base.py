"""What every source and sink promises the engine.

A `Source` streams records in batches: nothing holds all of them. A `Sink` receives batches of
rows and makes them visible only when the run commits (or batch by batch inside transactions
for databases), so a crash never leaves a half-written destination in place.
"""

from __future__ import annotations

import abc
import hashlib
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from core.errors import ConnectorError, LoadError
from core.records import Record, resolve_field

if TYPE_CHECKING:
    from core.connectors.registry import ParsedURI
    from core.spec import LoadedSpec

_log = logging.getLogger("loom.connectors")


def row_hash(data: dict[str, Any]) -> str:
    """A stable id for a row without an id_field: the same row always gets the same id."""
    canonical = json.dumps(data, sort_keys=True, ensure_ascii=False, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


class Source(abc.ABC):
    """Reads records from somewhere. Subclasses implement `_rows`."""

    def __init__(self, loaded: "LoadedSpec", uri: "ParsedURI") -> None:
        self.loaded = loaded
        self.uri = uri
        self.spec = loaded.spec.extract
        self.batch_size = self.spec.batch_size
        self.id_field = self.spec.id_field

    @abc.abstractmethod
    def _rows(self) -> AsyncGenerator[tuple[dict[str, Any] | None, str, str | None], None]:
        """Yield (row, origin, error) per row, in source order.

        `origin` says where the row came from ("reviews.csv:17"). A row the source could not
        parse is yielded as (None or the partial row, origin, "why"): it will be quarantined at
        stage `extract` with that reason, never dropped.
        """

    async def count_hint(self) -> int | None:
        """How many rows the source will yield, when that is cheap to know; else None."""
        return None

    def describe(self) -> str:
        """The source for lineage, without secrets."""
        return self.uri.display

    async def aclose(self) -> None:
        """Release connections and file handles."""

    async def batches(self, limit: int | None = None) -> AsyncIterator[list[Record]]:
        """Records in batches of `batch_size`, ids assigned, at most `limit` of them."""
        if limit is None:
            limit = self.spec.limit
        batch: list[Record] = []
        ordinal = 0
        rows = self._rows()
        try:
            async for row, origin, error in rows:
                if limit is not None and ordinal >= limit:
                    break
                batch.append(self.make_record(row, ordinal, origin, error))
                ordinal += 1
                if len(batch) >= self.batch_size:
                    yield batch
                    batch = []
            if batch:
                yield batch
        finally:
            await rows.aclose()

    def make_record(self, row: dict[str, Any] | None, ordinal: int, origin: str,
                    error: str | None = None) -> Record:
        data = row if isinstance(row, dict) else {}
        record_id: str | None = None
        if error is None and self.id_field:
            value = data.get(self.id_field)
            if value is None or value == "":
                error = f"id_field {self.id_field!r} is missing or empty"
            else:
                record_id = str(value)
        if record_id is None:
            record_id = row_hash(data) if data else f"{origin}"
        return Record(id=record_id, data=data, ordinal=ordinal, origin=origin, extract_error=error)


class Sink(abc.ABC):
    """Writes loaded rows somewhere.

    The engine calls `open(run_id)` once, then `write(batch)` for each batch of rows that passed,
    then `commit()` at the end (or `abort()` when the run fails). A sink must leave the
    destination either as it was or with every committed row: never half-written.
    """

    def __init__(self, loaded: "LoadedSpec", uri: "ParsedURI") -> None:
        self.loaded = loaded
        self.uri = uri
        self.spec = loaded.spec.load
        # What the sink has to tell the person running it (it waits for another writer, it
        # cleaned up after a dead run): the engine makes these run warnings; elsewhere, a log.
        self.notify: Callable[[str], None] = _log.warning

    #: What a resumed run (core.resume) does about what earlier attempts of the run wrote here:
    #: - "ledger": a batch is at the destination once `write_records` returns (one database
    #:   transaction per batch), and the same transaction notes the batch's record ids in a
    #:   ledger: `written_ids()` says which records need no writing again.
    #: - "publish": nothing is visible before `commit()` publishes it (files: a staged temp file
    #:   renamed into place; replace tables): an attempt that did not publish wrote nothing, and
    #:   `committed(token)` tells whether one that began to publish did.
    #: - "rewrite": what the run wrote is withdrawn when it resumes (`withdraw()`) and written
    #:   again, whole, from the history store (S3 parts).
    resume_policy = "publish"

    async def open(self, run_id: str) -> None:
        self.run_id = run_id

    @abc.abstractmethod
    async def write(self, rows: list[dict[str, Any]]) -> None:
        """Write one batch. Raise LoadError (the batch's records are quarantined at `load`)."""

    async def write_records(self, rows: list[dict[str, Any]], record_ids: list[str]) -> None:
        """Write one batch whose rows are these records' (what the engine calls); a "ledger"
        sink notes the ids in the batch's own transaction."""
        await self.write(rows)

    async def written_ids(self) -> set[str]:
        """Ids of the records earlier attempts of this run wrote ("ledger" sinks), after open()."""
        return set()

    async def withdraw(self) -> None:
        """Remove what earlier attempts of this run wrote ("rewrite" sinks), after open()."""

    async def prepare_commit(self) -> str | None:
        """Get ready to publish; returns a token by which `committed` can later tell whether the
        commit that follows went through (a crash between the two), or None."""
        return None

    async def committed(self, token: str | None) -> bool:
        """Whether the commit prepared with `token` (by an earlier attempt) published."""
        return False

    async def commit(self) -> None:
        """Make everything written visible at the destination."""

    async def abort(self) -> None:
        """Leave the destination as it was before the run (temp files removed)."""

    def describe(self) -> str:
        """The destination for lineage, without secrets."""
        return self.uri.display


def id_column(loaded: "LoadedSpec") -> str:
    """The column a record's id is written to: the source's id_field, else `record_id`."""
    return loaded.spec.extract.id_field or "record_id"


def build_row(loaded: "LoadedSpec", record: Record, output: Any) -> dict[str, Any]:
    """The row a record loads as: `load.fields` when given, else the id plus the output's fields."""
    fields = loaded.spec.load.fields
    if fields:
        row: dict[str, Any] = {}
        for column, path in fields.items():
            if path == "id":
                row[column] = record.id
                continue
            try:
                row[column] = resolve_field(path, record.data, output)
            except KeyError:
                row[column] = None
        return row
    row = {id_column(loaded): record.id}
    if isinstance(output, dict):
        for key, value in output.items():
            row.setdefault(key, value)
    else:
        row["output"] = output
    return row


def rows_by_columns(rows: list[dict[str, Any]], key: list[str] | tuple[str, ...],
                    where: str, fold: Callable[[str], str] | None = None,
                    why: str = "") -> dict[tuple[str, ...], list[dict[str, Any]]]:
    """A database sink's batch, grouped by column set (one INSERT statement each), after
    checking that every row has a value for each key column.

    `fold` is how the destination compares column names (SQLite ignores case): two keys of
    one row that fold to the same name would be one column, and one value would be dropped
    silently, so the row is refused (a LoadError: the batch is written row by row and only
    this record is quarantined). `why` says, in the error, why they are one column.
    """
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        missing = [k for k in key if row.get(k) is None]
        if missing:
            raise LoadError(f"{where}: a row has no value for key {', '.join(map(repr, missing))}")
        if fold is not None:
            seen: dict[str, str] = {}
            for name in row:
                other = seen.setdefault(fold(name), name)
                if other != name:
                    raise LoadError(f"{where}: the keys {other!r} and {name!r} would be one "
                                    f"column ({why or 'the same name here'}) and one value "
                                    f"would be lost; rename one (fields: in load)")
        groups.setdefault(tuple(row), []).append(row)
    return groups


def quote_identifier(name: str) -> str:
    """A SQL identifier, always quoted: table and column names never reach SQL unquoted.

    A dotted name is schema-qualified ("analytics.scores" -> "analytics"."scores").
    """
    if not name or "\x00" in name:
        raise ConnectorError(f"invalid SQL identifier {name!r}")
    return ".".join('"' + part.replace('"', '""') + '"' for part in name.split("."))
