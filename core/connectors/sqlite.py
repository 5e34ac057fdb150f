"""SQLite databases as a source (a table or a query) and as a sink (append, replace, upsert).

The source opens the database read-only, so extracting can never modify it, and streams the
result with `fetchmany(batch_size)`. Query parameters are bound, never pasted (sql_params).

The sink writes each batch in one transaction with `executemany`. A batch the database refuses
is rolled back and raised as LoadError, so the engine quarantines just those records and the
sink goes on with the next batch. `replace` stages rows in a scratch table and swaps them into
the target in one transaction at commit, so readers see the old rows or the new, never a mix.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import decimal
import json
import re
import sqlite3
import threading
import urllib.parse
import uuid
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiosqlite

from core.connectors.base import Sink, Source, id_column, quote_identifier, rows_by_columns
from core.connectors.sql_params import render_sql
from core.errors import ConnectorError, LoadError

if TYPE_CHECKING:
    from core.connectors.registry import ParsedURI
    from core.spec import LoadedSpec

BUSY_TIMEOUT_S = 30.0
_PLAIN = (str, int, float, type(None), bytes)
# The load ledger (see Sink.resume_policy): one row per batch Loom appended or upserted, written
# in the batch's own transaction, naming its records, so that a resumed run knows exactly which
# records reached this database. A run's rows are deleted when it commits.
LEDGER = "loom_load_ledger"
# Failures that every later batch would meet too (a full disk, a read-only file): they stop the
# run with one error instead of quarantining batch after batch.
_FATAL_CODES = {getattr(sqlite3, name) for name in ("SQLITE_FULL", "SQLITE_IOERR", "SQLITE_READONLY",
                                                   "SQLITE_CANTOPEN", "SQLITE_CORRUPT", "SQLITE_NOTADB")
                if hasattr(sqlite3, name)}


def database_path(loaded: "LoadedSpec", uri: "ParsedURI") -> Path:
    """`sqlite://file.db` is relative to the pipeline's folder; `sqlite:///abs/file.db` is absolute."""
    target = uri.target.split("?", 1)[0]
    if not target:
        raise ConnectorError(f"{uri.uri}: no database file named")
    return loaded.resolve(target)


def quote_column(name: str) -> str:
    """One quoted identifier. Unlike quote_identifier, a dot is part of the name ("a.b" is one column)."""
    if not isinstance(name, str) or "\x00" in name:
        # A LoadError: a column named by the data (a key of a model's answer) fails only the
        # row that has it (the engine writes a refused batch again row by row).
        raise LoadError(f"invalid column name {name!r} (no NUL character)")
    return '"' + name.replace('"', '""') + '"'


def _split_table(name: str) -> tuple[str, str]:
    """(schema, table) the way quote_identifier reads a dotted name."""
    schema, dot, table = name.partition(".")
    return (schema, table) if dot else ("main", name)


def _no_way_on(exc: BaseException) -> bool:
    """A failure no later batch would escape (the primary result code is the low byte)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(code, int) and (code & 0xFF) in _FATAL_CODES


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ---------------------------------------------------------------- source


def _bindable(value: Any) -> Any:
    """A query parameter sqlite3 can bind: YAML dates become ISO text, as SQLite stores them."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (dt.date, dt.time)):  # datetime is a date
        return value.isoformat()
    if isinstance(value, (decimal.Decimal, uuid.UUID)):
        return str(value)
    return value


