"""Durable post/session hook executions (`hook_executions`) and the hook counters.

A hook execution is written in the coordinator's batch transaction that commits the event
triggering it, and updated in the batch that applies each of its results, so what is pending
survives a coordinator crash and Redis losing the message (the reconciler republishes it).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg

HOOK_PENDING = "pending"


@dataclass(frozen=True, slots=True)
class HookExecutionRow:
    """One execution's durable state: its next (or current) attempt and, once done, its outcome."""

    run_id: str
    step_key: str
    hook_id: int
    partition: int
    attempt: int
    status: str  # pending | succeeded | failed
    message: bytes  # the encoded StepMessage of attempt 1 (`attempt` says which one is due)
    due_at: float | None = None  # a retry's time (epoch seconds); None: publish now
    error: str | None = None


@dataclass(frozen=True, slots=True)
class HookCount:
    """One finished execution, for the hook's counters in `workflow_hooks`."""

    hook_id: int
    ok: bool
    error: str | None


def write(cur: psycopg.Cursor[Any], rows: Sequence[HookExecutionRow], counts: Sequence[HookCount]) -> None:
    """Upsert execution rows and bump hook counters, inside the caller's transaction."""
    if rows:
        cur.execute(
            """
            INSERT INTO hook_executions (run_id, step_key, hook_id, partition, attempt, status, due_at, message, error)
            SELECT run_id, step_key, hook_id, partition, attempt, status, to_timestamp(due_at), message, error
            FROM jsonb_to_recordset(%s::jsonb) AS x(run_id text, step_key text, hook_id bigint, partition int,
                 attempt int, status text, due_at double precision, message jsonb, error text)
            ON CONFLICT (run_id, step_key) DO UPDATE SET
                attempt = EXCLUDED.attempt, status = EXCLUDED.status, due_at = EXCLUDED.due_at,
                error = EXCLUDED.error, updated_at = now()
            """,
            (
                orjson.dumps(
                    [
                        {
                            "run_id": r.run_id,
                            "step_key": r.step_key,
                            "hook_id": r.hook_id,
                            "partition": r.partition,
                            "attempt": r.attempt,
                            "status": r.status,
                            "due_at": r.due_at,
                            "message": orjson.Fragment(r.message),
                            "error": r.error,
                        }
                        for r in rows
                    ]
                ).decode(),
            ),
        )
    if counts:
        totals: dict[int, dict[str, Any]] = {}
        for c in counts:
            t = totals.setdefault(c.hook_id, {"hook_id": c.hook_id, "n": 0, "errors": 0, "last_error": None})
            t["n"] += 1
            if not c.ok:
                t["errors"] += 1
                t["last_error"] = c.error
        cur.execute(
            """
            UPDATE workflow_hooks AS h SET trigger_count = h.trigger_count + v.n, last_triggered_at = now(),
                error_count = h.error_count + v.errors, last_error = COALESCE(v.last_error, h.last_error)
            FROM jsonb_to_recordset(%s::jsonb) AS v(hook_id bigint, n int, errors int, last_error text)
            WHERE h.hook_id = v.hook_id
            """,
            (orjson.dumps(list(totals.values())).decode(),),
        )


def load_pending(
    conn: psycopg.Connection[dict[str, Any]], partitions: Iterable[int], skip: set[tuple[str, str]]
) -> list[HookExecutionRow]:
    """Pending executions of `partitions`, except the (run id, step key) pairs in `skip`."""
    rows = conn.execute(
        "SELECT run_id, step_key, hook_id, partition, attempt, status, due_at, message::text AS message, error"
        " FROM hook_executions WHERE status = %s AND partition = ANY(%s)",
        (HOOK_PENDING, list(partitions)),
    ).fetchall()
    return [
        HookExecutionRow(
            run_id=r["run_id"],
            step_key=r["step_key"],
            hook_id=r["hook_id"],
            partition=r["partition"],
            attempt=r["attempt"],
            status=r["status"],
            message=r["message"].encode(),
            due_at=_epoch(r["due_at"]),
            error=r["error"],
        )
        for r in rows
        if (r["run_id"], r["step_key"]) not in skip
    ]


def _epoch(value: dt.datetime | None) -> float | None:
    return value.timestamp() if value is not None else None
