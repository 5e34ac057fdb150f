"""A pipeline's identity is its file: runs are found by (name, file path), not by name alone.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01

Two folders holding a pipeline with one `name:` (a copy, a fork) keep separate histories, last
runs, monitoring baselines, quarantines and resumes. Every run already records its pipeline's
file (`pipeline_runs.pipeline_path`, resolved); what changes is that the store looks runs up by
both, so this revision adds the index those lookups use. A quarantined record belongs to the
file of its run. No table is copied and no row changes.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_pipeline_runs_pipeline_file", "pipeline_runs",
                    ["pipeline_name", "pipeline_path", "started_at", "run_id"])


def downgrade() -> None:
    op.drop_index("ix_pipeline_runs_pipeline_file", table_name="pipeline_runs")
