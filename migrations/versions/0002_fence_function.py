"""The fencing function the coordinator's batch write uses.

`steppe_fence(expected, actual)` raises SQLSTATE 40001 when a batch updated fewer run rows
than it meant to (another coordinator owns the partition now, or changed the run), so the
check happens inside the same pipelined round trip as the write and rolls it back.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        CREATE OR REPLACE FUNCTION steppe_fence(expected bigint, actual bigint) RETURNS void
        LANGUAGE plpgsql AS $$
        BEGIN
            IF expected <> actual THEN
                RAISE EXCEPTION 'steppe_fence: expected % run rows, updated %', expected, actual
                    USING ERRCODE = '40001';
            END IF;
        END
        $$
        """
    )


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS steppe_fence(bigint, bigint)")