class SqliteSource(Source):
    """Rows of a table (`table:`) or of a query (`query:`) from a SQLite file, read-only."""

    def __init__(self, loaded: "LoadedSpec", uri: "ParsedURI") -> None:
        super().__init__(loaded, uri)
        self.path = database_path(loaded, uri)
        self.table = self.spec.table
        if self.spec.query:
            self.key = "extract.query"
            self.sql, values = render_sql(self.spec.query, loaded.spec.params, "qmark",
                                          file=str(loaded.path), key="extract.query")
            self.parameters = [_bindable(v) for v in values]
            self._label = "query"
        elif self.table:
            self.key = "extract.table"
            self.sql = f"SELECT * FROM {quote_identifier(self.table)} ORDER BY rowid"
            self.parameters = []
            self._label = self.table
        else:
            raise ConnectorError(f"sqlite source {self.path}: needs extract.query or extract.table")
        self._bad_text = False

    def _error(self, exc: BaseException) -> ConnectorError:
        return ConnectorError(f"{self.key}: {_one_line(exc)} (in {self.path})")

    def _decode(self, raw: bytes) -> str:
        # TEXT that is not UTF-8 would make sqlite3 abort the whole fetch; decode it leniently
        # and flag it, so only the rows that hold it are quarantined.
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            self._bad_text = True
            return raw.decode("utf-8", "surrogateescape")

    async def _connect(self) -> aiosqlite.Connection:
        if not self.path.is_file():
            raise ConnectorError(f"sqlite source {self.path}: no such database file")
        location = "file:" + urllib.parse.quote(self.path.as_posix()) + "?mode=ro"
        try:
            connection = await aiosqlite.connect(location, uri=True, timeout=BUSY_TIMEOUT_S)
        except sqlite3.Error as exc:
            raise ConnectorError(f"sqlite source {self.path}: cannot open: {_one_line(exc)}") from None
        connection.text_factory = self._decode
        return connection

    async def count_hint(self) -> int | None:
        if self.spec.query or not self.table:
            return None
        connection = await self._connect()
        try:
            cursor = await connection.execute(f"SELECT COUNT(*) FROM {quote_identifier(self.table)}")
            row = await cursor.fetchone()
            await cursor.close()
        except sqlite3.Error as exc:
            raise self._error(exc) from None
        finally:
            await connection.close()
        return int(row[0]) if row else None

    async def _rows(self) -> AsyncGenerator[tuple[dict[str, Any] | None, str, str | None], None]:
        connection = await self._connect()
        try:
            cursor = await self._execute(connection)
            if cursor.description is None:
                raise ConnectorError(f"{self.key}: the statement returns no rows (in {self.path})")
            names = [column[0] for column in cursor.description]
            duplicated = sorted({n for n in names if names.count(n) > 1})
            if duplicated:
                raise ConnectorError(f"{self.key}: column {duplicated[0]!r} appears twice in the "
                                     f"result; give it an alias (in {self.path})")
            prefix = f"{self.path.name}:{self._label}:"
            number = 0
            while True:
                try:
                    rows = await cursor.fetchmany(self.batch_size)
                except sqlite3.Error as exc:
                    raise self._error(exc) from None
                if not rows:
                    break
                # Sticky once set: checking a few extra rows is cheaper than missing one.
                check_text = self._bad_text
                for values in rows:
                    number += 1
                    row = dict(zip(names, values))
                    error = None
                    if check_text:
                        error = _repair_text(row)
                    for value in values:
                        if type(value) is bytes:
                            _blobs_to_base64(row)
                            break
                    yield row, f"{prefix}{number}", error
            await cursor.close()
        finally:
            await connection.close()

    async def _execute(self, connection: aiosqlite.Connection) -> aiosqlite.Cursor:
        try:
            return await connection.execute(self.sql, self.parameters)
        except sqlite3.OperationalError as exc:
            # Views and WITHOUT ROWID tables have no rowid to order by: read them as stored.
            if self.spec.query or "rowid" not in str(exc):
                raise self._error(exc) from None
        except (sqlite3.Error, ValueError, OverflowError) as exc:
            raise self._error(exc) from None
        try:
            assert self.table is not None
            return await connection.execute(f"SELECT * FROM {quote_identifier(self.table)}")
        except sqlite3.Error as exc:
            raise self._error(exc) from None


def _repair_text(row: dict[str, Any]) -> str | None:
    bad = []
    for column, value in row.items():
        if isinstance(value, str) and not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                row[column] = re.sub("[\udc80-\udcff]", "\ufffd", value)
                bad.append(column)
    if not bad:
        return None
    return f"invalid UTF-8 in column{'s' if len(bad) > 1 else ''} {', '.join(map(repr, bad))}"


