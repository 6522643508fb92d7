"""Durable waits (docs/spec.md §12.1): run_signals, and an index of the waiting steps' timers.

`run_signals` holds each accepted signal and approval decision until a waiting step consumes it
(`consumed_by`, written in the coordinator's batch transaction with the event that ends the wait).
A waiting step's timer (a sleep's wake-up, a wait's or approval's timeout) is its `workflow_steps`
row's `due_at`, written with its `step.waiting` event: the partial index finds the waiting steps
(`steppe runs --status waiting`) and their due timers without a second copy of them.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "run_signals",
        sa.Column("signal_id", sa.BigInteger(), primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.Text(), sa.ForeignKey("workflow_runs.run_id", ondelete="CASCADE"), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("payload", JSONB(), nullable=True),
        sa.Column("idempotency_key", sa.Text(), nullable=True),
        sa.Column("who", sa.Text(), nullable=True),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
        sa.Column("consumed_by", sa.Text(), nullable=True),
        sa.Column("consumed_at", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("run_id", "idempotency_key", name="uq_run_signals_idempotency_key"),
    )
    op.create_index(
        "ix_run_signals_unconsumed", "run_signals", ["run_id"], postgresql_where=sa.text("consumed_by IS NULL")
    )
    op.create_index(
        "ix_workflow_steps_waiting",
        "workflow_steps",
        ["due_at"],
        postgresql_where=sa.text("status = 'waiting'"),
    )


def downgrade() -> None:
    op.drop_index("ix_workflow_steps_waiting", table_name="workflow_steps")
    op.drop_index("ix_run_signals_unconsumed", table_name="run_signals")
    op.drop_table("run_signals")
