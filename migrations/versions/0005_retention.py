"""Retention: `steppe_prune_finished_runs`, the one way events are ever deleted.

The event log stays append-only (migration 0004) for every role and every statement, with one
exception that nobody can forge: a DELETE inside a transaction that holds a row in
`steppe_prune_tokens`. Only the table's owner can write that table (the application role
`steppe_app` may not even read it), and the only code that does is
`steppe_prune_finished_runs(cutoff, max_runs)`, a SECURITY DEFINER function owned by the
migrator that the application may call. It deletes, in one transaction and for at most
`max_runs` top-level runs:

* only runs that are terminal (succeeded, failed, cancelled, compensated,
  compensation_failed) and finished before `cutoff` (which may not be in the future),
  with no unprocessed command (a retry or signal in flight), together with their child runs
  at every level, which must all be terminal and finished before `cutoff` too;
* their events, steps, hook executions, commands and dead letters, then the run rows;
* rows it can lock at once (FOR UPDATE SKIP LOCKED): a coordinator writing one of the
  runs, or a command being added to it, makes it skip that tree this time.

It takes `pg_try_advisory_xact_lock(RETENTION_LOCK)` first: one pruner at a time across
the fleet, each batch fenced by its own transaction (the lock ends with it); a second caller
gets `busy = true` and deletes nothing. It inserts its transaction's token, deletes, and
removes the token again before returning, so later statements of the caller's transaction
are refused as before.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# pg_try_advisory_xact_lock key of the pruner ("Steppe" in ASCII, then 1).
RETENTION_LOCK = 0x5374657070650001
TERMINAL = "ARRAY['succeeded', 'failed', 'cancelled', 'compensated', 'compensation_failed']"

_IF_APP_ROLE = """
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'steppe_app') THEN
        {statement};
    END IF;
END
$$
"""

# The trigger of 0004, which now lets a DELETE through inside a pruning transaction only.
# SECURITY DEFINER so that it can read the token table, which the app role cannot.
_TRIGGER_FUNCTION = """
CREATE OR REPLACE FUNCTION steppe_refuse_event_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    IF TG_OP = 'DELETE' AND EXISTS (SELECT FROM steppe_prune_tokens WHERE txid = txid_current()) THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION 'workflow_events is append-only: % refused', TG_OP
        USING ERRCODE = '42501',
              HINT = 'events are deleted only with their finished runs, by retention (steppe admin prune); '
                     'the table owner may run ALTER TABLE workflow_events DISABLE TRIGGER '
                     'workflow_events_append_only for a deliberate purge';
END
$$
"""

_OLD_TRIGGER_FUNCTION = """
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

