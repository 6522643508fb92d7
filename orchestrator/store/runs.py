"""Run repository, the write path: new runs, the coordinator's loads and batched writes, run commands.

Every run is inserted by one function (`_insert_runs`: the row and its `run.submitted` event, the
same columns from the same row values); submissions, bulk submissions and child runs differ only in
what a conflict means. Where none is expected (a bulk submission) the rows go by COPY, else by one
INSERT … ON CONFLICT DO NOTHING statement. The
coordinator's hot path writes a batch of results in one transaction: events, touched step rows
with one multi-row upsert, run rows with an optimistic `version` check (a conflict means another
coordinator owns the run now), dead letters (`dead_letters.write`). The read paths of the CLI,
API and client are in `queries.py`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import orjson
import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb, set_json_dumps, set_json_loads
from psycopg_pool import ConnectionPool

from orchestrator.errors import ConflictError, DatabaseUnavailableError, RunDataError, RunNotFoundError
from orchestrator.settings import DURABILITY_SESSION_SETTINGS, Durability, display_url
from orchestrator.state import Event, EventType, RunProjection, RunStatus, StepRecord, StepStatus
from orchestrator.store import batch_write, hook_executions, signal_rows
from orchestrator.store import dead_letters as dead_letter_rows
from orchestrator.store.hook_executions import HookCount, HookExecutionRow
from patterns.dead_letter import DeadLetter


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


@dataclass(frozen=True, slots=True)
class NewRun:
    """A pending run to insert: a submission (with its idempotency key, if any), one of a bulk
    submission, or a child run (with its parent)."""

    run_id: str
    workflow: str
    partition: int
    definition: dict[str, Any]
    inputs: dict[str, Any]
    plan: dict[str, Any]
    idempotency_key: str | None = None
    parent_run_id: str | None = None
    parent_step: str | None = None
    depth: int = 0
    workflow_version: int | None = None  # the deployed version it runs (`steppe submit NAME@V`)


_NEW_RUN_FIELDS = tuple(f.name for f in fields(NewRun))
# What an insert conflicting with an existing row means: a repeated submission (its idempotency key),
# a child run a coordinator creates again after a crash (its run id), or nothing expected (an error).
Conflict = Literal["idempotency_key", "run_id"] | None
_ON_CONFLICT = {
    None: "",
    # The unique index is partial (migration 0010): the conflict target names its predicate.
    "idempotency_key": "ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING",
    "run_id": "ON CONFLICT (run_id) DO NOTHING",
}
# The run rows and their `run.submitted` events in one statement; returns the ids inserted.
_INSERT_RUNS = """
WITH created AS (
    INSERT INTO workflow_runs (run_id, workflow, status, partition, definition, inputs, plan, state, last_seq,
                               idempotency_key, parent_run_id, parent_step, depth, workflow_version)
    SELECT run_id, workflow, 'pending', partition, definition, inputs, plan,
           jsonb_build_object('workflow', workflow), 1, idempotency_key, parent_run_id, parent_step, depth,
           workflow_version
    FROM jsonb_to_recordset(%s::jsonb) AS x(run_id text, workflow text, partition int, definition jsonb,
         inputs jsonb, plan jsonb, idempotency_key text, parent_run_id text, parent_step text, depth int,
         workflow_version int)
    {on_conflict}
    RETURNING run_id, workflow),
submitted AS (
    INSERT INTO workflow_events (run_id, seq, type, data)
    SELECT run_id, 1, %s, jsonb_build_object('workflow', workflow) FROM created)
