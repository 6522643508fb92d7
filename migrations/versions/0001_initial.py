"""Initial schema: runs, steps, event log, commands, hooks, definitions, dead letters, leases.

Mirrors orchestrator/store/tables.py (tests/integration/test_migrations.py checks that
the migrated database and the metadata agree).

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

EMPTY_JSON = sa.text("'{}'::jsonb")
ZERO = sa.text("0")
NOW = sa.text("now()")


def _created_at() -> sa.Column[dt.datetime]:
    return sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False)


def upgrade() -> None:
    op.create_table(
        "workflow_runs",
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("workflow", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("definition", JSONB(), nullable=False),
        sa.Column("inputs", JSONB(), server_default=EMPTY_JSON, nullable=False),
        sa.Column("plan", JSONB(), server_default=EMPTY_JSON, nullable=False),
        sa.Column("state", JSONB(), server_default=EMPTY_JSON, nullable=False),
        sa.Column("version", sa.Integer(), server_default=ZERO, nullable=False),
        sa.Column("last_seq", sa.BigInteger(), server_default=ZERO, nullable=False),
        sa.Column("idempotency_key", sa.Text(), nullable=True),
        sa.Column("parent_run_id", sa.Text(), nullable=True),
        sa.Column("parent_step", sa.Text(), nullable=True),
        sa.Column("depth", sa.Integer(), server_default=ZERO, nullable=False),
        _created_at(),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["parent_run_id"],
            ["workflow_runs.run_id"],
            name="fk_workflow_runs_parent_run_id_workflow_runs",
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("run_id", name="pk_workflow_runs"),
        sa.UniqueConstraint("idempotency_key", name="uq_workflow_runs_idempotency_key"),
    )
    op.create_index("ix_workflow_runs_status_created_at", "workflow_runs", ["status", "created_at"])
    op.create_index(
        "ix_workflow_runs_partition_active",
        "workflow_runs",
        ["partition"],
        postgresql_where=sa.text("finished_at IS NULL"),
    )
    op.create_index("ix_workflow_runs_parent_run_id", "workflow_runs", ["parent_run_id"])

    op.create_table(
        "workflow_steps",
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("step_key", sa.Text(), nullable=False),
        sa.Column("step_id", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("attempt", sa.Integer(), server_default=ZERO, nullable=False),
        sa.Column("output", JSONB(), nullable=True),
        sa.Column("error", JSONB(), nullable=True),
        sa.Column("detail", JSONB(), server_default=EMPTY_JSON, nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["workflow_runs.run_id"],
            name="fk_workflow_steps_run_id_workflow_runs",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("run_id", "step_key", name="pk_workflow_steps"),
    )
    op.create_index(
        "ix_workflow_steps_status",
        "workflow_steps",
        ["status"],
        postgresql_where=sa.text("status IN ('dispatched', 'running')"),
    )

    op.create_table(
        "workflow_events",
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("step_key", sa.Text(), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=True),
        sa.Column("data", JSONB(), server_default=EMPTY_JSON, nullable=False),
        _created_at(),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["workflow_runs.run_id"],
            name="fk_workflow_events_run_id_workflow_runs",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("run_id", "seq", name="pk_workflow_events"),
    )
    op.create_index("ix_workflow_events_type_created_at", "workflow_events", ["type", "created_at"])

    op.create_table(
        "run_commands",
        sa.Column("command_id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("command", sa.Text(), nullable=False),
        sa.Column("payload", JSONB(), server_default=EMPTY_JSON, nullable=False),
        _created_at(),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["workflow_runs.run_id"],
            name="fk_run_commands_run_id_workflow_runs",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("command_id", name="pk_run_commands"),
    )
    op.create_index(
        "ix_run_commands_unprocessed",
        "run_commands",
        ["run_id"],
        postgresql_where=sa.text("processed_at IS NULL"),
    )

    op.create_table(
        "workflow_hooks",
        sa.Column("hook_id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("events", JSONB(), nullable=False),
        sa.Column("workflow", sa.Text(), nullable=True),
        sa.Column("handler", sa.Text(), nullable=False),
        sa.Column("with", JSONB(), server_default=EMPTY_JSON, nullable=False),
        sa.Column("enabled", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("trigger_count", sa.BigInteger(), server_default=ZERO, nullable=False),
        sa.Column("error_count", sa.BigInteger(), server_default=ZERO, nullable=False),
        sa.Column("last_triggered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        _created_at(),
        sa.PrimaryKeyConstraint("hook_id", name="pk_workflow_hooks"),
        sa.UniqueConstraint("name", name="uq_workflow_hooks_name"),
    )

    op.create_table(
        "workflow_definitions",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("definition", JSONB(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_workflow_definitions"),
    )

    op.create_table(
        "dead_letters",
        sa.Column("dead_letter_id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.Text(), nullable=True),
        sa.Column("step_key", sa.Text(), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=True),
        sa.Column("queue", sa.Text(), nullable=False),
        sa.Column("stream_id", sa.Text(), nullable=False),
        sa.Column("delivery_count", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("payload", JSONB(), nullable=True),
        sa.Column("raw", sa.Text(), nullable=True),
        sa.Column("status", sa.Text(), server_default=sa.text("'dead'"), nullable=False),
        _created_at(),
        sa.Column("replayed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("dead_letter_id", name="pk_dead_letters"),
        sa.UniqueConstraint("queue", "stream_id", name="uq_dead_letters_queue_stream_id"),
    )
    op.create_index("ix_dead_letters_created_at", "dead_letters", ["created_at"])
    op.create_index("ix_dead_letters_run_id", "dead_letters", ["run_id"])

    op.create_table(
        "coordinator_leases",
        sa.Column("partition", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("owner", sa.Text(), nullable=True),
        sa.Column("token", sa.BigInteger(), server_default=ZERO, nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("partition", name="pk_coordinator_leases"),
    )


def downgrade() -> None:
    # Dropping a table drops its indexes and constraints; children before parents.
    for table in (
        "coordinator_leases",
        "dead_letters",
        "workflow_definitions",
        "workflow_hooks",
        "run_commands",
        "workflow_events",
        "workflow_steps",
        "workflow_runs",
    ):
        op.drop_table(table)
