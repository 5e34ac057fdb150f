"""Response-cache lookups straight from the SQLite file, on the event loop's own thread.

A cache lookup is on every record's path. Through the async engine it costs about a millisecond
of CPU — SQLAlchemy, then two hand-offs to aiosqlite's thread and back — which is the whole
per-record budget of a run. A primary-key read on a read-only sqlite3 connection costs tens of
microseconds, and in WAL mode a reader never waits for a writer, so it is done inline.

Writes never come this way: they are batched and go through the async engine, where waiting
for another process's lock does not stall the loop.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any

# A reader waits for a lock only while another connection rebuilds the WAL index (after a
# crash) or runs a TRUNCATE checkpoint: rare and short. Past this, the lookup fails and the
# caller treats it as a miss.
_READ_BUSY_MS = 2000


def storage_time(moment: datetime) -> str:
    """A UTC datetime as SQLAlchemy stores it in SQLite (comparable as text)."""
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")


class SQLiteCacheReader:
    """Point lookups in `llm_cache` on a read-only connection opened at first use."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._connection: sqlite3.Connection | None = None

    def _open(self) -> sqlite3.Connection:
        uri = self.path.resolve().as_uri() + "?mode=ro"
        connection = sqlite3.connect(uri, uri=True, isolation_level=None,
                                     check_same_thread=False)
        connection.execute(f"PRAGMA busy_timeout={_READ_BUSY_MS}")
        self._connection = connection
        return connection

    def get(self, key: str, now: datetime) -> dict[str, Any] | None:
        """The stored response, or None when missing or expired. Raises sqlite3.Error."""
        connection = self._connection or self._open()
        row = connection.execute("SELECT response, expires_at FROM llm_cache WHERE key = ?",
                                 (key,)).fetchone()
        if row is None:
            return None
        response, expires_at = row
        if expires_at is not None and expires_at <= storage_time(now):
            return None
        value = json.loads(response) if isinstance(response, (str, bytes)) else None
        return value if isinstance(value, dict) else None

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
