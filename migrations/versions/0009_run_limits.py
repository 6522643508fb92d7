"""Run-level flow control (docs/spec.md §12.2): `limit_slots.on_limit`, and run slots released with the run.

A workflow's `concurrency: {key, limit, on_limit}` makes each of its runs hold a `limit_slots` row of
kind `run` (step_key '') from its admission until it finishes. The row trigger `steppe_run_limit_rows`
on `workflow_runs` deletes it in the transaction that records the run's end (finished_at set), so a run
slot can no more leak than a step's. `on_limit` is `queue`, `cancel_new` or `cancel_oldest` as written;
admission marks a refused waiter `refused` (cancel_new) and a holder to cancel `evicted` (cancel_oldest).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("limit_slots", sa.Column("on_limit", sa.Text(), server_default=sa.text("'queue'"), nullable=False))
    op.execute(
        """
        CREATE OR REPLACE FUNCTION steppe_run_limit_rows() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            DELETE FROM limit_slots WHERE run_id = NEW.run_id AND kind = 'run';
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER workflow_runs_limit_rows AFTER UPDATE OF finished_at ON workflow_runs FOR EACH ROW "
        "WHEN (NEW.finished_at IS NOT NULL AND OLD.finished_at IS NULL) EXECUTE FUNCTION steppe_run_limit_rows()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS workflow_runs_limit_rows ON workflow_runs")
    op.execute("DROP FUNCTION IF EXISTS steppe_run_limit_rows()")
    op.drop_column("limit_slots", "on_limit")
