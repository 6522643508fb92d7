"""Fewer index entries per write on the hot path: every run write and every event insert paid for
entries that no query reads.

* `ix_workflow_events_type_created_at` is dropped: no query reads events by type and time (the log is
  read by run and `seq`, through the primary key), yet every event (five per one-step run) inserted an
  entry into it.
* `uq_workflow_runs_idempotency_key` and `ix_workflow_runs_parent_run_id` become partial (`IS NOT NULL`):
  every insert and every non-HOT update of a run row (a status change cannot be HOT, the status is
  indexed) added a NULL entry to both for the runs that have neither an idempotency key nor a parent,
  which no lookup finds. Their readers all compare with `=`, which implies `IS NOT NULL`: the idempotent
  submission (`ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL`, then the lookup of the
  earlier run), the children of a run, and the `ON DELETE SET NULL` of the parent's foreign key.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_workflow_events_type_created_at", table_name="workflow_events")
    op.drop_constraint("uq_workflow_runs_idempotency_key", "workflow_runs", type_="unique")
    op.create_index(
        "uq_workflow_runs_idempotency_key",
        "workflow_runs",
        ["idempotency_key"],
        unique=True,
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    )
    op.drop_index("ix_workflow_runs_parent_run_id", table_name="workflow_runs")
    op.create_index(
        "ix_workflow_runs_parent_run_id",
        "workflow_runs",
        ["parent_run_id"],
        postgresql_where=sa.text("parent_run_id IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_workflow_runs_parent_run_id", table_name="workflow_runs")
    op.create_index("ix_workflow_runs_parent_run_id", "workflow_runs", ["parent_run_id"])
    op.drop_index("uq_workflow_runs_idempotency_key", table_name="workflow_runs")
    op.create_unique_constraint("uq_workflow_runs_idempotency_key", "workflow_runs", ["idempotency_key"])
    op.create_index("ix_workflow_events_type_created_at", "workflow_events", ["type", "created_at"])
