"""Deployed workflow versions, schedules, and the version each run started from.

`workflow_versions` keeps every deployed document of a workflow name (content-addressed: the
same canonical definition deployed again is the same version); `schedules` the schedules the
coordinators fire (docs/spec.md §12.3); `workflow_runs.workflow_version` the deployed version a
run was submitted from (NULL for a file or a document). The index on (workflow, created_at)
serves `steppe runs --workflow NAME`.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NOW = sa.text("now()")


def upgrade() -> None:
    op.add_column("workflow_runs", sa.Column("workflow_version", sa.Integer(), nullable=True))
    op.create_index("ix_workflow_runs_workflow_created_at", "workflow_runs", ["workflow", "created_at"])
    op.create_table(
        "workflow_versions",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("digest", sa.Text(), nullable=False),
        sa.Column("definition", JSONB(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.PrimaryKeyConstraint("name", "version", name="pk_workflow_versions"),
        sa.UniqueConstraint("name", "digest", name="uq_workflow_versions_name_digest"),
    )
    op.create_table(
        "schedules",
        sa.Column("schedule_id", sa.Text(), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("workflow", sa.Text(), nullable=False),
        sa.Column("workflow_version", sa.Integer(), nullable=True),
        sa.Column("inputs", JSONB(), server_default=sa.text("'{}'::jsonb"), nullable=False),
        sa.Column("cron", sa.Text(), nullable=True),
        sa.Column("timezone", sa.Text(), server_default=sa.text("'UTC'"), nullable=False),
        sa.Column("every_ms", sa.BigInteger(), nullable=True),
        sa.Column("overlap", sa.Text(), server_default=sa.text("'skip'"), nullable=False),
        sa.Column("catchup", sa.Text(), server_default=sa.text("'latest'"), nullable=False),
        sa.Column("catchup_window_ms", sa.BigInteger(), server_default=sa.text("3600000"), nullable=False),
        sa.Column("jitter_ms", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("paused", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("next_tick_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("next_fire_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_tick_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_run_id", sa.Text(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("fired_count", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("skipped_count", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.PrimaryKeyConstraint("schedule_id", name="pk_schedules"),
    )
    op.create_index(
        "ix_schedules_partition_next_fire_at",
        "schedules",
        ["partition", "next_fire_at"],
        postgresql_where=sa.text("NOT paused"),
    )


def downgrade() -> None:
    op.drop_index("ix_schedules_partition_next_fire_at", table_name="schedules")
    op.drop_table("schedules")
    op.drop_table("workflow_versions")
    op.drop_index("ix_workflow_runs_workflow_created_at", table_name="workflow_runs")
    op.drop_column("workflow_runs", "workflow_version")
