"""Run queries, the read paths of the CLI, the HTTP API, the web UI and the Python client.

`RunQueries` reads through a `RunStore`'s connection pool and never writes; what the coordinator
reads to run runs (its loads, pending commands) stays with the write path in `runs.py`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Any

from orchestrator.errors import RunNotFoundError
from orchestrator.state import Event, EventType, RunProjection
from orchestrator.store.limits import run_limits
from orchestrator.store.runs import RunStore, require_run, to_epoch


class RunQueries:
    """Status documents, run lists, event logs and stored projections of runs."""

    def __init__(self, store: RunStore) -> None:
        self.store = store

    def get_run(self, run_id: str) -> dict[str, Any]:
        """The status document of docs/spec.md §8 (`status --json`)."""
        with self.store.connection() as conn:
            run = require_run(conn, run_id)
            steps = conn.execute(
                "SELECT step_key, step_id, status, attempt, output, error, due_at, detail, updated_at"
                " FROM workflow_steps WHERE run_id = %s ORDER BY step_key",
                (run_id,),
            ).fetchall()
            limits = run_limits(conn, run_id)
        return {
            "run_id": run["run_id"],
            "workflow": run["workflow"],
            "status": run["status"],
            "inputs": run["inputs"],
            "outputs": run["state"].get("outputs"),
            "error": run["state"].get("error"),
            "created_at": run["created_at"].isoformat(),
            "finished_at": run["finished_at"].isoformat() if run["finished_at"] else None,
            "parent_run_id": run["parent_run_id"],
            "steps": {
                s["step_key"]: {
                    "status": s["status"],
                    "attempts": s["attempt"],
                    "output": s["output"],
                    "error": s["error"],
                    "due_at": to_epoch(s["due_at"]),
                    "detail": s["detail"],
                }
                for s in steps
            },
            "limits": limits,  # flow control: what its steps wait on or hold (§12.2)
            "plan": run["plan"],
            "definition": run["definition"],
        }

    def count_finished(self, run_ids: Sequence[str]) -> int:
        with self.store.connection() as conn:
            row = conn.execute(
                "SELECT count(*) AS n FROM workflow_runs WHERE run_id = ANY(%s) AND finished_at IS NOT NULL",
                (list(run_ids),),
            ).fetchone()
        return int(row["n"]) if row else 0

    def run_status(self, run_id: str) -> str:
        with self.store.connection() as conn:
            row = conn.execute("SELECT status FROM workflow_runs WHERE run_id = %s", (run_id,)).fetchone()
        if row is None:
            raise RunNotFoundError(f"no run {run_id!r}; list runs with `steppe runs`")
        return str(row["status"])

    def list_runs(
        self,
        *,
        status: str | None = None,
        workflow: str | None = None,
        limit: int = 50,
        created_after: dt.datetime | None = None,
        created_before: dt.datetime | None = None,
    ) -> list[dict[str, Any]]:
        """Runs newest first, filtered by status, workflow and a window of creation times."""
        clauses: list[str] = []
        params: list[Any] = []
        if status == "waiting":  # runs with a step waiting for a signal, an approval or a timer (§12.1)
            clauses.append(
                "status = 'running' AND EXISTS (SELECT 1 FROM workflow_steps s"
                " WHERE s.run_id = workflow_runs.run_id AND s.status = 'waiting')"
            )
        elif status:
            clauses.append("status = %s")
            params.append(status)
        if workflow:
            # `name@3`: the runs started from deployed version 3 of `name` (docs/spec.md §12.3).
            name, at, version = workflow.rpartition("@") if "@" in workflow else (workflow, "", "")
            clauses.append("workflow = %s")
            params.append(name)
            if at:
                clauses.append("workflow_version = %s")
                params.append(int(version) if version.isdigit() else -1)
        if created_after is not None:
            clauses.append("created_at >= %s")
            params.append(created_after)
        if created_before is not None:
            clauses.append("created_at < %s")
            params.append(created_before)
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        with self.store.connection() as conn:
            return conn.execute(
                "SELECT run_id, workflow, status, created_at, finished_at, parent_run_id, workflow_version"  # noqa: S608
                f" FROM workflow_runs {where} ORDER BY created_at DESC LIMIT %s",
                (*params, limit),
            ).fetchall()

    def events(self, run_id: str, *, after: int = 0) -> list[dict[str, Any]]:
        with self.store.connection() as conn:
            require_run(conn, run_id)
            return conn.execute(
                "SELECT seq, type, step_key, attempt, data, created_at FROM workflow_events"
                " WHERE run_id = %s AND seq > %s ORDER BY seq",
                (run_id, after),
            ).fetchall()

    def stored_projection(self, run_id: str) -> RunProjection:
        """The projection as stored (run row + step rows), for comparison with a fold of the log."""
        loaded = self.store.load_runs([run_id])
        if not loaded:
            raise RunNotFoundError(f"no run {run_id!r}")
        return loaded[0].projection


def events_from_rows(rows: Iterable[dict[str, Any]]) -> list[Event]:
    return [
        Event(seq=r["seq"], type=EventType(r["type"]), step=r["step_key"], attempt=r["attempt"], data=r["data"])
        for r in rows
    ]
