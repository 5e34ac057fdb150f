"""Bring a store's schema to the newest Alembic revision, safely from several processes at once.

Alembic is configured in code (no alembic.ini): the scripts live in `migrations/` beside this
file and ship inside the package. Migrations run on a connection taken from the async engine
(`run_sync`), so the same path serves aiosqlite and asyncpg.

Alembic itself is imported only when a store is not at SCHEMA_HEAD: importing it (with Mako and
Pygments) costs more CPU than opening the store, and nearly every open finds the schema current.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from core.errors import StoreError
from core.store.engine import WRITE, StoreTarget
from core.store.revision import SCHEMA_HEAD

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).with_name("migrations")
__all__ = ["SCHEMA_HEAD", "alembic_config", "head_revision", "migrate", "new_revision"]

# Any fixed number: PostgreSQL sessions migrating the same database queue on this lock.
_PG_MIGRATION_LOCK = 0x4C6F6F6D  # "Loom"


def alembic_config(connection: Connection | None = None, *,
                   migrations: Path = MIGRATIONS) -> "Config":
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations))
    config.attributes["connection"] = connection
    return config


def head_revision(migrations: Path = MIGRATIONS) -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config(migrations=migrations)).get_current_head()
    assert head is not None, "core/store/migrations has no revision"
    return head


def current_revision(connection: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


def _recorded_revision(connection: Connection) -> str | None:
    """The store's revision read without Alembic; None when it has no version table (yet)."""
    try:
        return connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    except DBAPIError:
        return None


async def migrate(target: StoreTarget) -> None:
    """Apply `upgrade head` to the store; a no-op when it is already there."""
    # A connection of its own with foreign keys off: SQLite batch migrations copy and drop
    # tables, which must not cascade-delete the rows that point at them.
    engine = target.create_engine(foreign_keys=False, single_use=True)
    try:
        async with engine.connect() as conn:
            if await conn.run_sync(_recorded_revision) == SCHEMA_HEAD:
                return
        from alembic.script import ScriptDirectory

        script = ScriptDirectory.from_config(alembic_config())
        head = script.get_current_head()
        async with engine.connect() as conn:
            current = await conn.run_sync(current_revision)
        if current == head:
            return
        if current is not None and current not in {s.revision for s in script.walk_revisions()}:
            raise StoreError(f"the history store {target.where} has schema revision {current}, "
                             "which this version of Loom does not know: it was written by a newer Loom")
        # One transaction holding the write lock (SQLite: BEGIN IMMEDIATE; PostgreSQL: an
        # advisory lock): a second process opening a new store waits here, then finds the
        # schema at head and does nothing.
        async with engine.execution_options(**{WRITE: True}).begin() as conn:
            if conn.dialect.name == "postgresql":
                await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                                   {"key": _PG_MIGRATION_LOCK})
            await conn.run_sync(_upgrade)
    finally:
        await engine.dispose()


def _upgrade(connection: Connection) -> None:
    from alembic import command

    command.upgrade(alembic_config(connection), "head")


def new_revision(message: str, *, migrations: Path = MIGRATIONS) -> Path:
    """Write a migration for what changed in models.py (for developers changing the schema).

    Compares the models with a scratch SQLite store at head; review the file it writes.
        python -c "from core.store.migrate import new_revision; print(new_revision('add x'))"
    """
    from alembic import command
    from sqlalchemy import create_engine

    with tempfile.TemporaryDirectory() as scratch:
        engine = create_engine(f"sqlite:///{Path(scratch) / 'scratch.db'}")
        try:
            with engine.begin() as conn:
                command.upgrade(alembic_config(conn, migrations=migrations), "head")
            with engine.begin() as conn:
                script = command.revision(alembic_config(conn, migrations=migrations),
                                          message=message, autogenerate=True)
        finally:
            engine.dispose()
    assert script is not None and not isinstance(script, list)
    return Path(script.path)