SELECT run_id FROM created
"""
# Runs per INSERT statement (child runs): bounds the JSON document a statement carries.
INSERT_CHUNK = 500


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
    """A run row as the coordinator needs it.

    The definition comes as PostgreSQL's text of the jsonb (one text for one content: jsonb keeps
    its keys sorted and deduplicated), decoded only on demand: the coordinator compiles a definition
    once per text (`RunLoader`), so the runs of one workflow cost no JSON decoding of it."""

    run_id: str
    workflow: str
    partition: int
    definition_text: str
    inputs: dict[str, Any]
    version: int
    projection: RunProjection
    created_at: dt.datetime | None = None
    parent_run_id: str | None = None
    depth: int = 0

    @property
    def definition(self) -> dict[str, Any]:
        value: dict[str, Any] = orjson.loads(self.definition_text)
        return value


def session_options(url: str, durability: Durability) -> str | None:
    """The libpq `options` the engine's sessions start with under `durability` (STEPPE_DURABILITY):
    the URL's own `options` followed by the mode's settings (`-c synchronous_commit=off` for
    balanced), or None when the mode adds nothing (strict: the server's settings apply).

    Set at connection start, so every session of the pool has it from its first transaction and
    after every reconnect, at no extra round trip; the server's configuration is not changed."""
    settings = DURABILITY_SESSION_SETTINGS[durability]
    if not settings:
        return None
    own = str(conninfo_to_dict(url).get("options") or "")
    return " ".join([*([own] if own else []), *(f"-c {name}={value}" for name, value in settings.items())])


class RunStore:
    """PostgreSQL access for runs, steps, events, commands and dead letters.

    `durability` (STEPPE_DURABILITY, orchestrator/settings.py) sets how its sessions commit."""

    def __init__(
        self, url: str, *, pool_size: int = 4, connect_timeout: int = 5, durability: Durability = "strict"
    ) -> None:
        self.url = url
        self.durability = durability
        kwargs: dict[str, Any] = {"connect_timeout": connect_timeout, "row_factory": dict_row}
        options = session_options(url, durability)
        if options is not None:
            kwargs["options"] = options
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            kwargs=kwargs,
            open=False,
            # No per-checkout health check (a round trip per batch): a broken connection
            # surfaces as DatabaseUnavailableError, the coordinator reloads, the pool reconnects.
        )

    def open(self, *, wait_timeout: float = 10.0) -> None:
        try:
            self._pool.open(wait=True, timeout=wait_timeout)
        except psycopg.Error as e:  # pool timeouts are psycopg errors too
            raise DatabaseUnavailableError(
                f"cannot connect to PostgreSQL at {display_url(self.url)} ({e}); start one with `steppe dev up` "
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
            raise DatabaseUnavailableError(f"PostgreSQL at {display_url(self.url)} failed: {e}") from e

    # -- submission ----------------------------------------------------------------------------------

    def create_run(self, run: NewRun) -> tuple[str, bool]:
        """Insert a pending run and its `run.submitted` event; returns (run_id, created), the id of
        the run submitted before with the same idempotency key when there is one."""
        with self.connection() as conn, conn.transaction():
            if _insert_runs(conn, [run], on_conflict="idempotency_key"):
                return run.run_id, True
            existing = conn.execute(
                "SELECT run_id FROM workflow_runs WHERE idempotency_key = %s", (run.idempotency_key,)
            ).fetchone()
            assert existing is not None
            return str(existing["run_id"]), False

    def create_runs(self, runs: Sequence[NewRun]) -> None:
        """Insert many pending runs (no idempotency keys) in one transaction."""
        with self.connection() as conn, conn.transaction():
            _insert_runs(conn, runs, on_conflict=None)

    def create_child_runs(self, children: Sequence[NewRun]) -> list[str]:
        """Insert pending child runs that do not exist yet (a coordinator may repeat itself
        after a crash); returns the ids actually created."""
        if not children:
            return []
        with self.connection() as conn, conn.transaction():
            return _insert_runs(conn, children, on_conflict="run_id")

    def add_command(self, run_id: str, command: str, payload: dict[str, Any] | None = None) -> int:
        with self.connection() as conn, conn.transaction():
            require_run(conn, run_id)
            row = conn.execute(
                "INSERT INTO run_commands (run_id, command, payload) VALUES (%s, %s, %s) RETURNING command_id",
                (run_id, command, Jsonb(payload or {})),
            ).fetchone()
            assert row is not None
            return int(row["command_id"])

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
                "SELECT run_id, workflow, partition, definition::text AS definition, inputs, status, state, version,"
                " last_seq, created_at, parent_run_id, depth FROM workflow_runs WHERE run_id = ANY(%s)",
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
                definition_text=r["definition"],
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
        dead_letters: Sequence[DeadLetter] = (),
        hook_rows: Sequence[HookExecutionRow] = (),
        hook_counts: Sequence[HookCount] = (),
    ) -> None:
        """Persist one batch atomically; raises ConflictError if a run or partition changed hands,
        RunDataError if PostgreSQL (or the JSON encoder) refuses what a row holds."""
        writes = list(writes)
        events = [(w.run_id, e) for w in writes for e in w.events]
        steps = [(w.run_id, key, r) for w in writes for key, r in w.steps.items()]
        # BEGIN, one array-fed statement per table (batch_write.py), the fence and COMMIT go out as
        # one pipeline: a batch costs a single round trip plus the commit's fsync.
        try:
            with self.connection() as conn, conn.pipeline(), conn.transaction(), conn.cursor() as cur:
                batch_write.insert_events(cur, events)
                batch_write.upsert_steps(cur, steps)
                batch_write.update_runs(cur, writes, owner)
                batch_write.mark_commands_processed(cur, processed_commands)
                dead_letter_rows.write(cur, dead_letters)
                hook_executions.write(cur, hook_rows, hook_counts)
                signal_rows.mark_consumed(cur, events)  # signals that ended a wait (docs/spec.md §12.1)
        except (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected) as e:
            raise ConflictError(f"a run changed hands or was changed by another writer; reloading ({e})") from e
        except DATA_ERRORS as e:
            detail = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise RunDataError(f"{type(e).__name__}: {detail}", cause=type(e).__name__) from e


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


