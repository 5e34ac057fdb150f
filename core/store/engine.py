"""Connecting to the history store: URLs, async engines, SQLite pragmas, readable errors.

SQLite (the default) and PostgreSQL share everything here except the per-connection setup:
SQLite gets WAL, a busy timeout and real transactions (see `_sqlite_setup`).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
import os
import re
import time
import uuid
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from core.errors import StoreError, StoreUrlError

# Execution option that makes a SQLite transaction start with BEGIN IMMEDIATE: the write lock
# is taken up front, so a transaction never fails half-way on a lock it cannot upgrade, and a
# writer waits (busy_timeout) for another process instead of failing.
WRITE = "loom_write"
# Execution option for a connection that runs one read statement: no BEGIN/ROLLBACK around it
# (SQLite reads one consistent snapshot per statement anyway), which saves the driver thread
# round trips that dominate a small read's cost.
SINGLE_READ = "loom_single_read"
BUSY_TIMEOUT_MS = 15_000

_ASYNC_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg",
                  "postgres": "postgresql+asyncpg"}


class RawJSON:
    """JSON text serialized once by the caller; the column stores it as is."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def _json_default(value: Any) -> Any:
    # Source rows may carry database types (dates, decimals, bytes): keep them readable.
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return "base64:" + base64.b64encode(raw).decode("ascii")
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    return str(value)


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def dumps(value: Any) -> str:
    """The store's JSON serializer (the engine's `json_serializer`). Always JSON that UTF-8
    holds: NaN and Infinity (not JSON) are stored as null, and text with a lone surrogate
    (which UTF-8 cannot encode) keeps its \\u escapes, so it still reads back as it was."""
    if type(value) is RawJSON:
        return value.text
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"),
                          default=_json_default, allow_nan=False)
    except ValueError:  # a NaN or an Infinity somewhere (a circular value raises again here)
        text = json.dumps(finite_json(value), ensure_ascii=False, separators=(",", ":"),
                          default=_json_default, allow_nan=False)
    if not text.isascii() and _LONE_SURROGATE.search(text):
        text = json.dumps(json.loads(text), ensure_ascii=True, separators=(",", ":"))
    return text


