"""Checkpoint writes straight to the SQLite file, in one worker-thread hop each.

A run checkpoints about ten times a second (core.engine), so that an answer the model gave is
in the store within ~100 ms of arriving. Through the async engine each of those writes costs a
few milliseconds of the event loop's CPU — SQLAlchemy, greenlets, and a hand-off to aiosqlite's
thread and back for BEGIN, every statement and COMMIT — which at ten a second is several percent
of a run. Here the rows are plain tuples built on the loop's thread and the whole transaction
runs in one hop to a thread of its own, on a connection of its own.

The values are stored exactly as SQLAlchemy stores them (JSON text, datetimes as
core.store.cache_reader.storage_time, booleans as 0/1), so reads through the models see no
difference. Another process writing the same file makes this transaction wait (busy_timeout)
in its thread, never on the loop.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.store.engine import BUSY_TIMEOUT_MS

RECORD_COLUMNS = ("run_id", "record_id", "ordinal", "outcome", "stage", "reason", "error_type",
                  "input", "output", "scores", "verdict", "input_tokens", "output_tokens",
                  "cost_usd", "latency_s", "cached", "llm_calls", "created_at",
                  "cache_read_tokens", "cache_write_tokens", "reasoning_tokens",
                  "prompt_cache_saved_usd")
QUARANTINE_COLUMNS = ("run_id", "pipeline_name", "record_id", "ordinal", "stage", "reason",
                      "error_type", "input", "output", "raw_output", "messages", "scores",
                      "verdict", "quarantined_at", "status", "resolved_at", "resolution_note",
                      "final_output")
_INSERT_RECORDS = (f"INSERT INTO record_results ({', '.join(RECORD_COLUMNS)}) "
                   f"VALUES ({', '.join('?' for _ in RECORD_COLUMNS)})")
_INSERT_QUARANTINE = (f"INSERT INTO quarantined_records ({', '.join(QUARANTINE_COLUMNS)}) "
                      f"VALUES ({', '.join('?' for _ in QUARANTINE_COLUMNS)})")
_REFUSE = ("UPDATE record_results SET outcome = 'quarantined', stage = 'load', reason = ?, "
           "error_type = ? WHERE run_id = ? AND record_id = ? AND outcome IN ('passed', 'loaded')")
_DELETE = "DELETE FROM record_results WHERE id = ?"


class SQLiteCheckpointWriter:
    """One connection, used by one thread at a time, opened at first use."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._connection: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _open(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        connection.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute("PRAGMA foreign_keys=ON")
        self._connection = connection
        return connection

    async def write(self, records: Sequence[tuple[Any, ...]], quarantined: Sequence[tuple[Any, ...]],
                    refusals: Sequence[tuple[Any, ...]], deleted: Sequence[int]) -> None:
        """One transaction. Raises sqlite3.Error (nothing of it is written then)."""
        await asyncio.to_thread(self._write, records, quarantined, refusals, deleted)

    def _write(self, records: Sequence[tuple[Any, ...]], quarantined: Sequence[tuple[Any, ...]],
               refusals: Sequence[tuple[Any, ...]], deleted: Sequence[int]) -> None:
        with self._lock:
            connection = self._connection or self._open()
            connection.execute("BEGIN IMMEDIATE")
            try:
                if deleted:
                    connection.executemany(_DELETE, [(row_id,) for row_id in deleted])
                if records:
                    connection.executemany(_INSERT_RECORDS, records)
                if refusals:
                    connection.executemany(_REFUSE, refusals)
                if quarantined:
                    connection.executemany(_INSERT_QUARANTINE, quarantined)
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None