def _blobs_to_base64(row: dict[str, Any]) -> None:
    for column, value in row.items():
        if type(value) is bytes:
            row[column] = base64.b64encode(value).decode("ascii")


# ---------------------------------------------------------------- sink


def _sql_type(value: Any) -> str:
    if isinstance(value, (bool, int)):
        return "INTEGER"
    if isinstance(value, float):
        return "REAL"
    if isinstance(value, bytes):
        return "BLOB"
    return "TEXT"


def _storable(value: Any) -> Any:
    """A Python value as SQLite stores it: nested values as JSON text, the unknown as text."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, ensure_ascii=False, default=str, allow_nan=False)
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    return str(value)


class SqliteSink(Sink):
    """Rows into a table of a SQLite file: `append`, `replace` or `upsert` on `load.key`."""

    def __init__(self, loaded: "LoadedSpec", uri: "ParsedURI") -> None:
        super().__init__(loaded, uri)
        self.path = database_path(loaded, uri)
        if not self.spec.table:
            raise ConnectorError(f"sqlite destination {self.path}: needs load.table")
        self.table_name = self.spec.table
        self.table = quote_identifier(self.table_name)
        self.schema, self.bare_table = _split_table(self.table_name)
        self.mode = self.spec.mode
        self.key = (self.spec.key_columns or [id_column(loaded)]) if self.mode == "upsert" else []
        self._conn: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()
        # A cancelled await leaves its thread running: this keeps that thread's work and the
        # abort that follows from ever touching the file or connection at the same time.
        self._guard = threading.Lock()
        # The table batches go to (the target, or the scratch table for replace), and the
        # columns it has: lower-cased name -> (name, declared type). SQLite names ignore case.
        self._write_table = self.table
        self._write_schema, self._write_bare = self.schema, self.bare_table
        self._columns: dict[str, tuple[str, str]] | None = None
        self._statements: dict[tuple[str, ...], str] = {}
        # append and upsert write each batch in one transaction, ledger row included;
        # replace publishes at commit (the scratch table is gone after a crash).
        self.resume_policy = "publish" if self.mode == "replace" else "ledger"
        self._ledger = f"{quote_column(self.schema)}.{quote_column(LEDGER)}"
        self._ledger_ready = False

    def describe(self) -> str:
        return f"{self.uri.uri} table {self.table_name}"

    def _where(self) -> str:
        return f"sqlite destination {self.path}, table {self.table_name}"

    # -- open

    async def open(self, run_id: str) -> None:
        await super().open(run_id)
        async with self._lock:
            await asyncio.to_thread(self._serially, self._open_sync)

    def _open_sync(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            created = not self.path.exists() or self.path.stat().st_size == 0
            # isolation_level=None: transactions are ours (BEGIN IMMEDIATE ... COMMIT), one per batch.
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                   check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise ConnectorError(f"{self._where()}: cannot open: {_one_line(exc)}") from None
        self._conn = conn
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            if created:
                # WAL for a database Loom creates; a user's keeps its own journal mode (setting
                # WAL rewrites the file's header: a failed run would leave the file changed).
                conn.execute("PRAGMA journal_mode = WAL")
            kind = self._object_type(self.schema, self.bare_table)
            if kind not in (None, "table"):
                raise ConnectorError(f"{self._where()}: is a {kind}, not a table")
            if self.mode == "replace":
                scratch = f"loom_scratch_{re.sub(r'[^A-Za-z0-9_]', '_', str(self.run_id))[:64]}"
                self._write_schema, self._write_bare = "temp", scratch
                self._write_table = f"temp.{quote_column(scratch)}"
                conn.execute(f"DROP TABLE IF EXISTS {self._write_table}")
                self._columns = None
            else:
                self._columns = self._table_columns(self.schema, self.bare_table)
                if self.mode == "upsert" and self._columns is not None:
                    self._prepare_upsert_target()
        except sqlite3.Error as exc:
            self._close()
            raise ConnectorError(f"{self._where()}: {_one_line(exc)}") from None
        except ConnectorError:
            self._close()
            raise

    def _object_type(self, schema: str, table: str) -> str | None:
        assert self._conn is not None
        row = self._conn.execute(
            f"SELECT type FROM {quote_column(schema)}.sqlite_master WHERE lower(name) = lower(?)",
            (table,)).fetchone()
        return row[0] if row else None

    def _table_columns(self, schema: str, table: str) -> dict[str, tuple[str, str]] | None:
        assert self._conn is not None
        rows = self._conn.execute("SELECT name, type FROM pragma_table_info(?, ?)",
                                  (table, schema)).fetchall()
        if not rows:
            return None
        return {name.lower(): (name, decl) for name, decl in rows}

    def _prepare_upsert_target(self) -> None:
        """An existing table gets the key columns and a unique index on them, if it lacks them."""
        assert self._conn is not None and self._columns is not None
        conn = self._conn
        for column in self.key:
            if column.lower() not in self._columns:
                conn.execute(f"ALTER TABLE {self.table} ADD COLUMN {quote_column(column)}")
                self._columns[column.lower()] = (column, "")
        if self._has_unique_key():
            return
        index = quote_column(f"loom_{self.bare_table}_{'_'.join(self.key)}_key")
        columns = ", ".join(quote_column(c) for c in self.key)
        try:
            conn.execute(f"CREATE UNIQUE INDEX {quote_column(self.schema)}.{index} "
                         f"ON {quote_column(self.bare_table)} ({columns})")
        except sqlite3.IntegrityError:
            raise ConnectorError(
                f"{self._where()}: cannot upsert on key ({', '.join(self.key)}): the table already "
                f"holds rows with the same key; remove the duplicates or choose another key") from None

    def _has_unique_key(self) -> bool:
        assert self._conn is not None
        wanted = {c.lower() for c in self.key}
        conn = self._conn
        pk = conn.execute("SELECT name FROM pragma_table_info(?, ?) WHERE pk > 0",
                          (self.bare_table, self.schema)).fetchall()
        if pk and {name.lower() for (name,) in pk} == wanted:
            return True
        indexes = conn.execute('SELECT name FROM pragma_index_list(?, ?) WHERE "unique" AND NOT partial',
                               (self.bare_table, self.schema)).fetchall()
        for (index,) in indexes:
            names = conn.execute("SELECT name FROM pragma_index_info(?, ?)",
                                 (index, self.schema)).fetchall()
            if {(name or "").lower() for (name,) in names} == wanted:
                return True
        return False

    # -- write

    async def write(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        async with self._lock:
            await asyncio.to_thread(self._serially, self._write_sync, rows)

    async def write_records(self, rows: list[dict[str, Any]], record_ids: list[str]) -> None:
        if not rows:
            return
        async with self._lock:
            await asyncio.to_thread(self._serially, self._write_sync, rows,
                                    record_ids if self.resume_policy == "ledger" else None)

    async def written_ids(self) -> set[str]:
        async with self._lock:
            return await asyncio.to_thread(self._serially, self._written_ids_sync)

    def _written_ids_sync(self) -> set[str]:
        conn = self._conn
        if conn is None:
            raise ConnectorError(f"{self._where()}: written_ids() before open()")
        if self._object_type(self.schema, LEDGER) != "table":
            return set()
        found: set[str] = set()
        try:
            for (ids,) in conn.execute(f"SELECT record_ids FROM {self._ledger} WHERE run_id = ? "
                                       "AND table_name = ?", (str(self.run_id), self.table_name)):
                found.update(json.loads(ids))
        except (sqlite3.Error, ValueError) as exc:
            raise ConnectorError(f"{self._where()}: cannot read {LEDGER}: {_one_line(exc)}") from None
        return found

    def _note_in_ledger(self, record_ids: list[str]) -> None:
        """Inside the batch's transaction: the batch's record ids, for a resumed run."""
        assert self._conn is not None
        if not self._ledger_ready:
            self._conn.execute(f"CREATE TABLE IF NOT EXISTS {self._ledger} (run_id TEXT NOT NULL, "
                               "table_name TEXT NOT NULL, record_ids TEXT NOT NULL, "
                               "written_at TEXT NOT NULL)")
            self._conn.execute(f"CREATE INDEX IF NOT EXISTS {quote_column(self.schema)}."
                               f"{quote_column(LEDGER + '_run')} ON {quote_column(LEDGER)} "
                               "(run_id, table_name)")
        self._conn.execute(f"INSERT INTO {self._ledger} VALUES (?, ?, ?, ?)", (
            str(self.run_id), self.table_name, json.dumps(record_ids, ensure_ascii=False),
            dt.datetime.now(dt.timezone.utc).isoformat()))

    def _write_sync(self, rows: list[dict[str, Any]], record_ids: list[str] | None = None) -> None:
        conn = self._conn
        if conn is None:
            raise ConnectorError(f"{self._where()}: write() before open()")
        groups = rows_by_columns(rows, self.key, self._where(), fold=str.lower,
                                 why="SQLite column names ignore case")
        added: dict[str, tuple[str, str]] = {}
        created = False
        shared = self.mode != "replace"  # other writers (parallel shards) share the table
        try:
            conn.execute("BEGIN IMMEDIATE")
            if self._columns is None and shared:
                # Another writer may have created the table since open(): with the write lock
                # held, look again instead of failing on "table already exists".
                self._columns = self._table_columns(self.schema, self.bare_table)
                if self._columns is not None and self.mode == "upsert":
                    self._prepare_upsert_target()
            if self._columns is None:
                added = self._create_table(rows)
                created = True
            else:
                added = self._add_columns(rows)
            for columns, group in groups.items():
                conn.executemany(self._insert_sql(columns), [
                    [value if type(value) in _PLAIN else _storable(value) for value in row.values()]
                    for row in group])
            if record_ids is not None:
                self._note_in_ledger(record_ids)
            conn.execute("COMMIT")
        except (sqlite3.Error, OverflowError, ValueError) as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if shared:
                self._columns = None  # what the rollback undid: read the table again next time
            if _no_way_on(exc):
                raise ConnectorError(f"{self._where()}: cannot write: {_one_line(exc)}") from exc
            raise LoadError(f"{self._where()}: {_one_line(exc)}") from exc
        except ConnectorError:  # the shared table cannot take an upsert (duplicate keys)
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._columns = None
            raise
        if created:
            self._columns = {}
        assert self._columns is not None
        self._columns.update(added)
        if record_ids is not None:
            self._ledger_ready = True

    def _create_table(self, rows: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
        """The table, shaped by the first batch: each column typed by its first non-null value."""
        assert self._conn is not None
        columns = self._shape(rows, {})
        keys = {k.lower() for k in self.key}
        definitions = []
        for lowered, (name, decl) in columns.items():
            # A NULL key would slip past the unique index (NULLs never conflict): refuse it.
            parts = [quote_column(name), decl, "NOT NULL" if lowered in keys else ""]
            definitions.append(" ".join(part for part in parts if part))
        if self.key:
            definitions.append(f"PRIMARY KEY ({', '.join(quote_column(k) for k in self.key)})")
        temp = "TEMP " if self.mode == "replace" else ""
        self._conn.execute(f"CREATE {temp}TABLE {self._write_table} ({', '.join(definitions)})")
        return columns

    def _add_columns(self, rows: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
        assert self._conn is not None and self._columns is not None
        added = self._shape(rows, self._columns)
        if added and self.mode != "replace":
            # Another writer may have added them since: look again under the write lock.
            self._columns = self._table_columns(self.schema, self.bare_table) or self._columns
            added = self._shape(rows, self._columns)
        for name, decl in added.values():
            self._conn.execute(f"ALTER TABLE {self._write_table} ADD COLUMN "
                               f"{quote_column(name)} {decl}".rstrip())
        return added

    def _shape(self, rows: list[dict[str, Any]],
               known: dict[str, tuple[str, str]]) -> dict[str, tuple[str, str]]:
        """Columns of `rows` not in `known`, in first-seen order, typed by their first value."""
        found: dict[str, tuple[str, str]] = {}
        for row in rows:
            for name, value in row.items():
                lowered = name.lower()
                if lowered in known:
                    continue
                current = found.get(lowered)
                if current is None:
                    found[lowered] = (name, "" if value is None else _sql_type(value))
                elif current[1] == "" and value is not None:
                    found[lowered] = (current[0], _sql_type(value))
        return found

    def _insert_sql(self, columns: tuple[str, ...]) -> str:
        sql = self._statements.get(columns)
        if sql is not None:
            return sql
        names = ", ".join(quote_column(c) for c in columns)
        marks = ", ".join("?" for _ in columns)
        sql = f"INSERT INTO {self._write_table} ({names}) VALUES ({marks})"
        if self.mode == "upsert":
            keys = {k.lower() for k in self.key}
            updates = [f"{quote_column(c)} = excluded.{quote_column(c)}"
                       for c in columns if c.lower() not in keys]
            target = ", ".join(quote_column(k) for k in self.key)
            sql += f" ON CONFLICT ({target}) " + \
                (f"DO UPDATE SET {', '.join(updates)}" if updates else "DO NOTHING")
        if len(self._statements) > 256:
            self._statements.clear()
        self._statements[columns] = sql
        return sql

    # -- commit / abort

    async def commit(self) -> None:
        async with self._lock:
            await asyncio.to_thread(self._serially, self._commit_sync)

    def _commit_sync(self) -> None:
        conn = self._conn
        if conn is None:
            raise ConnectorError(f"{self._where()}: commit() without open()")
        try:
            if self.mode == "replace":
                self._swap_in_scratch(conn)
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._close()
            raise ConnectorError(f"{self._where()}: cannot replace the table: {_one_line(exc)}") from None
        if self.resume_policy == "ledger":
            # The history store knows every record this run loaded by now: the ledger rows are
            # no longer needed. Leaving them costs nothing but space.
            try:
                conn.execute(f"DELETE FROM {self._ledger} WHERE run_id = ? AND table_name = ?",
                             (str(self.run_id), self.table_name))
            except sqlite3.Error:
                pass
        self._close()

    def _swap_in_scratch(self, conn: sqlite3.Connection) -> None:
        """In one transaction: empty (or create) the target, copy the scratch rows in, drop it."""
        conn.execute("BEGIN IMMEDIATE")
        target_columns = self._table_columns(self.schema, self.bare_table)
        if self._columns is None:  # nothing was written: the table becomes empty
            if target_columns is not None:
                conn.execute(f"DELETE FROM {self.table}")
            conn.execute("COMMIT")
            return
        if target_columns is None:
            definitions = ", ".join(f"{quote_column(name)} {decl}".rstrip()
                                    for name, decl in self._columns.values())
            conn.execute(f"CREATE TABLE {self.table} ({definitions})")
        else:
            for lowered, (name, decl) in self._columns.items():
                if lowered not in target_columns:
                    conn.execute(f"ALTER TABLE {self.table} ADD COLUMN {quote_column(name)} {decl}".rstrip())
            conn.execute(f"DELETE FROM {self.table}")
        names = ", ".join(quote_column(name) for name, _ in self._columns.values())
        conn.execute(f"INSERT INTO {self.table} ({names}) SELECT {names} FROM {self._write_table}")
        conn.execute(f"DROP TABLE {self._write_table}")
        conn.execute("COMMIT")

    async def abort(self) -> None:
        async with self._lock:
            await asyncio.to_thread(self._serially, self._abort_sync)

    def _abort_sync(self) -> None:
        conn = self._conn
        if conn is None:
            return
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if self.mode == "replace":
                conn.execute(f"DROP TABLE IF EXISTS {self._write_table}")
        except sqlite3.Error:
            pass  # the scratch table is TEMP: closing the connection removes it anyway
        finally:
            self._close()

    def _serially(self, work: Callable[..., Any], *args: Any) -> Any:
        with self._guard:
            return work(*args)

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error:
                pass
