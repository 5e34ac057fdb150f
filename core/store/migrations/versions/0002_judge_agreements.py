"""Reviewer agreement with LLM judges: one row per resolved quarantined record and judge.

Revision ID: 0002
Revises: 0001
Create Date: 2025-02-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "judge_agreements",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("quarantine_id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(), nullable=False),
        sa.Column("pipeline_name", sa.String(), nullable=False),
        sa.Column("record_id", sa.String(), nullable=False),
        sa.Column("evaluator", sa.String(), nullable=False),
        sa.Column("evaluator_type", sa.String(), nullable=False),
        sa.Column("judge_value", sa.Float(), nullable=False),
        sa.Column("judge_passed", sa.Boolean(), nullable=False),
        sa.Column("action", sa.String(), nullable=False),
        sa.Column("agreed", sa.Boolean(), nullable=False),
        sa.Column("actor", sa.String(), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["quarantine_id"], ["quarantined_records.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["run_id"], ["pipeline_runs.run_id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_judge_agreements_pipeline", "judge_agreements",
                    ["pipeline_name", "evaluator"])
    op.create_index("ux_judge_agreements_record", "judge_agreements",
                    ["quarantine_id", "evaluator"], unique=True)


def downgrade() -> None:
    op.drop_index("ux_judge_agreements_record", table_name="judge_agreements")
    op.drop_index("ix_judge_agreements_pipeline", table_name="judge_agreements")
    op.drop_table("judge_agreements")
