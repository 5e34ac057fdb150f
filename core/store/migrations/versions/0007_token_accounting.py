"""Token accounting: provider prompt-cache reads and writes, reasoning tokens, and what prompt
caching saved, per record and per run.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01

Plain ADD COLUMNs with server defaults, as in 0004 and 0005: no table copy. Existing rows read
as no cache tokens, no reasoning and no saving (what was not counted then).
`savings_usd` is an object by lever ({"prompt_cache": 0.0123}), so later levers (response
cache, batch, cascade) need no migration.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
TOKEN_COLUMNS = ("cache_read_tokens", "cache_write_tokens", "reasoning_tokens")


def _zero() -> sa.TextClause:
    return sa.text("0")


def upgrade() -> None:
    for table in ("pipeline_runs", "record_results"):
        for name in TOKEN_COLUMNS:
            op.add_column(table, sa.Column(name, sa.Integer(), nullable=False,
                                           server_default=_zero()))
    op.add_column("record_results", sa.Column("prompt_cache_saved_usd", sa.Float(),
                                              nullable=False, server_default=_zero()))
    op.add_column("pipeline_runs", sa.Column("savings_usd", JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("record_results") as batch_op:
        for name in ("prompt_cache_saved_usd", *reversed(TOKEN_COLUMNS)):
            batch_op.drop_column(name)
    with op.batch_alter_table("pipeline_runs") as batch_op:
        for name in ("savings_usd", *reversed(TOKEN_COLUMNS)):
            batch_op.drop_column(name)