_PRUNE_FUNCTION = f"""
CREATE OR REPLACE FUNCTION steppe_prune_finished_runs(p_cutoff timestamptz, p_max_runs integer)
RETURNS TABLE (busy boolean, runs bigint, steps bigint, events bigint, hook_executions bigint,
               commands bigint, dead_letters bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    root record;
    tree text[];
    locked integer;
    ids text[] := '{{}}';
    roots integer := 0;
    scanned integer := 0;
    n_runs bigint; n_steps bigint; n_events bigint; n_hooks bigint; n_commands bigint; n_dead bigint;
BEGIN
    IF p_cutoff IS NULL OR p_cutoff > now() THEN
        RAISE EXCEPTION 'steppe_prune_finished_runs: cutoff % is in the future', p_cutoff USING ERRCODE = '22023';
    END IF;
    IF p_max_runs IS NULL OR p_max_runs < 1 OR p_max_runs > 10000 THEN
        RAISE EXCEPTION 'steppe_prune_finished_runs: max_runs % is not within 1..10000', p_max_runs
            USING ERRCODE = '22023';
    END IF;
    IF NOT pg_try_advisory_xact_lock({RETENTION_LOCK}) THEN
        RETURN QUERY SELECT true, 0::bigint, 0::bigint, 0::bigint, 0::bigint, 0::bigint, 0::bigint;
        RETURN;
    END IF;
    FOR root IN
        SELECT r.run_id FROM workflow_runs r
        WHERE r.parent_run_id IS NULL AND r.finished_at < p_cutoff AND r.status = ANY({TERMINAL})
          AND NOT EXISTS (SELECT FROM run_commands c WHERE c.run_id = r.run_id AND c.processed_at IS NULL)
        ORDER BY r.finished_at, r.run_id
        FOR UPDATE OF r SKIP LOCKED
    LOOP
        scanned := scanned + 1;
        WITH RECURSIVE t(run_id) AS (
            SELECT w.run_id FROM workflow_runs w WHERE w.parent_run_id = root.run_id
            UNION ALL
            SELECT w.run_id FROM workflow_runs w JOIN t ON w.parent_run_id = t.run_id
        )
        SELECT coalesce(array_agg(t.run_id), '{{}}') INTO tree FROM t;
        IF cardinality(tree) > 0 THEN
            SELECT count(*) INTO locked FROM (
                SELECT FROM workflow_runs w
                WHERE w.run_id = ANY(tree) AND w.finished_at < p_cutoff AND w.status = ANY({TERMINAL})
                  AND NOT EXISTS (SELECT FROM run_commands c WHERE c.run_id = w.run_id AND c.processed_at IS NULL)
                FOR UPDATE OF w SKIP LOCKED
            ) AS ready;
        ELSE
            locked := 0;
        END IF;
        IF locked = cardinality(tree) THEN
            ids := ids || root.run_id || tree;
            roots := roots + 1;
        END IF;
        EXIT WHEN roots >= p_max_runs OR scanned >= 4 * p_max_runs;
    END LOOP;

    INSERT INTO steppe_prune_tokens (txid) VALUES (txid_current()) ON CONFLICT DO NOTHING;
    DELETE FROM workflow_events WHERE run_id = ANY(ids);
    GET DIAGNOSTICS n_events = ROW_COUNT;
    DELETE FROM workflow_steps WHERE run_id = ANY(ids);
    GET DIAGNOSTICS n_steps = ROW_COUNT;
    DELETE FROM hook_executions WHERE run_id = ANY(ids);
    GET DIAGNOSTICS n_hooks = ROW_COUNT;
    DELETE FROM run_commands WHERE run_id = ANY(ids);
    GET DIAGNOSTICS n_commands = ROW_COUNT;
    DELETE FROM dead_letters WHERE run_id = ANY(ids);
    GET DIAGNOSTICS n_dead = ROW_COUNT;
    DELETE FROM workflow_runs WHERE run_id = ANY(ids);  -- other tables' rows of these runs cascade
    GET DIAGNOSTICS n_runs = ROW_COUNT;
    DELETE FROM steppe_prune_tokens WHERE txid = txid_current();
    RETURN QUERY SELECT false, n_runs, n_steps, n_events, n_hooks, n_commands, n_dead;
END
$$
"""  # noqa: S608 - formatted with this module's constants only


def upgrade() -> None:
    op.create_table(
        "steppe_prune_tokens",
        sa.Column("txid", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.PrimaryKeyConstraint("txid", name="pk_steppe_prune_tokens"),
    )
    # What the pruner scans (finished top-level runs, oldest first) and what deleting a run's
    # commands looks up (the foreign key's cascade would otherwise scan run_commands per run).
    op.create_index(
        "ix_workflow_runs_finished_roots",
        "workflow_runs",
        ["finished_at"],
        postgresql_where=sa.text("finished_at IS NOT NULL AND parent_run_id IS NULL"),
    )
    op.create_index("ix_run_commands_run_id", "run_commands", ["run_id"])
    op.execute("REVOKE ALL ON steppe_prune_tokens FROM PUBLIC")
    op.execute(_IF_APP_ROLE.format(statement="REVOKE ALL ON steppe_prune_tokens FROM steppe_app"))
    op.execute(_TRIGGER_FUNCTION)
    op.execute(_PRUNE_FUNCTION)
    op.execute("REVOKE ALL ON FUNCTION steppe_prune_finished_runs(timestamptz, integer) FROM PUBLIC")
    op.execute(
        _IF_APP_ROLE.format(
            statement="GRANT EXECUTE ON FUNCTION steppe_prune_finished_runs(timestamptz, integer) TO steppe_app"
        )
    )


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS steppe_prune_finished_runs(timestamptz, integer)")
    op.execute(_OLD_TRIGGER_FUNCTION)
    op.drop_index("ix_run_commands_run_id", table_name="run_commands")
    op.drop_index("ix_workflow_runs_finished_roots", table_name="workflow_runs")
    op.drop_table("steppe_prune_tokens")