def finite_json(value: Any) -> Any:
    """`value` with NaN and Infinity as None (JSON has neither)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(item) for item in value]
    return value


# PostgreSQL text and jsonb cannot hold U+0000. JSON's escape for it, not preceded by an odd
# number of backslashes (which would make it the literal text "\u0000"):
_JSON_NUL = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")


def dumps_postgres(value: Any) -> str:
    """`dumps` for PostgreSQL: a NUL character in a value is stored as U+FFFD."""
    text = dumps(value)
    if "\\u0000" in text:
        text = _JSON_NUL.sub(lambda match: match.group(1) + "\\ufffd", text)
    return text


def without_nul(text: str | None) -> str | None:
    """Text PostgreSQL accepts: a NUL character becomes U+FFFD (SQLite keeps it as it is)."""
    return text.replace("\x00", "\ufffd") if text and "\x00" in text else text


def raw_json(value: Any) -> RawJSON | None:
    """Serialize now (once) a value that goes to one or more JSON columns; None stays NULL."""
    return None if value is None else RawJSON(dumps(value))


@dataclass(frozen=True, slots=True)
class StoreTarget:
    """Where the store lives: the async URL to connect with and what to show people."""

    url: URL
    display: str  # the URL as given, without its password
    path: Path | None  # the SQLite file, None for a server or an in-memory database

    @property
    def where(self) -> str:
        return str(self.path) if self.path else self.display

    @property
    def is_sqlite(self) -> bool:
        return self.url.get_backend_name() == "sqlite"

    @classmethod
    def parse(cls, raw: str) -> "StoreTarget":
        try:
            url = make_url(raw)
        except (ArgumentError, ValueError):  # ValueError: a port that is not a number, `[::1`
            from core.connectors.registry import redact_uri

            raise StoreUrlError(f"history store URL {redact_uri(raw)!r} is not a database URL") from None
        backend = url.get_backend_name()
        driver = _ASYNC_DRIVERS.get(url.drivername)  # a bare scheme gets the async driver
        if driver is None:
            if backend not in ("sqlite", "postgresql"):
                raise StoreUrlError(f"history store URL {url.render_as_string(hide_password=True)}: "
                                 f"unsupported database {backend!r} (use sqlite or postgresql)")
            driver = _ASYNC_DRIVERS[backend]
        display = url.render_as_string(hide_password=True)
        url = url.set(drivername=driver)
        path = None
        if url.get_backend_name() == "sqlite":
            if url.database in (None, "", ":memory:"):
                # One connection shared by every coroutine cannot keep transactions apart.
                raise StoreUrlError("the history store cannot be an in-memory SQLite database: "
                                 "give it a file (sqlite:///path/loom.db)")
            if not url.database.startswith("file:"):
                path = Path(url.database).expanduser()
                url = url.set(database=str(path))
        return cls(url=url, display=display, path=path)

    def error(self, doing: str, exc: BaseException) -> StoreError:
        return StoreError(f"cannot {doing} the history store {self.where}: {describe(exc)}")

    def prepare(self) -> None:
        """Create the SQLite file's folder."""
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self.error("open", exc) from exc
        if self.path.is_dir():
            raise StoreError(f"cannot open the history store {self.path}: it is a folder, not a file")
        # SQLite writes beside the file (its WAL and shared-memory index) even to read: a folder
        # it cannot write is one clear line here, not "unable to open database file" later.
        if not os.access(self.path.parent, os.W_OK):
            raise StoreError(f"cannot open the history store {self.path}: its folder "
                             f"{self.path.parent} is read-only (point LOOM_HOME at a folder "
                             f"Loom can write)")

    def create_engine(self, *, foreign_keys: bool = True, single_use: bool = False) -> AsyncEngine:
        """An async engine; `single_use` (no pooling) for the short-lived migration engine."""
        serializer = dumps if self.is_sqlite else dumps_postgres
        kwargs: dict[str, Any] = {"json_serializer": serializer, "json_deserializer": json.loads}
        if single_use:
            kwargs["poolclass"] = NullPool
        engine = create_async_engine(self.url, **kwargs)
        if self.is_sqlite:
            _sqlite_setup(engine, foreign_keys=foreign_keys)
        return engine


def _sqlite_setup(engine: AsyncEngine, *, foreign_keys: bool) -> None:
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # The sqlite3 module opens transactions only before DML and never before DDL; turn that
        # off and emit BEGIN ourselves (below), so DDL and reads are transactional too.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            _use_wal(cursor)
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
        finally:
            cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        options = connection.get_execution_options()
        if options.get(SINGLE_READ, False):
            return
        connection.exec_driver_sql("BEGIN IMMEDIATE" if options.get(WRITE, False) else "BEGIN")


def _use_wal(cursor: Any) -> None:
    """Switch the file to WAL (it stays WAL: later connections find it so and skip this).

    Switching needs an exclusive lock, and SQLite reports "database is locked" at once, without
    waiting on busy_timeout, when another process is creating or switching the same new file.
    So retry, with short sleeps, for as long as busy_timeout would have waited; this happens only
    while two processes open a brand-new store together.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    pause = 0.001
    while True:
        try:
            cursor.execute("PRAGMA journal_mode")
            if str(cursor.fetchone()[0]).lower() == "wal":
                return
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.fetchall()
            return
        except Exception as exc:  # the driver's OperationalError, whichever driver it is
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def describe(exc: BaseException) -> str:
    """The cause of a failure as one line, without SQLAlchemy's SQL dump and links."""
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        text = str(exc.orig)
    elif isinstance(exc, OSError):
        text = exc.strerror or str(exc)
    elif isinstance(exc, SQLAlchemyError):
        text = str(exc).split("\n", 1)[0]
    else:
        text = str(exc)
    text = " ".join(text.split()) or type(exc).__name__
    if text == "disk I/O error":
        # What SQLite says when a write fails with EFBIG or EIO: say what it usually means.
        text += " (is the disk full, or a file size limit reached?)"
    return text
