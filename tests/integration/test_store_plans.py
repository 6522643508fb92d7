"""The coordinator's batch statements stay prepared with one plan as the tables grow (issue 21).

A prepared statement whose first custom plans were costed on young tables compares every later generic
plan with that stale average; the batch's run update lost that comparison once `workflow_runs` grew, and
was planned again on every batch. It now runs with a generic plan (batch_write.update_runs)."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from orchestrator.dev import PostgresServer
from orchestrator.state import Event, EventType, RunStatus, StepRecord, StepStatus
from orchestrator.store.db import upgrade
from orchestrator.store.runs import NewRun, RunStore, RunWrite

pytestmark = pytest.mark.integration

OWNER = "coordinator-plans"


@pytest.fixture
def fresh_database(postgres_server: PostgresServer) -> Iterator[str]:
    """A database of its own: its tables start empty, as a new deployment's do."""
    name = f"steppe_plans_{secrets.token_hex(4)}"
    postgres_server.create_database(name)
    upgrade(postgres_server.owner_url(name))
    yield name
    postgres_server.drop_database(name)


def new_run(partition: int = 0) -> NewRun:
    return NewRun(
        run_id=f"r-p-{uuid.uuid4().hex[:12]}",
        workflow="w",
        partition=partition,
        definition={"name": "w", "steps": [{"id": "a", "handler": "h.a"}]},
        inputs={},
        plan={"waves": [["a"]]},
    )


def test_the_batch_run_update_is_not_planned_again_per_batch_as_workflow_runs_grows(
    postgres_server: PostgresServer, fresh_database: str
) -> None:
    store = RunStore(postgres_server.app_url(fresh_database), pool_size=1)  # one session: one prepared statement
    store.open()
    try:
        with store.connection() as conn:
            conn.execute(
                "INSERT INTO coordinator_leases (partition, owner, expires_at) VALUES (0, %s, now() + interval '1 hour')",
                (OWNER,),
            )
        run = new_run()
        store.create_runs([run])
        version, seq = 0, 1

        def write_batch() -> None:
            nonlocal version, seq
            seq += 1
            step = StepRecord(step_id="a", status=StepStatus.DISPATCHED, attempt=seq)
            event = Event(seq=seq, type=EventType.STEP_DISPATCHED, step="a", attempt=seq, data={})
            write = RunWrite(
                run_id=run.run_id,
                expected_version=version,
                status=RunStatus.RUNNING,
                state={"workflow": "w"},
                last_seq=seq,
                events=[event],
                steps={"a": step},
            )
            store.commit_batch([write], owner=OWNER)
            version += 1

        for _ in range(10):  # prepared after 5 executions, custom plans costed on a one-row table
            write_batch()
        store.create_runs([new_run(partition=1) for _ in range(20_000)])
        with psycopg.connect(postgres_server.owner_url(fresh_database), autocommit=True) as owner:
            owner.execute("ANALYZE workflow_runs")  # what autovacuum does as the table grows
        for _ in range(10):
            write_batch()
        with store.connection() as conn:
            plans = conn.execute(
                "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE statement LIKE %s",
                ("%steppe_fence%",),
            ).fetchone()
    finally:
        store.close()
    assert plans is not None, "the run update was never prepared"
    assert plans["generic_plans"] >= 10, f"the run update was planned per batch: {plans}"