def require_run(conn: psycopg.Connection[dict[str, Any]], run_id: str) -> dict[str, Any]:
    """The run's row; RunNotFoundError (saying how to list runs) when there is none."""
    row = conn.execute("SELECT * FROM workflow_runs WHERE run_id = %s", (run_id,)).fetchone()
    if row is None:
        raise RunNotFoundError(f"no run {run_id!r}; list runs with `steppe runs`")
    return row


def _insert_runs(
    conn: psycopg.Connection[dict[str, Any]], runs: Sequence[NewRun], *, on_conflict: Conflict
) -> list[str]:
    """Insert `runs` (pending, each with its `run.submitted` event); returns the ids inserted, which
    leave out those `on_conflict` skipped. A value orjson cannot encode raises its TypeError as
    before; one PostgreSQL refuses (a NUL), psycopg's DataError.

    With no conflict to skip, the rows and events go by COPY: half the server CPU of the statement
    below for a bulk submission (no JSON document to expand, batched heap inserts)."""
    if on_conflict is None:
        return _copy_runs(conn, runs)
    sql = _INSERT_RUNS.format(on_conflict=_ON_CONFLICT[on_conflict])
    created: list[str] = []
    for start in range(0, len(runs), INSERT_CHUNK):
        chunk = runs[start : start + INSERT_CHUNK]
        rows = _dumps([{name: getattr(run, name) for name in _NEW_RUN_FIELDS} for run in chunk])
        created += [r["run_id"] for r in conn.execute(sql, (rows, str(EventType.RUN_SUBMITTED))).fetchall()]
    return created


# COPY writes the columns `_INSERT_RUNS` writes, named once by NewRun's fields (its dicts as JSON).
_JSON_FIELDS = frozenset(f.name for f in fields(NewRun) if str(f.type).startswith("dict"))
_COPY_RUNS = f"COPY workflow_runs (status, state, last_seq, {', '.join(_NEW_RUN_FIELDS)}) FROM STDIN"
_COPY_SUBMITTED = "COPY workflow_events (run_id, seq, type, data) FROM STDIN"


def _copy_runs(conn: psycopg.Connection[dict[str, Any]], runs: Sequence[NewRun]) -> list[str]:
    """The rows `_INSERT_RUNS` writes (status pending, state {workflow}, last_seq 1, event seq 1), by COPY."""
    submitted = str(EventType.RUN_SUBMITTED)
    with conn.cursor() as cur:
        with cur.copy(_COPY_RUNS) as copy:
            for r in runs:
                values = [getattr(r, name) for name in _NEW_RUN_FIELDS]
                row = [
                    _dumps(v) if name in _JSON_FIELDS else v for name, v in zip(_NEW_RUN_FIELDS, values, strict=True)
                ]
                copy.write_row(("pending", _dumps({"workflow": r.workflow}), 1, *row))
        with cur.copy(_COPY_SUBMITTED) as copy:
            for r in runs:
                copy.write_row((r.run_id, 1, submitted, _dumps({"workflow": r.workflow})))
    return [r.run_id for r in runs]
