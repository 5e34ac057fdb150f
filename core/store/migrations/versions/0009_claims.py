"""Claims: a release holds its run, a quarantine action its records, with who holds them.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02

A release or a quarantine action killed half-way left its run `releasing` (or its record
loaded and still `open`) with nothing to tell a dead holder from a live one. Each claim now
records its holder (core.claims: pid, host, start time) and when it last renewed, so that a later
process takes a dead holder's claim over and finishes its work exactly once: a quarantined
record also keeps the claim's id (its staging and ledger name at the destination), what the
claim is loading, the sink's commit token, and the answer a reprocess paid for. Plain ADD
COLUMNs, all NULL: no table copy, no row changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(JSONB(), "postgresql")
_Columns = tuple[tuple[str, sa.types.TypeEngine[Any]], ...]
_QUARANTINE: _Columns = (("claim_id", sa.String()), ("claim_holder", sa.Text()),
                         ("claimed_at", sa.DateTime(timezone=True)), ("claim_action", sa.String()),
                         ("claim_output", _JSON), ("commit_token", sa.Text()), ("answer", _JSON))
_RUNS: _Columns = (("claim_holder", sa.Text()), ("claimed_at", sa.DateTime(timezone=True)))


def upgrade() -> None:
    for name, type_ in _RUNS:
        op.add_column("pipeline_runs", sa.Column(name, type_, nullable=True))
    for name, type_ in _QUARANTINE:
        op.add_column("quarantined_records", sa.Column(name, type_, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("quarantined_records") as batch_op:
        for name, _ in reversed(_QUARANTINE):
            batch_op.drop_column(name)
    with op.batch_alter_table("pipeline_runs") as batch_op:
        for name, _ in reversed(_RUNS):
            batch_op.drop_column(name)
