"""PostgreSQL as a source (a table or a query) and a sink (append, replace, upsert), over asyncpg.

The source reads in a read-only transaction through a server-side cursor, `batch_size` rows per
fetch: no LIMIT/OFFSET, no COUNT(*), memory flat whatever the table's size. A `query:` is a
Jinja2 template whose `{{ ... }}` values are bound as $1, $2, ... (sql_params), never pasted;
each value is converted to the type PostgreSQL infers for its parameter, so
`--set params.since=2024-01-01` works against a timestamptz column.

The sink writes each batch with `executemany` inside one transaction, through a connection pool
sized to the pipeline's concurrency. Every value is sent as text and cast to its column's type
by PostgreSQL itself (`$1::text::jsonb`), so a CSV's "42" loads into a bigint column and a
dict into jsonb, and a value that does not fit fails its batch with PostgreSQL's own words. A
table that does not exist is created from the first batch's shape (or `load.columns`); nested
outputs become jsonb. `upsert` uses INSERT ... ON CONFLICT on `load.key`; `replace` stages rows
in an unlogged scratch table and swaps them in with one transaction at commit. Identifiers are
always quoted; errors name the destination without its password.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import decimal
import hashlib
import json
import re
import uuid
from collections.abc import AsyncGenerator, Callable
from typing import TYPE_CHECKING, Any

import asyncpg

from core.connectors.base import Sink, Source, id_column, quote_identifier, rows_by_columns
from core.connectors.sql_params import render_sql
from core.errors import ConnectorError, LoadError

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    from core.connectors.registry import ParsedURI
    from core.spec import LoadedSpec

    # A connection of its own, or one lent by the pool (a proxy with every Connection method).
    _Connection = asyncpg.Connection | PoolConnectionProxy

CONNECT_TIMEOUT_S = 15.0
MAX_POOL = 32
_JSON_TYPES = ("json", "jsonb")
_INTEGER_TYPES = ("smallint", "integer", "bigint", "int2", "int4", "int8")
_NUMBER_TYPES = _INTEGER_TYPES + ("numeric", "real", "double precision", "float4", "float8")
_DB_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, asyncio.TimeoutError,
              ValueError, OverflowError, TypeError)
# The load ledger (see Sink.resume_policy and core.connectors.sqlite.LEDGER): one row per batch,
# in the batch's transaction, naming its records; a run's rows are deleted when it commits.
LEDGER = "loom_load_ledger"
_LEDGER_LOCK = 0x4C6F6F6C  # sessions creating the ledger table at once queue on this lock
# Failures every later batch would meet too: they stop the run instead of quarantining batches.
_FATAL_ERRORS = (asyncpg.DiskFullError, asyncpg.InsufficientResourcesError,
                 asyncpg.ReadOnlySQLTransactionError)


def describe(exc: BaseException) -> str:
    """One line for a PostgreSQL failure. Server messages never carry the password."""
    if isinstance(exc, asyncpg.PostgresError):
        message = exc.message if hasattr(exc, "message") else str(exc)
        detail = getattr(exc, "detail", None)
        return f"{message} ({detail})" if detail else str(message)
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError) or "Connect call failed" in str(exc):
        return "connection refused"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc) or type(exc).__name__
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _database(uri: "ParsedURI") -> str:
    """The database name in the URI (for record origins), without touching the credentials."""
    rest = uri.target.rsplit("@", 1)[-1]
    _, _, path = rest.partition("/")
    return path.split("?", 1)[0] or "postgres"


async def _connect(uri: "ParsedURI", what: str) -> asyncpg.Connection:
    try:
        connection = await asyncpg.connect(uri.uri, timeout=CONNECT_TIMEOUT_S)
    except _DB_ERRORS as exc:
        raise ConnectorError(f"{what} {uri.display}: cannot connect: {describe(exc)}") from exc
    await _json_codecs(connection)
    return connection


async def _json_codecs(connection: _Connection) -> None:
    # json and jsonb columns read as Python objects, not as their text.
    for name in _JSON_TYPES:
        await connection.set_type_codec(name, encoder=json.dumps, decoder=json.loads,
                                        schema="pg_catalog")


# ---------------------------------------------------------------- source


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "t", "yes", "y", "on", "1"):
        return True
    if lowered in ("false", "f", "no", "n", "off", "0"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.timezone.utc)


def bind_value(value: Any, type_name: str) -> Any:
    """A query parameter as asyncpg wants it for a parameter PostgreSQL typed `type_name`.

    YAML and --set give text, numbers and dates; the column may want any of those.
    """
    if value is None:
        return None
    if type_name in ("text", "varchar", "bpchar", "name", "citext", "unknown"):
        if isinstance(value, str):
            return value
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (dt.date, dt.time)):
            return value.isoformat()
        return json.dumps(value, allow_nan=False) if isinstance(value, (dict, list)) else str(value)
    if type_name in ("int2", "int4", "int8"):
        if isinstance(value, bool) or isinstance(value, (int, decimal.Decimal)):
            return int(value)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return int(str(value).strip())
    if type_name == "numeric":
        return decimal.Decimal(str(value).strip())
    if type_name in ("float4", "float8"):
        return float(value)
    if type_name == "bool":
        return _parse_bool(value) if isinstance(value, str) else bool(value)
    if type_name == "date":
        if isinstance(value, dt.datetime):
            return value.date()
        return value if isinstance(value, dt.date) else dt.date.fromisoformat(str(value).strip())
    if type_name in ("timestamp", "timestamptz"):
        if isinstance(value, dt.datetime):
            moment = value
        elif isinstance(value, dt.date):
            moment = dt.datetime.combine(value, dt.time())
        else:
            moment = dt.datetime.fromisoformat(str(value).strip())
        if type_name == "timestamptz":
            return _aware(moment)
        return moment.replace(tzinfo=None) if moment.tzinfo is None else \
            moment.astimezone(dt.timezone.utc).replace(tzinfo=None)
    if type_name in ("time", "timetz"):
        return value if isinstance(value, dt.time) else dt.time.fromisoformat(str(value).strip())
    if type_name == "uuid":
        return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value).strip())
    if type_name == "bytea":
        return value.encode("utf-8") if isinstance(value, str) else bytes(value)
    return value


class PostgresSource(Source):
    """Rows of a table (`table:`) or of a query (`query:`), through a server-side cursor."""

    def __init__(self, loaded: "LoadedSpec", uri: "ParsedURI") -> None:
        super().__init__(loaded, uri)
        self.table = self.spec.table
        if self.spec.query:
            self.key = "extract.query"
            self.sql, self.values = render_sql(self.spec.query, loaded.spec.params,
                                               "numeric_dollar", file=str(loaded.path),
                                               key="extract.query")
            label = "query"
        elif self.table:
            self.key = "extract.table"
            self.sql = f"SELECT * FROM {quote_identifier(self.table)}"
            self.values = []
            label = self.table
        else:
            raise ConnectorError(f"postgres source {uri.display}: needs extract.query or extract.table")
        self._prefix = f"{_database(uri)}:{label}:"

    def _error(self, exc: BaseException) -> ConnectorError:
        return ConnectorError(f"{self.key}: {describe(exc)} (in {self.uri.display})")

    def _arguments(self, parameters: Any) -> list[Any]:
        if len(parameters) != len(self.values):
            raise ConnectorError(f"{self.key}: the query has {len(parameters)} $n parameters but "
                                 f"{len(self.values)} {{{{ ... }}}} values (in {self.uri.display})")
        arguments = []
        for number, (value, parameter) in enumerate(zip(self.values, parameters), start=1):
            try:
                arguments.append(bind_value(value, parameter.name))
            except (ValueError, TypeError, ArithmeticError):
                raise ConnectorError(f"{self.key}: parameter ${number} is a {parameter.name}, and "
                                     f"{value!r} cannot be one (in {self.uri.display})") from None
        return arguments

    async def _rows(self) -> AsyncGenerator[tuple[dict[str, Any] | None, str, str | None], None]:
        connection = await _connect(self.uri, "postgres source")
        try:
            # Read-only: extracting can never modify the source, whatever the query says.
            async with connection.transaction(readonly=True, isolation="repeatable_read"):
                try:
                    statement = await connection.prepare(self.sql)
                except _DB_ERRORS as exc:
                    raise self._error(exc) from exc
                attributes = statement.get_attributes()
                if not attributes:
                    raise ConnectorError(f"{self.key}: the statement returns no rows "
                                         f"(in {self.uri.display})")
                names = [attribute.name for attribute in attributes]
                duplicated = sorted({n for n in names if names.count(n) > 1})
                if duplicated:
                    raise ConnectorError(f"{self.key}: column {duplicated[0]!r} appears twice in "
                                         f"the result; give it an alias (in {self.uri.display})")
                blobs = [a.name for a in attributes if a.type.name == "bytea"]
                arguments = self._arguments(statement.get_parameters())
                try:
                    cursor = await statement.cursor(*arguments)
                except _DB_ERRORS as exc:
                    raise self._error(exc) from exc
                prefix = self._prefix
                number = 0
                while True:
                    try:
                        records = await cursor.fetch(self.batch_size)
                    except _DB_ERRORS as exc:
                        raise self._error(exc) from exc
                    if not records:
                        break
                    for record in records:
                        number += 1
                        row = dict(record.items())
                        for column in blobs:  # bytes as text, as the sqlite source gives them
                            if row[column] is not None:
                                row[column] = base64.b64encode(row[column]).decode("ascii")
                        yield row, f"{prefix}{number}", None
        finally:
            await connection.close()


# ---------------------------------------------------------------- sink


def pg_type(value: Any) -> str | None:
    """The column type a new column gets from a value (None: cannot tell from a null)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "bigint" if -(1 << 63) <= value < (1 << 63) else "numeric"
    if isinstance(value, float):
        return "double precision"
    if isinstance(value, decimal.Decimal):
        return "numeric"
    if isinstance(value, (dict, list, tuple)):
        return "jsonb"
    if isinstance(value, dt.datetime):
        return "timestamp with time zone" if value.tzinfo is not None else "timestamp without time zone"
    if isinstance(value, dt.date):
        return "date"
    if isinstance(value, dt.time):
        return "time without time zone"
    if isinstance(value, dt.timedelta):
        return "interval"
    if isinstance(value, uuid.UUID):
        return "uuid"
    if isinstance(value, (bytes, bytearray)):
        return "bytea"
    return "text"


