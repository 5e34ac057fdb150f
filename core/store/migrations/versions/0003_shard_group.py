"""Shard groups: the runs that split one source between N workers (`loom --run … --shard I/N`)
are linked by a group id, with each run's shard index and count.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable columns only: SQLite adds them in place (no table copy), and existing runs
    # simply belong to no group.
    with op.batch_alter_table("pipeline_runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("shard_group", sa.String(), nullable=True))
        batch_op.add_column(sa.Column("shard_index", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("shard_count", sa.Integer(), nullable=True))
        batch_op.create_index("ix_pipeline_runs_shard_group", ["shard_group", "started_at"],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table("pipeline_runs", schema=None) as batch_op:
        batch_op.drop_index("ix_pipeline_runs_shard_group")
        batch_op.drop_column("shard_count")
        batch_op.drop_column("shard_index")
        batch_op.drop_column("shard_group")
