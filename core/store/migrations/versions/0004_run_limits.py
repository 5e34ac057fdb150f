"""How a run's LLM limits behaved: concurrency (configured, lowest, final), 429s, retries, budget.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26

Plain ADD COLUMNs (no table copy): on SQLite a batch migration would rewrite the whole run
history to add six columns. The counters get a server default so existing runs read 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("pipeline_runs", sa.Column("concurrency", sa.Integer(), nullable=True))
    op.add_column("pipeline_runs", sa.Column("concurrency_min", sa.Integer(), nullable=True))
    op.add_column("pipeline_runs", sa.Column("concurrency_final", sa.Integer(), nullable=True))
    op.add_column("pipeline_runs", sa.Column("throttled", sa.Integer(), nullable=False,
                                             server_default=sa.text("0")))
    op.add_column("pipeline_runs", sa.Column("retries", sa.Integer(), nullable=False,
                                             server_default=sa.text("0")))
    op.add_column("pipeline_runs", sa.Column("budget_usd", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("pipeline_runs") as batch_op:
        for column in ("budget_usd", "retries", "throttled", "concurrency_final",
                       "concurrency_min", "concurrency"):
            batch_op.drop_column(column)
