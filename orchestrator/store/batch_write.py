"""The phases of `RunStore.commit_batch`: one array-fed statement per table on the batch's cursor.

Rows travel as one JSON document per table (orjson-encoded, expanded by jsonb_to_recordset): far
cheaper to build than per-row or array parameters. Each function only queues its statement; the
caller's pipeline and transaction decide when it goes out and whether it commits.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import orjson
import psycopg

from orchestrator.errors import RunDataError
from orchestrator.state import Event, StepRecord

if TYPE_CHECKING:
    from orchestrator.store.runs import RunWrite

Cursor = psycopg.Cursor[dict[str, Any]]

_INSERT_EVENTS = (
    "INSERT INTO workflow_events (run_id, seq, type, step_key, attempt, data)"
    " SELECT run_id, seq, type, step_key, attempt, data FROM jsonb_to_recordset(%s::jsonb)"
    " AS x(run_id text, seq bigint, type text, step_key text, attempt int, data jsonb)"
)

_UPSERT_STEPS = """
    INSERT INTO workflow_steps (run_id, step_key, step_id, status, attempt, output, error,
                                due_at, detail)
    SELECT run_id, step_key, step_id, status, attempt, output, error, to_timestamp(due_at), detail
    FROM jsonb_to_recordset(%s::jsonb) AS x(run_id text, step_key text, step_id text,
         status text, attempt int, output jsonb, error jsonb, due_at double precision,
         detail jsonb)
    ON CONFLICT (run_id, step_key) DO UPDATE SET
        status = EXCLUDED.status, attempt = EXCLUDED.attempt, output = EXCLUDED.output,
        error = EXCLUDED.error, due_at = EXCLUDED.due_at, detail = EXCLUDED.detail,
        updated_at = now()
    """

# The lease check rides on the run update; steppe_fence (migration 0002) raises SQLSTATE 40001
# when a run changed hands, and the whole batch rolls back.
_UPDATE_RUNS = """
    WITH updated AS (
    UPDATE workflow_runs AS r SET status = v.status, state = v.state, last_seq = v.last_seq,
        version = r.version + 1, updated_at = now(),
        finished_at = CASE WHEN v.finished THEN now() ELSE NULL END
    FROM jsonb_to_recordset(%s::jsonb)
         AS v(run_id text, expected int, status text, state jsonb, last_seq bigint, finished bool)
    WHERE r.run_id = v.run_id AND r.version = v.expected AND EXISTS (
        SELECT 1 FROM coordinator_leases l WHERE l.partition = r.partition AND l.owner = %s)
    RETURNING r.run_id)
    SELECT steppe_fence(%s, (SELECT count(*) FROM updated))
    """


# The run update's plan does not depend on its parameters (rows come in a JSON document, the lease
# table is tiny), but its cost grows with workflow_runs: a prepared statement whose first custom plans
# were costed on small tables (a coordinator started on a young database) then compares every later
# generic plan with that stale average, loses, and is planned again on every batch (seen in the bench:
# one planning per call, the batch's most expensive statement in a chain). The batch's statements
# after it are array-fed writes by key as well, for which the generic plan is the plan.
_GENERIC_PLANS = "SET LOCAL plan_cache_mode = force_generic_plan"


def rows_json(rows: Iterable[dict[str, Any]]) -> str:
    try:
        return orjson.dumps(list(rows)).decode()
    except orjson.JSONEncodeError as e:  # an integer beyond 64 bits, nesting deeper than 254, …
        raise RunDataError(f"JSONEncodeError: {e}", cause="JSONEncodeError") from e


def insert_events(cur: Cursor, events: Sequence[tuple[str, Event]]) -> None:
    if not events:
        return
    rows = (
        {"run_id": run_id, "seq": e.seq, "type": e.type, "step_key": e.step, "attempt": e.attempt, "data": e.data}
        for run_id, e in events
    )
    cur.execute(_INSERT_EVENTS, (rows_json(rows),))


def upsert_steps(cur: Cursor, steps: Sequence[tuple[str, str, StepRecord]]) -> None:
    if not steps:
        return
    rows = (
        {
            "run_id": run_id,
            "step_key": key,
            "step_id": r.step_id,
            "status": r.status,
            "attempt": r.attempt,
            "output": r.output,
            "error": r.error,
            "due_at": r.due_at,
            "detail": r.detail,
        }
        for run_id, key, r in steps
    )
    cur.execute(_UPSERT_STEPS, (rows_json(rows),))


def update_runs(cur: Cursor, writes: Sequence[RunWrite], owner: str) -> None:
    """The run rows, version-checked and fenced by the partition lease (a conflict rolls back the batch)."""
    if not writes:
        return
    rows = (
        {
            "run_id": w.run_id,
            "expected": w.expected_version,
            "status": w.status,
            "state": w.state,
            "last_seq": w.last_seq,
            "finished": w.finished,
        }
        for w in writes
    )
    cur.execute(_GENERIC_PLANS)
    cur.execute(_UPDATE_RUNS, (rows_json(rows), owner, len(writes)))


def mark_commands_processed(cur: Cursor, command_ids: Sequence[int]) -> None:
    if command_ids:
        cur.execute("UPDATE run_commands SET processed_at = now() WHERE command_id = ANY(%s)", (list(command_ids),))
