"""Alembic environment for the history store.

Loom runs migrations itself (core.store.migrate): the connection arrives in
`config.attributes["connection"]`, already inside a transaction that Loom commits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import sqlalchemy as sa
from alembic import context
from sqlmodel.sql.sqltypes import AutoString

from core.store.models import UTCDateTime, metadata

if TYPE_CHECKING:
    from alembic.autogenerate.api import AutogenContext


def render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    """Write column types as plain SQLAlchemy, so a migration never imports today's models."""
    if type_ != "type":
        return False
    if isinstance(obj, AutoString):
        return "sa.String()"
    if isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    if isinstance(obj, sa.JSON):
        autogen_context.imports.add("from sqlalchemy.dialects import postgresql")
        return ('sa.JSON(none_as_null=True).with_variant('
                'postgresql.JSONB(none_as_null=True), "postgresql")')
    return False


connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run the history store's migrations through core.store.migrate")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=True,  # SQLite alters tables by copying them
    compare_type=True,
    render_item=render_item,
)
with context.begin_transaction():
    context.run_migrations()
