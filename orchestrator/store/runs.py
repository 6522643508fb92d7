"""Run repository: submission, batched coordinator writes, and the read paths of the CLI and API.

The coordinator's hot path writes a batch of results in one transaction: events with
COPY, touched step rows with one multi-row upsert, run rows with an optimistic
`version` check (a conflict means another coordinator owns the run now).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb, set_json_dumps, set_json_loads
from psycopg_pool import ConnectionPool

from orchestrator.errors import ConflictError, DatabaseUnavailableError, RunDataError, RunNotFoundError
from orchestrator.state import Event, EventType, RunProjection, RunStatus, StepRecord, StepStatus
from orchestrator.store import hook_executions
from orchestrator.store.hook_executions import HookCount, HookExecutionRow


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


set_json_dumps(_dumps)
set_json_loads(orjson.loads)

UTC = dt.UTC

# Refused for the data a statement carries (SQLSTATE classes 22 and 54), not for the server's state:
# a batch failing with one of these is split run by run (orchestrator/quarantine.py).
LIMIT_ERRORS = (
    psycopg.errors.ProgramLimitExceeded,
    psycopg.errors.StatementTooComplex,
    psycopg.errors.TooManyColumns,
    psycopg.errors.TooManyArguments,
)
DATA_ERRORS = (psycopg.DataError, *LIMIT_ERRORS)


def to_datetime(epoch: float | None) -> dt.datetime | None:
    return None if epoch is None else dt.datetime.fromtimestamp(epoch, UTC)


def to_epoch(value: dt.datetime | None) -> float | None:
    return None if value is None else round(value.timestamp(), 3)


@dataclass(slots=True)
class RunWrite:
    """Everything one run changed in one coordinator batch."""

    run_id: str
    expected_version: int
    status: RunStatus
    state: dict[str, Any]
    last_seq: int
    events: list[Event]
    steps: dict[str, StepRecord] = field(default_factory=dict)
    finished: bool = False


@dataclass(slots=True)
class StoredRun:
    """A run row as the coordinator needs it."""

    run_id: str
    workflow: str
    partition: int
    definition: dict[str, Any]
    inputs: dict[str, Any]
    version: int
    projection: RunProjection
    created_at: dt.datetime | None = None
    parent_run_id: str | None = None
    depth: int = 0


class RunStore:
    """PostgreSQL access for runs, steps, events, commands and dead letters."""

    def __init__(self, url: str, *, pool_size: int = 4, connect_timeout: int = 5) -> None:
        self.url = url
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            kwargs={"connect_timeout": connect_timeout, "row_factory": dict_row},
            open=False,
            # No per-checkout health check (a round trip per batch): a broken connection
            # surfaces as DatabaseUnavailableError, the coordinator reloads, the pool reconnects.
        )

    def open(self, *, wait_timeout: float = 10.0) -> None:
        try:
            self._pool.open(wait=True, timeout=wait_timeout)
        except psycopg.Error as e:  # pool timeouts are psycopg errors too
            raise DatabaseUnavailableError(
                f"cannot connect to PostgreSQL at {_safe(self.url)} ({e}); start one with `steppe dev up` "
                "or set STEPPE_DATABASE_URL"
            ) from e

    def close(self) -> None:
        self._pool.close()

    def __enter__(self) -> RunStore:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[dict[str, Any]]]:
        try:
            with self._pool.connection() as conn:
                yield conn  # type: ignore[misc]  # the pool sets row_factory=dict_row
        except (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected):
            raise  # a conflict (serialization failure, deadlock), not an outage
        except LIMIT_ERRORS:
            raise  # a value too large or too deep for PostgreSQL (class 54): the data's fault, not an outage
        except psycopg.OperationalError as e:
            raise DatabaseUnavailableError(f"PostgreSQL at {_safe(self.url)} failed: {e}") from e

    # -- submission ----------------------------------------------------------------------------------

    def create_run(
        self,
        *,
        run_id: str,
        workflow: str,
        partition: int,
        definition: dict[str, Any],
        inputs: dict[str, Any],
        plan: dict[str, Any],
        idempotency_key: str | None = None,
        parent_run_id: str | None = None,
        parent_step: str | None = None,
        depth: int = 0,
    ) -> tuple[str, bool]:
        """Insert a pending run and its `run.submitted` event; returns (run_id, created)."""
        state = {"workflow": workflow}
        with self.connection() as conn, conn.transaction():
            row = conn.execute(
                """
                INSERT INTO workflow_runs (run_id, workflow, status, partition, definition, inputs, plan, state,
                                           last_seq, idempotency_key, parent_run_id, parent_step, depth)
                VALUES (%s, %s, 'pending', %s, %s, %s, %s, %s, 1, %s, %s, %s, %s)
                ON CONFLICT (idempotency_key) DO NOTHING
                RETURNING run_id
                """,
                (
                    run_id,
                    workflow,
                    partition,
                    Jsonb(definition),
                    Jsonb(inputs),
                    Jsonb(plan),
                    Jsonb(state),
                    idempotency_key,
                    parent_run_id,
                    parent_step,
                    depth,
                ),
            ).fetchone()
            if row is None:
                existing = conn.execute(
                    "SELECT run_id FROM workflow_runs WHERE idempotency_key = %s", (idempotency_key,)
                ).fetchone()
                assert existing is not None
                return str(existing["run_id"]), False
            conn.execute(
                "INSERT INTO workflow_events (run_id, seq, type, data) VALUES (%s, 1, %s, %s)",
                (run_id, str(EventType.RUN_SUBMITTED), Jsonb({"workflow": workflow})),
            )
        return run_id, True

    def create_runs(self, runs: Sequence[dict[str, Any]]) -> None:
        """Insert many pending runs (no idempotency keys) in one transaction, with COPY."""
        with self.connection() as conn, conn.transaction(), conn.cursor() as cur:
            with cur.copy(
                "COPY workflow_runs (run_id, workflow, status, partition, definition, inputs, plan, state, last_seq)"
                " FROM STDIN"
            ) as copy:
                for r in runs:
                    copy.write_row(
                        (
                            r["run_id"],
                            r["workflow"],
                            "pending",
                            r["partition"],
                            _dumps(r["definition"]),
                            _dumps(r["inputs"]),
                            _dumps(r["plan"]),
                            _dumps({"workflow": r["workflow"]}),
                            1,
                        )
                    )
            with cur.copy("COPY workflow_events (run_id, seq, type, data) FROM STDIN") as copy:
                for r in runs:
                    copy.write_row((r["run_id"], 1, str(EventType.RUN_SUBMITTED), _dumps({"workflow": r["workflow"]})))

    def add_command(self, run_id: str, command: str, payload: dict[str, Any] | None = None) -> int:
        with self.connection() as conn, conn.transaction():
            self._require_run(conn, run_id)
            row = conn.execute(
                "INSERT INTO run_commands (run_id, command, payload) VALUES (%s, %s, %s) RETURNING command_id",
                (run_id, command, Jsonb(payload or {})),
            ).fetchone()
            assert row is not None
            return int(row["command_id"])

    def create_child_runs(self, children: Sequence[dict[str, Any]]) -> list[str]:
        """Insert pending child runs that do not exist yet (a coordinator may repeat itself
        after a crash); returns the ids actually created."""
        created: list[str] = []
        with self.connection() as conn, conn.transaction():
            for child in children:
                row = conn.execute(
                    """
                    INSERT INTO workflow_runs (run_id, workflow, status, partition, definition, inputs, plan, state,
                                               last_seq, parent_run_id, parent_step, depth)
                    VALUES (%s, %s, 'pending', %s, %s, %s, %s, %s, 1, %s, %s, %s)
                    ON CONFLICT (run_id) DO NOTHING
                    RETURNING run_id
                    """,
                    (
                        child["run_id"],
                        child["workflow"],
                        child["partition"],
                        Jsonb(child["definition"]),
                        Jsonb(child["inputs"]),
                        Jsonb(child["plan"]),
                        Jsonb({"workflow": child["workflow"]}),
                        child["parent_run_id"],
                        child["parent_step"],
                        child["depth"],
                    ),
                ).fetchone()
                if row is None:
                    continue
                conn.execute(
                    "INSERT INTO workflow_events (run_id, seq, type, data) VALUES (%s, 1, %s, %s)",
                    (child["run_id"], str(EventType.RUN_SUBMITTED), Jsonb({"workflow": child["workflow"]})),
                )
                created.append(child["run_id"])
        return created

    def run_outcomes(self, run_ids: Sequence[str]) -> dict[str, tuple[str, dict[str, Any]]]:
        """run id → (status, state) of the given runs that exist."""
        if not run_ids:
            return {}
        with self.connection() as conn:
            rows = conn.execute(
                "SELECT run_id, status, state FROM workflow_runs WHERE run_id = ANY(%s)", (list(run_ids),)
            ).fetchall()
        return {r["run_id"]: (r["status"], r["state"]) for r in rows}

    # -- coordinator: loading -------------------------------------------------------------------------

    def active_run_ids(self, partitions: Sequence[int]) -> list[str]:
        with self.connection() as conn:
            rows = conn.execute(
                "SELECT run_id FROM workflow_runs WHERE finished_at IS NULL AND partition = ANY(%s)"
                " ORDER BY created_at",
                (list(partitions),),
            ).fetchall()
        return [r["run_id"] for r in rows]

    def load_runs(self, run_ids: Sequence[str]) -> list[StoredRun]:
        if not run_ids:
            return []
        with self.connection() as conn:
            runs = conn.execute(
                "SELECT run_id, workflow, partition, definition, inputs, status, state, version, last_seq,"
                " created_at, parent_run_id, depth FROM workflow_runs WHERE run_id = ANY(%s)",
                (list(run_ids),),
            ).fetchall()
            steps = conn.execute(
                "SELECT run_id, step_key, step_id, status, attempt, output, error, due_at, detail"
                " FROM workflow_steps WHERE run_id = ANY(%s)",
                (list(run_ids),),
            ).fetchall()
        by_run: dict[str, dict[str, StepRecord]] = {}
        for s in steps:
            by_run.setdefault(s["run_id"], {})[s["step_key"]] = _step_from_row(s)
        return [
            StoredRun(
                run_id=r["run_id"],
                workflow=r["workflow"],
                partition=r["partition"],
                definition=r["definition"],
                inputs=r["inputs"],
                version=r["version"],
                created_at=r["created_at"],
                parent_run_id=r["parent_run_id"],
                depth=r["depth"],
                projection=RunProjection(
                    run_id=r["run_id"],
                    status=RunStatus(r["status"]),
                    state=r["state"],
                    steps=by_run.get(r["run_id"], {}),
                    last_seq=r["last_seq"],
                ),
            )
            for r in runs
        ]

    def pending_commands(self, partitions: Sequence[int]) -> list[dict[str, Any]]:
        with self.connection() as conn:
            return conn.execute(
                "SELECT c.command_id, c.run_id, c.command, c.payload FROM run_commands c"
                " JOIN workflow_runs r USING (run_id)"
                " WHERE c.processed_at IS NULL AND r.partition = ANY(%s) ORDER BY c.command_id",
                (list(partitions),),
            ).fetchall()

    # -- coordinator: the batched write -------------------------------------------------------------

    def commit_batch(
        self,
        writes: Iterable[RunWrite],
        *,
        owner: str,
        processed_commands: Sequence[int] = (),
        dead_letters: Sequence[dict[str, Any]] = (),
        hook_rows: Sequence[HookExecutionRow] = (),
        hook_counts: Sequence[HookCount] = (),
    ) -> None:
        """Persist one batch atomically; raises ConflictError if a run or partition changed hands,
        RunDataError if PostgreSQL (or the JSON encoder) refuses what a row holds."""
        writes = list(writes)
        events = [(w.run_id, e) for w in writes for e in w.events]
        steps = [(w.run_id, key, r) for w in writes for key, r in w.steps.items()]
        # BEGIN, one array-fed statement per table, the fence and COMMIT go out as one
        # pipeline: a batch costs a single round trip plus the commit's fsync.
        try:
            with self.connection() as conn, conn.pipeline(), conn.transaction(), conn.cursor() as cur:
                # Rows travel as one JSON document per table (orjson-encoded, expanded by
                # jsonb_to_recordset): far cheaper to build than per-row or array parameters.
                if events:
                    cur.execute(
                        "INSERT INTO workflow_events (run_id, seq, type, step_key, attempt, data)"
                        " SELECT run_id, seq, type, step_key, attempt, data FROM jsonb_to_recordset(%s::jsonb)"
                        " AS x(run_id text, seq bigint, type text, step_key text, attempt int, data jsonb)",
                        (
                            _rows_json(
                                {
                                    "run_id": run_id,
                                    "seq": e.seq,
                                    "type": e.type,
                                    "step_key": e.step,
                                    "attempt": e.attempt,
                                    "data": e.data,
                                }
                                for run_id, e in events
                            ),
                        ),
                    )
                if steps:
                    cur.execute(
                        """
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
                        """,
                        (
                            _rows_json(
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
                            ),
                        ),
                    )
                if writes:
                    # The lease check rides on the run update; steppe_fence (migration 0002) raises
                    # SQLSTATE 40001 when a run changed hands, and the whole batch rolls back.
                    cur.execute(
                        """
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
                        """,
                        (
                            _rows_json(
                                {
                                    "run_id": w.run_id,
                                    "expected": w.expected_version,
                                    "status": w.status,
                                    "state": w.state,
                                    "last_seq": w.last_seq,
                                    "finished": w.finished,
                                }
                                for w in writes
                            ),
                            owner,
                            len(writes),
                        ),
                    )
                if processed_commands:
                    cur.execute(
                        "UPDATE run_commands SET processed_at = now() WHERE command_id = ANY(%s)",
                        (list(processed_commands),),
                    )
                if dead_letters:
                    cur.executemany(
                        """
                        INSERT INTO dead_letters (run_id, step_key, attempt, queue, stream_id, delivery_count,
                                                  reason, error, payload, raw)
                        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
                        ON CONFLICT (queue, stream_id) DO NOTHING
                        """,
                        [
                            (
                                d.get("run_id"),
                                d.get("step_key"),
                                d.get("attempt"),
                                d["queue"],
                                d["stream_id"],
                                d.get("delivery_count", 0),
                                d["reason"],
                                d["error"],
                                Jsonb(d.get("payload")) if d.get("payload") is not None else None,
                                d.get("raw"),
                            )
                            for d in dead_letters
                        ],
                    )
                hook_executions.write(cur, hook_rows, hook_counts)
        except (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected) as e:
            raise ConflictError(f"a run changed hands or was changed by another writer; reloading ({e})") from e
        except DATA_ERRORS as e:
            detail = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise RunDataError(f"{type(e).__name__}: {detail}", cause=type(e).__name__) from e

    # -- read paths ---------------------------------------------------------------------------------

    def _require_run(self, conn: psycopg.Connection[dict[str, Any]], run_id: str) -> dict[str, Any]:
        row = conn.execute("SELECT * FROM workflow_runs WHERE run_id = %s", (run_id,)).fetchone()
        if row is None:
            raise RunNotFoundError(f"no run {run_id!r}; list runs with `steppe runs`")
        return row

    def get_run(self, run_id: str) -> dict[str, Any]:
        """The status document of docs/spec.md §8 (`status --json`)."""
        with self.connection() as conn:
            run = self._require_run(conn, run_id)
            steps = conn.execute(
                "SELECT step_key, step_id, status, attempt, output, error, due_at, detail, updated_at"
                " FROM workflow_steps WHERE run_id = %s ORDER BY step_key",
                (run_id,),
            ).fetchall()
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
            "plan": run["plan"],
            "definition": run["definition"],
        }

    def count_finished(self, run_ids: Sequence[str]) -> int:
        with self.connection() as conn:
            row = conn.execute(
                "SELECT count(*) AS n FROM workflow_runs WHERE run_id = ANY(%s) AND finished_at IS NOT NULL",
                (list(run_ids),),
            ).fetchone()
        return int(row["n"]) if row else 0

    def run_status(self, run_id: str) -> str:
        with self.connection() as conn:
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
        if status:
            clauses.append("status = %s")
            params.append(status)
        if workflow:
            clauses.append("workflow = %s")
            params.append(workflow)
        if created_after is not None:
            clauses.append("created_at >= %s")
            params.append(created_after)
        if created_before is not None:
            clauses.append("created_at < %s")
            params.append(created_before)
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        with self.connection() as conn:
            return conn.execute(
                "SELECT run_id, workflow, status, created_at, finished_at, parent_run_id"  # noqa: S608
                f" FROM workflow_runs {where} ORDER BY created_at DESC LIMIT %s",
                (*params, limit),
            ).fetchall()

    def events(self, run_id: str, *, after: int = 0) -> list[dict[str, Any]]:
        with self.connection() as conn:
            self._require_run(conn, run_id)
            return conn.execute(
                "SELECT seq, type, step_key, attempt, data, created_at FROM workflow_events"
                " WHERE run_id = %s AND seq > %s ORDER BY seq",
                (run_id, after),
            ).fetchall()

    def stored_projection(self, run_id: str) -> RunProjection:
        """The projection as stored (run row + step rows), for comparison with a fold of the log."""
        loaded = self.load_runs([run_id])
        if not loaded:
            raise RunNotFoundError(f"no run {run_id!r}")
        return loaded[0].projection


def _rows_json(rows: Iterable[dict[str, Any]]) -> str:
    try:
        return orjson.dumps(list(rows)).decode()
    except orjson.JSONEncodeError as e:  # an integer beyond 64 bits, nesting deeper than 254, …
        raise RunDataError(f"JSONEncodeError: {e}", cause="JSONEncodeError") from e


def events_from_rows(rows: Iterable[dict[str, Any]]) -> list[Event]:
    return [
        Event(seq=r["seq"], type=EventType(r["type"]), step=r["step_key"], attempt=r["attempt"], data=r["data"])
        for r in rows
    ]


def _step_from_row(row: dict[str, Any]) -> StepRecord:
    return StepRecord(
        step_id=row["step_id"],
        status=StepStatus(row["status"]),
        attempt=row["attempt"],
        output=row["output"],
        error=row["error"],
        due_at=to_epoch(row["due_at"]),
        detail=row["detail"],
    )


def _safe(url: str) -> str:
    """A URL with its password masked, for error messages."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else url