def _json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str, allow_nan=False)


def text_form(value: Any) -> str:
    """A value as PostgreSQL's input functions read it."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, decimal.Decimal, uuid.UUID)):
        return str(value)
    if isinstance(value, (dict, list, tuple)):
        return _json_text(value)
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode("ascii")
    return str(value)


def array_literal(value: Any) -> str:
    """A list as a PostgreSQL array literal: {"a","b\\"c",NULL}."""
    parts = []
    for item in value:
        if item is None:
            parts.append("NULL")
        elif isinstance(item, (list, tuple)):
            parts.append(array_literal(item))
        else:
            text = text_form(item)
            parts.append('"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"')
    return "{" + ",".join(parts) + "}"


def encoder_for(column_type: str) -> Callable[[Any], str | None]:
    """How values become text for a column of `column_type` (as format_type() spells it)."""
    base = column_type.split("(", 1)[0].strip()
    if base in _JSON_TYPES:
        return lambda v: None if v is None else _json_text(v)
    if column_type.endswith("[]"):
        return lambda v: None if v is None else (
            array_literal(v) if isinstance(v, (list, tuple)) else text_form(v))
    if base == "bytea":
        return lambda v: None if v is None else (
            "\\x" + bytes(v).hex() if isinstance(v, (bytes, bytearray)) else text_form(v))
    if base in _NUMBER_TYPES:
        return lambda v: None if v is None else (str(int(v)) if isinstance(v, bool) else text_form(v))
    return lambda v: None if v is None else text_form(v)


def quote_column(name: str) -> str:
    """One quoted column name; unlike quote_identifier, a dot is part of the name."""
    if not isinstance(name, str) or not name or "\x00" in name or len(name.encode("utf-8")) > 63:
        # PostgreSQL would cut a longer name to 63 bytes and write to the wrong column.
        raise LoadError(f"invalid column name {name!r} (1 to 63 bytes, no NUL)")
    return '"' + name.replace('"', '""') + '"'


def _split_table(name: str) -> tuple[str | None, str]:
    schema, dot, table = name.partition(".")
    return (schema, table) if dot else (None, name)


class PostgresSink(Sink):
    """Rows into a PostgreSQL table: `append`, `replace` or `upsert` on `load.key`."""

    def __init__(self, loaded: "LoadedSpec", uri: "ParsedURI") -> None:
        super().__init__(loaded, uri)
        if not self.spec.table:
            raise ConnectorError(f"postgres destination {uri.display}: needs load.table")
        self.table_name = self.spec.table
        self.table = quote_identifier(self.table_name)
        self.schema, self.bare_table = _split_table(self.table_name)
        self.mode = self.spec.mode
        self.key = (self.spec.key_columns or [id_column(loaded)]) if self.mode == "upsert" else []
        self.declared = dict(self.spec.columns or {})
        self.pool_size = max(1, min(loaded.spec.transform.concurrency, MAX_POOL))
        self._pool: asyncpg.Pool | None = None
        self._lock = asyncio.Lock()
        # The table batches go to (the target, or the scratch table for replace) and its
        # columns: name -> type as format_type() spells it; None until the table exists.
        self._write_table = self.table
        self._columns: dict[str, str] | None = None
        self._target_columns: dict[str, str] | None = None  # replace: the target's, at open
        self._written: dict[str, None] = {}  # columns rows carried (replace copies only these)
        self._statements: dict[tuple[str, ...], tuple[str, list[Callable[[Any], str | None]]]] = {}
        # append and upsert commit each batch with its ledger row; replace publishes at commit.
        self.resume_policy = "publish" if self.mode == "replace" else "ledger"
        self._ledger = (f"{quote_column(self.schema)}." if self.schema else "") + quote_column(LEDGER)
        self._ledger_ready = False

    def describe(self) -> str:
        return f"{self.uri.display} table {self.table_name}"

    def _where(self) -> str:
        return f"postgres destination {self.uri.display}, table {self.table_name}"

    # -- catalog

    @staticmethod
    async def _relation(connection: _Connection, quoted: str) -> tuple[int, str] | None:
        row = await connection.fetchrow(
            "SELECT c.oid, c.relkind::text AS relkind FROM pg_catalog.pg_class c "
            "WHERE c.oid = to_regclass($1)",
            quoted)
        return (int(row["oid"]), str(row["relkind"])) if row else None

    @staticmethod
    async def _columns_of(connection: _Connection, oid: int) -> dict[str, str]:
        rows = await connection.fetch(
            "SELECT attname, format_type(atttypid, atttypmod) AS type FROM pg_catalog.pg_attribute "
            "WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum", oid)
        return {row["attname"]: row["type"] for row in rows}

    async def _table_columns(self, connection: _Connection,
                             quoted: str) -> dict[str, str] | None:
        relation = await self._relation(connection, quoted)
        return None if relation is None else await self._columns_of(connection, relation[0])

    # -- open

    async def open(self, run_id: str) -> None:
        await super().open(run_id)
        try:
            self._pool = await asyncpg.create_pool(
                self.uri.uri, min_size=1, max_size=self.pool_size, timeout=CONNECT_TIMEOUT_S)
        except _DB_ERRORS as exc:
            raise ConnectorError(f"{self._where()}: cannot connect: {describe(exc)}") from exc
        try:
            async with self._pool.acquire() as connection:
                await self._inspect(connection)
        except ConnectorError:
            await self._close()
            raise
        except _DB_ERRORS as exc:
            await self._close()
            raise ConnectorError(f"{self._where()}: {describe(exc)}") from exc

    async def _inspect(self, connection: _Connection) -> None:
        if self.schema is not None and not await connection.fetchval(
                "SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1", self.schema):
            raise ConnectorError(f"{self._where()}: schema {self.schema!r} does not exist")
        relation = await self._relation(connection, self.table)
        if relation is not None and relation[1] not in ("r", "p"):
            kinds = {"v": "view", "m": "materialized view", "f": "foreign table", "S": "sequence"}
            raise ConnectorError(f"{self._where()}: is a {kinds.get(relation[1], 'relation')}, "
                                 "not a table")
        columns = None if relation is None else await self._columns_of(connection, relation[0])
        if self.mode == "replace":
            scratch = f"loom_replace_{re.sub(r'[^a-z0-9_]', '_', str(self.run_id).lower())[:40]}"
            self._write_table = (f"{quote_column(self.schema)}." if self.schema else "") + \
                quote_column(scratch)
            await connection.execute(f"DROP TABLE IF EXISTS {self._write_table}")
            self._target_columns = columns
            self._columns = None
            return
        self._columns = columns
        if self.mode == "upsert" and relation is not None:
            await self._prepare_upsert_target(connection, relation[0])

    async def _prepare_upsert_target(self, connection: _Connection, oid: int) -> None:
        """An existing table gets the key columns and a unique index on them, if it lacks them."""
        assert self._columns is not None
        for column in self.key:
            if column not in self._columns:
                sql_type = self.declared.get(column, "text")
                await connection.execute(f"ALTER TABLE {self.table} ADD COLUMN IF NOT EXISTS "
                                         f"{quote_column(column)} {sql_type}")
        self._columns = await self._columns_of(connection, oid)
        if await self._has_unique_key(connection, oid):
            return
        name = f"loom_{self.bare_table}_{'_'.join(self.key)}_key"
        if len(name.encode("utf-8")) > 63:
            name = f"loom_{hashlib.sha256(name.encode('utf-8')).hexdigest()[:16]}_key"
        index = quote_column(name)
        columns = ", ".join(quote_column(c) for c in self.key)
        try:
            await connection.execute(f"CREATE UNIQUE INDEX IF NOT EXISTS {index} "
                                     f"ON {self.table} ({columns})")
        except asyncpg.UniqueViolationError:
            raise ConnectorError(
                f"{self._where()}: cannot upsert on key ({', '.join(self.key)}): the table already "
                f"holds rows with the same key; remove the duplicates or choose another key") from None

    async def _has_unique_key(self, connection: _Connection, oid: int) -> bool:
        rows = await connection.fetch(
            "SELECT array(SELECT a.attname FROM unnest(i.indkey) AS k(n) "
            "JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.n) AS names "
            "FROM pg_catalog.pg_index i WHERE i.indrelid = $1 AND i.indisunique "
            "AND i.indimmediate AND i.indpred IS NULL AND i.indexprs IS NULL", oid)
        wanted = set(self.key)
        return any(set(row["names"]) == wanted and len(row["names"]) == len(wanted) for row in rows)

    # -- write

    async def write(self, rows: list[dict[str, Any]]) -> None:
        await self.write_records(rows, None)

    async def written_ids(self) -> set[str]:
        async with self._lock:
            if self._pool is None:
                raise ConnectorError(f"{self._where()}: written_ids() before open()")
            found: set[str] = set()
            try:
                async with self._pool.acquire() as connection:
                    if await connection.fetchval("SELECT to_regclass($1)", self._ledger) is None:
                        return found
                    for row in await connection.fetch(
                            f"SELECT record_ids FROM {self._ledger} WHERE run_id = $1 "
                            "AND table_name = $2", str(self.run_id), self.table_name):
                        found.update(json.loads(row["record_ids"]))
            except (*_DB_ERRORS, json.JSONDecodeError) as exc:
                raise ConnectorError(f"{self._where()}: cannot read {LEDGER}: "
                                     f"{describe(exc)}") from exc
            return found

    async def _note_in_ledger(self, connection: _Connection, record_ids: list[str]) -> None:
        """Inside the batch's transaction: the batch's record ids, for a resumed run."""
        if not self._ledger_ready and await connection.fetchval(
                "SELECT to_regclass($1)", self._ledger) is None:
            await connection.execute("SELECT pg_advisory_xact_lock($1)", _LEDGER_LOCK)
            await connection.execute(
                f"CREATE TABLE IF NOT EXISTS {self._ledger} (run_id text NOT NULL, "
                "table_name text NOT NULL, record_ids text NOT NULL, "
                "written_at timestamptz NOT NULL DEFAULT now())")
            await connection.execute(
                f"CREATE INDEX IF NOT EXISTS {quote_column(LEDGER + '_run')} ON {self._ledger} "
                "(run_id, table_name)")
        await connection.execute(
            f"INSERT INTO {self._ledger} (run_id, table_name, record_ids) VALUES ($1, $2, $3)",
            str(self.run_id), self.table_name, json.dumps(record_ids, ensure_ascii=False))

    async def write_records(self, rows: list[dict[str, Any]], record_ids: list[str] | None) -> None:
        if not rows:
            return
        if self.resume_policy != "ledger":
            record_ids = None
        async with self._lock:
            if self._pool is None:
                raise ConnectorError(f"{self._where()}: write() before open()")
            groups = rows_by_columns(rows, self.key, self._where())
            try:
                async with self._pool.acquire() as connection:
                    async with connection.transaction():
                        columns = await self._ensure_columns(connection, rows)
                        for names, group in groups.items():
                            sql, encoders = self._insert_sql(names, columns)
                            await connection.executemany(sql, [
                                [encode(value) for encode, value in zip(encoders, row.values())]
                                for row in group])
                        if record_ids is not None:
                            await self._note_in_ledger(connection, record_ids)
            except _DB_ERRORS as exc:
                self._statements.clear()  # a column may have changed type under us
                if isinstance(exc, _FATAL_ERRORS):
                    raise ConnectorError(f"{self._where()}: cannot write: {describe(exc)}") from exc
                raise LoadError(f"{self._where()}: {describe(exc)}") from exc
            # Committed: the table and its columns exist now.
            if record_ids is not None:
                self._ledger_ready = True
            self._columns = columns
            for names in groups:
                self._written.update(dict.fromkeys(names))

    async def _ensure_columns(self, connection: _Connection,
                              rows: list[dict[str, Any]]) -> dict[str, str]:
        """The write table's columns after creating it or adding the batch's new columns."""
        known = self._columns
        if known is None:
            base = self._target_columns if self.mode == "replace" and self._target_columns else {}
            shape = {**base, **self._shape(rows, base, include_declared=True)}
            await self._create(connection, shape)
        else:
            new = self._shape(rows, known, include_declared=False)
            for name, sql_type in new.items():
                await connection.execute(f"ALTER TABLE {self._write_table} ADD COLUMN IF NOT EXISTS "
                                         f"{quote_column(name)} {sql_type}")
            if not new:
                return known
        columns = await self._table_columns(connection, self._write_table)
        assert columns is not None
        return columns

    def _shape(self, rows: list[dict[str, Any]], known: dict[str, str], *,
               include_declared: bool) -> dict[str, str]:
        """Columns of `rows` (and declared ones) not in `known`, typed by declaration or value."""
        found: dict[str, str | None] = {}
        if include_declared:
            for name, sql_type in self.declared.items():
                if name not in known:
                    found[name] = sql_type
        for row in rows:
            for name, value in row.items():
                if name in known:
                    continue
                if name in self.declared:
                    found[name] = self.declared[name]
                elif found.get(name) is None:
                    found[name] = pg_type(value)
        return {name: sql_type or "text" for name, sql_type in found.items()}

    async def _create(self, connection: _Connection, shape: dict[str, str]) -> None:
        keys = set(self.key)
        definitions = [f"{quote_column(name)} {sql_type}" + (" NOT NULL" if name in keys else "")
                       for name, sql_type in shape.items()]
        if self.key:
            definitions.append(f"PRIMARY KEY ({', '.join(quote_column(k) for k in self.key)})")
        unlogged = "UNLOGGED " if self.mode == "replace" else ""
        await connection.execute(f"CREATE {unlogged}TABLE IF NOT EXISTS {self._write_table} "
                                 f"({', '.join(definitions)})")

    def _insert_sql(self, names: tuple[str, ...], columns: dict[str, str]
                    ) -> tuple[str, list[Callable[[Any], str | None]]]:
        cached = self._statements.get(names)
        if cached is not None:
            return cached
        types = [columns[name] for name in names]
        targets = ", ".join(quote_column(name) for name in names)
        # Sent as text, cast by PostgreSQL's own input functions into the column's type.
        values = ", ".join(f"${n}::text::{sql_type}" for n, sql_type in enumerate(types, start=1))
        sql = f"INSERT INTO {self._write_table} ({targets}) VALUES ({values})"
        if self.mode == "upsert":
            keys = set(self.key)
            updates = [f"{quote_column(c)} = EXCLUDED.{quote_column(c)}"
                       for c in names if c not in keys]
            target = ", ".join(quote_column(k) for k in self.key)
            sql += f" ON CONFLICT ({target}) " + \
                (f"DO UPDATE SET {', '.join(updates)}" if updates else "DO NOTHING")
        if len(self._statements) > 256:
            self._statements.clear()
        entry = (sql, [encoder_for(sql_type) for sql_type in types])
        self._statements[names] = entry
        return entry

    # -- commit / abort

    async def commit(self) -> None:
        async with self._lock:
            if self._pool is None:
                raise ConnectorError(f"{self._where()}: commit() without open()")
            try:
                if self.mode == "replace":
                    async with self._pool.acquire() as connection:
                        async with connection.transaction():
                            await self._swap_in_scratch(connection)
                else:
                    await self._forget_ledger()
            except _DB_ERRORS as exc:
                raise ConnectorError(f"{self._where()}: cannot replace the table: "
                                     f"{describe(exc)}") from exc
            finally:
                await self._close()

    async def _forget_ledger(self) -> None:
        """The history store knows every record this run loaded by now: its ledger rows are no
        longer needed. Leaving them costs nothing but space."""
        assert self._pool is not None
        try:
            async with self._pool.acquire() as connection:
                if await connection.fetchval("SELECT to_regclass($1)", self._ledger) is not None:
                    await connection.execute(f"DELETE FROM {self._ledger} WHERE run_id = $1 AND "
                                             "table_name = $2", str(self.run_id), self.table_name)
        except _DB_ERRORS:
            pass

    async def _swap_in_scratch(self, connection: _Connection) -> None:
        """In one transaction: empty (or create) the target, copy the scratch rows in, drop it."""
        # Two replaces of one table at once: without this, the second one's DELETE skips the
        # rows the first one is inserting (READ COMMITTED) and the table ends with both runs'
        # rows, or both CREATE the missing table and one fails. Held until the transaction
        # ends; what the second one reads afterwards (columns, rows to delete) is the first's.
        await connection.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                                 f"loom replace {self.table}")
        target = await self._table_columns(connection, self.table)
        if self._columns is None:  # nothing was written: the table becomes empty
            if target is not None:
                await connection.execute(f"DELETE FROM {self.table}")
            return
        if target is None:
            definitions = ", ".join(f"{quote_column(name)} {sql_type}"
                                    for name, sql_type in self._columns.items())
            await connection.execute(f"CREATE TABLE {self.table} ({definitions})")
        else:
            for name, sql_type in self._columns.items():
                if name not in target:
                    await connection.execute(f"ALTER TABLE {self.table} ADD COLUMN "
                                             f"{quote_column(name)} {sql_type}")
            # Readers see the old rows until this transaction commits, then only the new ones.
            await connection.execute(f"DELETE FROM {self.table}")
        written = [name for name in self._columns if name in self._written] or list(self._columns)
        names = ", ".join(quote_column(name) for name in written)
        await connection.execute(f"INSERT INTO {self.table} ({names}) "
                                 f"SELECT {names} FROM {self._write_table}")
        await connection.execute(f"DROP TABLE {self._write_table}")

    async def abort(self) -> None:
        async with self._lock:
            if self._pool is None:
                return
            try:
                if self.mode == "replace":
                    async with self._pool.acquire() as connection:
                        await connection.execute(f"DROP TABLE IF EXISTS {self._write_table}")
            except _DB_ERRORS:
                pass  # an unlogged scratch table named after the run: harmless if left
            finally:
                await self._close()

    async def _close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            async with asyncio.timeout(10):  # not wait_for, which on 3.11 can lose a cancel
                await pool.close()
        except (TimeoutError, *_DB_ERRORS):
            pool.terminate()
