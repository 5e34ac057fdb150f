"""The run history read straight from a SQLite store with the standard library's sqlite3, for
`loom runs`: building the SQLAlchemy models costs more than the whole listing.

Only a store it can trust is read here: a SQLite file that exists, at SCHEMA_HEAD, opened
read-only. Anything else (PostgreSQL, a store to create or upgrade, any sqlite3 error) is left
to the full Store (`open_history_reader` returns None), which migrates and explains.

Rows come back as `StoredRow`s with the attributes of the models' rows (core.store.models:
PipelineRun, MonitoringAlert), the values decoded as the models' column types decode them.
tests/unit/test_history_reader.py reads one store both ways and compares every attribute.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote

from core.store.revision import SCHEMA_HEAD

# The columns whose stored text is not the value: the models' JSONType and UTCDateTime columns,
# and booleans (SQLite keeps 0 and 1). The test fails when models.py gains one not named here.
JSON_COLUMNS = {
    "pipeline_runs": {"config", "context_hashes", "params", "options", "cost_by_stage",
                      "cost_by_model", "warnings", "extra", "savings_usd"},
    "monitoring_alerts": {"details"},
}
DATETIME_COLUMNS = {
    "pipeline_runs": {"started_at", "finished_at", "updated_at", "claimed_at"},
    "monitoring_alerts": {"triggered_at", "acknowledged_at", "notification_sent_at"},
}
BOOL_COLUMNS = {"pipeline_runs": set(), "monitoring_alerts": {"acknowledged", "notification_sent"}}

_SQLITE_PREFIXES = ("sqlite:///", "sqlite+aiosqlite:///")
_BUSY_TIMEOUT_S = 15.0  # as the Store waits for a writer (core.store.engine.BUSY_TIMEOUT_MS)


class StoredRow(SimpleNamespace):
    """A row of the history, with its columns as attributes (as the models' rows have them)."""


def sqlite_path(url: str) -> Path | None:
    """The file of a plain SQLite URL; None for anything this reader leaves to the Store
    (another database, a query string, percent-escapes, `file:` URIs)."""
    prefix = next((p for p in _SQLITE_PREFIXES if url.startswith(p)), None)
    if prefix is None:
        return None
    database = url[len(prefix):]
    if not database or any(c in database for c in "?#%") or database.startswith("file:"):
        return None
    return Path(database).expanduser()


def open_history_reader(url: str) -> HistoryReader | None:
    """A reader for the store at `url`, or None when the full Store has to open it."""
    path = sqlite_path(url)
    if path is None or not path.is_file():
        return None  # the Store creates a missing store (and says why it cannot)
    try:
        db = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro", uri=True,
                             timeout=_BUSY_TIMEOUT_S)
    except sqlite3.Error:
        return None
    try:
        revision = db.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.Error:
        revision = None
    if revision != (SCHEMA_HEAD,):
        db.close()
        return None  # to be created or upgraded: the Store's migrator does that
    return HistoryReader(db)


class HistoryReader:
    """The reads `loom runs` makes, as core.store.Store makes them (same filters and order)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def close(self) -> None:
        self._db.close()

    def list_runs(self, *, pipeline: str | None = None, limit: int = 50) -> list[StoredRow]:
        """Runs, newest first (Store.list_runs' first page)."""
        where, params = ("WHERE pipeline_name = ?", [pipeline]) if pipeline is not None else ("", [])
        return self._rows("pipeline_runs", f"SELECT * FROM pipeline_runs {where} "
                          "ORDER BY started_at DESC, run_id DESC LIMIT ?", [*params, limit])

    def shard_group_runs(self, groups: Sequence[str]) -> list[StoredRow]:
        """Every run of these shard groups (retries included), newest first."""
        if not groups:
            return []
        wanted = sorted(set(groups))
        return self._rows("pipeline_runs", "SELECT * FROM pipeline_runs WHERE shard_group IN "
                          f"({', '.join('?' * len(wanted))}) ORDER BY started_at DESC, run_id DESC",
                          wanted)

    def alerts_for_runs(self, run_ids: Sequence[str]) -> dict[str, list[StoredRow]]:
        """Each run's alerts, oldest first."""
        found: dict[str, list[StoredRow]] = {run_id: [] for run_id in run_ids}
        if not run_ids:
            return found
        rows = self._rows("monitoring_alerts", "SELECT * FROM monitoring_alerts WHERE run_id IN "
                          f"({', '.join('?' * len(run_ids))}) ORDER BY id", list(run_ids))
        for row in rows:
            found[row.run_id].append(row)
        return found

    def pipeline_files(self, names: Sequence[str]) -> dict[str, list[str]]:
        """The files each pipeline name has run from, oldest first (Store.pipeline_files)."""
        if not names:
            return {}
        files: dict[str, list[tuple[str, str]]] = {}
        for name, path, first in self._db.execute(
                "SELECT pipeline_name, pipeline_path, min(started_at) FROM pipeline_runs WHERE "
                f"pipeline_name IN ({', '.join('?' * len(names))}) "
                "GROUP BY pipeline_name, pipeline_path", list(names)):
            if path is not None:
                files.setdefault(name, []).append((str(_datetime(first)), path))
        return {name: [path for _, path in sorted(found)] for name, found in files.items()}

    def _rows(self, table: str, sql: str, params: list[Any]) -> list[StoredRow]:
        cursor = self._db.execute(sql, params)
        columns = [d[0] for d in cursor.description]
        decode = _decoders(table)
        return [StoredRow(**{column: decode.get(column, _same)(value)
                             for column, value in zip(columns, row, strict=True)})
                for row in cursor]


def _decoders(table: str) -> dict[str, Any]:
    return {**dict.fromkeys(JSON_COLUMNS[table], _json),
            **dict.fromkeys(DATETIME_COLUMNS[table], _datetime),
            **dict.fromkeys(BOOL_COLUMNS[table], _bool)}


def _same(value: Any) -> Any:
    return value


def _json(value: str | None) -> Any:
    return None if value is None else json.loads(value)


def _bool(value: int | None) -> bool | None:
    return None if value is None else bool(value)


def _datetime(value: str | None) -> datetime | None:
    """As UTCDateTime reads it: SQLite keeps the UTC time without an offset."""
    if value is None:
        return None
    parsed = datetime.fromisoformat(value)
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
