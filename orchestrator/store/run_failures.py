"""Failing a run outside the coordinator's batch: for a run whose own changes PostgreSQL refuses.

The run is failed from what is already committed: its log gets one more event, `run.failed`
with the error, and its row the matching projection (status, `state.error`, `last_seq`,
`finished_at`), so folding the log still reproduces the stored state.
"""

from __future__ import annotations

from typing import Any

from psycopg.types.json import Jsonb

from orchestrator.state import EventType
from orchestrator.store.runs import RunStore


def fail_run(store: RunStore, run_id: str, *, owner: str, error: dict[str, Any]) -> bool:
    """Append `run.failed` and mark the run failed, in one transaction, only while `owner`
    leases the run's partition. False when the run is finished already or owned by another."""
    with store.connection() as conn, conn.transaction():
        row = conn.execute(
            """
            UPDATE workflow_runs AS r SET status = 'failed', state = r.state || jsonb_build_object('error', %s::jsonb),
                last_seq = r.last_seq + 1, version = r.version + 1, updated_at = now(), finished_at = now()
            WHERE r.run_id = %s AND r.finished_at IS NULL AND EXISTS (
                SELECT 1 FROM coordinator_leases l WHERE l.partition = r.partition AND l.owner = %s)
            RETURNING r.last_seq
            """,
            (Jsonb(error), run_id, owner),
        ).fetchone()
        if row is None:
            return False
        conn.execute(
            "INSERT INTO workflow_events (run_id, seq, type, data) VALUES (%s, %s, %s, %s)",
            (run_id, row["last_seq"], str(EventType.RUN_FAILED), Jsonb({"error": error})),
        )
    return True
