"""Rebuilding run projections from the event log (event sourcing: the log is the truth)."""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from orchestrator.state import TERMINAL_RUN_STATUSES, fold
from orchestrator.store.queries import RunQueries, events_from_rows
from orchestrator.store.runs import RunStore, to_datetime


@dataclass(frozen=True, slots=True)
class RebuildResult:
    run_id: str
    events: int
    matched: bool  # the stored projection already equalled the fold of the log
    written: bool


def rebuild(store: RunStore, run_id: str, *, write: bool = True) -> RebuildResult:
    """Fold a run's log; when the stored rows differ, replace them (bumping `version` fences coordinators)."""
    queries = RunQueries(store)
    rows = queries.events(run_id)
    folded = fold(run_id, events_from_rows(rows))
    stored = queries.stored_projection(run_id)
    matched = folded.to_json() == stored.to_json()
    if matched or not write:
        return RebuildResult(run_id, len(rows), matched, written=False)
    with store.connection() as conn, conn.transaction():
        conn.execute(
            "UPDATE workflow_runs SET status = %s, state = %s::jsonb, last_seq = %s, version = version + 1,"
            " updated_at = now(), finished_at = CASE WHEN %s THEN coalesce(finished_at, now()) END"
            " WHERE run_id = %s",
            (
                str(folded.status),
                orjson.dumps(folded.state).decode(),
                folded.last_seq,
                folded.status in TERMINAL_RUN_STATUSES,
                run_id,
            ),
        )
        conn.execute("DELETE FROM workflow_steps WHERE run_id = %s", (run_id,))
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO workflow_steps (run_id, step_key, step_id, status, attempt, output, error, due_at, detail)"
                " VALUES (%s, %s, %s, %s, %s, %s::jsonb, %s::jsonb, %s, %s::jsonb)",
                [
                    (
                        run_id,
                        key,
                        r.step_id,
                        str(r.status),
                        r.attempt,
                        orjson.dumps(r.output).decode(),
                        None if r.error is None else orjson.dumps(r.error).decode(),
                        to_datetime(r.due_at),
                        orjson.dumps(r.detail).decode(),
                    )
                    for key, r in folded.steps.items()
                ],
            )
    return RebuildResult(run_id, len(rows), matched=False, written=True)
