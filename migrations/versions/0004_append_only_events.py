"""workflow_events is append-only: UPDATE, DELETE and TRUNCATE are refused, whoever asks.

The event log is each run's history, from which its state is rebuilt (`steppe admin rebuild`)
and audited. A statement trigger refuses every UPDATE, DELETE and TRUNCATE (deleting a run,
whose events would cascade, included), so the guarantee holds on installations that run
everything as one role too; where the application role `steppe_app` exists
(deploy/postgres/roles.sql, `steppe dev up`) it also loses those privileges. Only the table's
owner can lift it, deliberately: `ALTER TABLE workflow_events DISABLE TRIGGER
workflow_events_append_only`. Migrations run as that owner.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_IF_APP_ROLE = """
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'steppe_app') THEN
        {statement};
    END IF;
END
$$
"""


def upgrade() -> None:
    op.execute(
        """
        CREATE OR REPLACE FUNCTION steppe_refuse_event_change() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'workflow_events is append-only: % refused', TG_OP
                USING ERRCODE = '42501',
                      HINT = 'events are never changed or deleted; the table owner may run ALTER TABLE '
                             'workflow_events DISABLE TRIGGER workflow_events_append_only for a deliberate purge';
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER workflow_events_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON workflow_events "
        "FOR EACH STATEMENT EXECUTE FUNCTION steppe_refuse_event_change()"
    )
    op.execute(_IF_APP_ROLE.format(statement="REVOKE UPDATE, DELETE, TRUNCATE ON workflow_events FROM steppe_app"))
    # Alembic's own table: created after roles.sql ran, so default privileges gave the app DML on it.
    op.execute(
        _IF_APP_ROLE.format(statement="REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON alembic_version FROM steppe_app")
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS workflow_events_append_only ON workflow_events")
    op.execute("DROP FUNCTION IF EXISTS steppe_refuse_event_change()")
    op.execute(_IF_APP_ROLE.format(statement="GRANT UPDATE, DELETE ON workflow_events TO steppe_app"))
