"""Resuming runs: how many attempts a run took and how far its last one got with publishing.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27

Plain ADD COLUMNs, as in 0004: no table copy. Existing runs had one attempt.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("pipeline_runs", sa.Column("attempts", sa.Integer(), nullable=False,
                                             server_default=sa.text("1")))
    op.add_column("pipeline_runs", sa.Column("commit_state", sa.String(), nullable=True))
    op.add_column("pipeline_runs", sa.Column("commit_token", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("pipeline_runs") as batch_op:
        for column in ("commit_token", "commit_state", "attempts"):
            batch_op.drop_column(column)
