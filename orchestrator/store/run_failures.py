"""Failing a run outside the coordinator's batch: for a run whose own changes PostgreSQL refuses.

The run is failed from what is already committed: its log gets `step.cancelled` for each step
still in flight, then `run.failed` with the error, and its rows the matching projection (step
statuses; the run's status, `state.error`, `last_seq`, `finished_at`), so folding the log still
reproduces the stored state. Workers' late results for it are ignored, as for any finished run.
"""

from __future__ import annotations

from typing import Any

from psycopg.types.json import Jsonb

from orchestrator.state import ACTIVE_STEP_STATUSES, EventType, StepStatus
from orchestrator.store.runs import RunStore

# Nothing is left in flight: a step the coordinator will no longer follow is cancelled in the log.
_IN_FLIGHT = sorted(str(s) for s in ACTIVE_STEP_STATUSES | {StepStatus.CHECKING})


def fail_run(store: RunStore, run_id: str, *, owner: str, error: dict[str, Any]) -> bool:
    """Cancel the run's in-flight steps and fail the run with `error`, in one transaction, only while
    `owner` leases the run's partition. False when the run is finished already or owned by another."""
    with store.connection() as conn, conn.transaction():
        run = conn.execute(
            "SELECT r.last_seq FROM workflow_runs r WHERE r.run_id = %s AND r.finished_at IS NULL AND EXISTS ("
            " SELECT 1 FROM coordinator_leases l WHERE l.partition = r.partition AND l.owner = %s) FOR UPDATE",
            (run_id, owner),
        ).fetchone()
        if run is None:
            return False
        steps = conn.execute(
            "SELECT step_key, attempt FROM workflow_steps WHERE run_id = %s AND status = ANY(%s) ORDER BY step_key",
            (run_id, _IN_FLIGHT),
        ).fetchall()
        seq = int(run["last_seq"])
        events: list[tuple[str, int, str, str | None, int | None, Jsonb]] = []
        for step in steps:
            seq += 1
            events.append((run_id, seq, str(EventType.STEP_CANCELLED), step["step_key"], step["attempt"], Jsonb({})))
        seq += 1
        events.append((run_id, seq, str(EventType.RUN_FAILED), None, None, Jsonb({"error": error})))
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO workflow_events (run_id, seq, type, step_key, attempt, data)"
                " VALUES (%s, %s, %s, %s, %s, %s)",
                events,
            )
        conn.execute(
            "UPDATE workflow_steps SET status = 'cancelled', due_at = NULL, updated_at = now()"
            " WHERE run_id = %s AND status = ANY(%s)",
            (run_id, _IN_FLIGHT),
        )
        conn.execute(
            "UPDATE workflow_runs SET status = 'failed', state = state || jsonb_build_object('error', %s::jsonb),"
            " last_seq = %s, version = version + 1, updated_at = now(), finished_at = now() WHERE run_id = %s",
            (Jsonb(error), seq, run_id),
        )
    return True
