"""Flow control (docs/spec.md §12.2): limit_slots, kept in step with workflow_steps by a trigger.

A `limit_slots` row is one limit (concurrency slot or rate token) of one throttled attempt. The
row trigger `steppe_limit_rows` on `workflow_steps` (only for steps whose `detail` holds `limits`)
inserts the waiter rows in the transaction that records `throttled`, and deletes the held slots in
the transaction that records any status other than throttled, dispatched or running — so a slot is
released exactly when its step's terminal (or retry) state commits, whoever commits it, and a crash
can never leave one behind. Granted rate rows stay to count starts in their window; admission
(orchestrator/store/limits.py) deletes them once the window passed.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NOW = sa.text("now()")

_TRIGGER_FUNCTION = """
CREATE OR REPLACE FUNCTION steppe_limit_rows() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'throttled' THEN
        IF TG_OP = 'UPDATE' AND OLD.status = 'throttled' AND OLD.attempt = NEW.attempt THEN
            RETURN NULL;  -- the same throttled attempt written again: its rows (and grants) stay
        END IF;
        -- Rows of this attempt number granted earlier were never dispatched (a dispatch raises the
        -- attempt): drop them before waiting again.
        DELETE FROM limit_slots WHERE run_id = NEW.run_id AND step_key = NEW.step_key AND attempt = NEW.attempt;
        INSERT INTO limit_slots (kind, key, run_id, step_key, attempt, partition, priority, lim, per_ms,
                                 req_index, req_count)
        SELECT l.value->>'kind', l.value->>'key', NEW.run_id, NEW.step_key, NEW.attempt, r.partition,
               coalesce((NEW.detail->>'priority')::int, 1), (l.value->>'limit')::int,
               round(coalesce((l.value->>'per')::float8, 0) * 1000)::bigint,
               (l.ordinality - 1)::int, jsonb_array_length(NEW.detail->'limits')
        FROM jsonb_array_elements(NEW.detail->'limits') WITH ORDINALITY AS l(value, ordinality)
        JOIN workflow_runs r ON r.run_id = NEW.run_id;
    ELSIF NEW.status NOT IN ('dispatched', 'running') THEN
        DELETE FROM limit_slots
        WHERE run_id = NEW.run_id AND step_key = NEW.step_key AND (kind = 'concurrency' OR granted_at IS NULL);
    END IF;
    RETURN NULL;
END
$$
"""


def upgrade() -> None:
    op.create_table(
        "limit_slots",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("step_key", sa.Text(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("priority", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.Column("lim", sa.Integer(), nullable=False),
        sa.Column("per_ms", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("req_index", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("req_count", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.Column("granted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["workflow_runs.run_id"], name="fk_limit_slots_run_id_workflow_runs", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_limit_slots"),
        sa.UniqueConstraint(
            "run_id", "step_key", "attempt", "req_index", name="uq_limit_slots_run_id_step_key_attempt_req_index"
        ),
    )
    op.create_index("ix_limit_slots_kind_key_granted_at", "limit_slots", ["kind", "key", "granted_at"])
    op.create_index(
        "ix_limit_slots_partition", "limit_slots", ["partition"], postgresql_where=sa.text("granted_at IS NOT NULL")
    )
    op.execute(_TRIGGER_FUNCTION)
    op.execute(
        "CREATE TRIGGER workflow_steps_limit_rows AFTER INSERT OR UPDATE ON workflow_steps FOR EACH ROW "
        "WHEN (NEW.detail ? 'limits') EXECUTE FUNCTION steppe_limit_rows()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS workflow_steps_limit_rows ON workflow_steps")
    op.execute("DROP FUNCTION IF EXISTS steppe_limit_rows()")
    op.drop_table("limit_slots")
