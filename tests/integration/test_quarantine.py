"""A batch refused for one run's data is split: the other runs commit, that run is failed (issue 14)."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator

import pytest

from orchestrator.errors import RunDataError
from orchestrator.quarantine import BatchSplitter
from orchestrator.state import Event, EventType, RunStatus, StepRecord, StepStatus, fold
from orchestrator.store.queries import RunQueries, events_from_rows
from orchestrator.store.runs import NewRun, RunStore, RunWrite
from patterns.dead_letter import DeadLetter, DeadLetterReason

pytestmark = pytest.mark.integration


@pytest.fixture
def store(database_url: str) -> Iterator[RunStore]:
    store = RunStore(database_url)
    store.open()
    yield store
    store.close()


@pytest.fixture
def partition(store: RunStore) -> int:
    """A partition of this test's own, leased to `owner`."""
    number = random.randint(10_000, 1_000_000)
    with store.connection() as conn:
        conn.execute("INSERT INTO coordinator_leases (partition, owner) VALUES (%s, 'owner')", (number,))
    return number


def new_run(store: RunStore, partition: int) -> str:
    run_id, _ = store.create_run(
        NewRun(
            run_id=f"r-q-{uuid.uuid4().hex[:8]}", workflow="w", partition=partition, definition={}, inputs={}, plan={}
        )
    )
    return run_id


def a_write(run_id: str, *, output: object = None, due_at: float | None = None) -> RunWrite:
    """run.started, then step `a` succeeded with `output` (or scheduled for a retry at `due_at`)."""
    if due_at is None:
        event = Event(seq=3, type=EventType.STEP_SUCCEEDED, step="a", attempt=1, data={"output": output})
        record = StepRecord(step_id="a", status=StepStatus.SUCCEEDED, attempt=1, output=output)
    else:
        event = Event(seq=3, type=EventType.STEP_RETRY_SCHEDULED, step="a", attempt=1, data={"due_at": due_at})
        record = StepRecord(step_id="a", status=StepStatus.RETRY_SCHEDULED, attempt=1, due_at=due_at)
    return RunWrite(
        run_id=run_id,
        expected_version=0,
        status=RunStatus.RUNNING,
        state={"workflow": "w"},
        last_seq=3,
        events=[Event(seq=2, type=EventType.RUN_STARTED), event],
        steps={"a": record},
    )


def assert_fold_matches(store: RunStore, run_id: str) -> None:
    folded = fold(run_id, events_from_rows(RunQueries(store).events(run_id)))
    assert folded.to_json() == RunQueries(store).stored_projection(run_id).to_json()


def test_the_runs_at_fault_are_failed_with_the_reason_and_the_others_commit(store: RunStore, partition: int) -> None:
    innocent = [new_run(store, partition) for _ in range(2)]
    late, huge_int, nul = (new_run(store, partition) for _ in range(3))
    writes = [
        a_write(innocent[0], output={"ok": 1}),
        a_write(late, due_at=1e300),  # a retry due after year 294276: DatetimeFieldOverflow
        a_write(huge_int, output={"n": 2**70}),  # beyond 64 bits: the JSON encoder refuses it
        a_write(nul, output="a\x00b"),  # past the wire's escaping: jsonb refuses \u0000
        a_write(innocent[1], output=[1, 2]),
    ]
    with pytest.raises(RunDataError):
        store.commit_batch(writes, owner="owner")
    assert all(len(RunQueries(store).events(r)) == 1 for r in [*innocent, late, huge_int, nul])  # nothing committed

    splitter = BatchSplitter(store=store, owner="owner")
    assert splitter.split(writes)
    assert splitter.failed == [late, huge_int, nul]
    for run_id in innocent:
        doc = RunQueries(store).get_run(run_id)
        assert doc["status"] == "running"
        assert doc["steps"]["a"]["status"] == "succeeded"
        assert_fold_matches(store, run_id)
    hints = {
        late: ("DatetimeFieldOverflow", "shorten the step's retry delays and timeouts"),
        huge_int: ("JSONEncodeError", "an integer beyond 64 bits"),
        nul: ("UntranslatableCharacter", "a NUL character"),
    }
    for run_id, (cause, hint) in hints.items():
        doc = RunQueries(store).get_run(run_id)
        assert doc["status"] == "failed"
        assert doc["finished_at"] is not None
        error = doc["error"]
        assert error["type"] == "RunDataError"
        assert error["cause"] == cause
        assert error["retryable"] is False
        assert "could not store this run's changes (steps: a)" in error["message"]
        assert hint in error["message"]
        assert "submit it again" in error["message"]
        events = RunQueries(store).events(run_id)
        assert [e["type"] for e in events] == ["run.submitted", "run.failed"]
        assert events[-1]["data"] == {"error": error}
        assert_fold_matches(store, run_id)

    # Never twice: a finished run is not failed again.
    assert not splitter.fail(late, {"type": "X", "message": "again"})
    assert len(RunQueries(store).events(late)) == 2


def test_the_steps_still_in_flight_are_cancelled_in_the_log(store: RunStore, partition: int) -> None:
    run_id = new_run(store, partition)
    dispatched = RunWrite(
        run_id=run_id,
        expected_version=0,
        status=RunStatus.RUNNING,
        state={"workflow": "w"},
        last_seq=4,
        events=[
            Event(seq=2, type=EventType.RUN_STARTED),
            Event(seq=3, type=EventType.STEP_DISPATCHED, step="a", attempt=1),
            Event(seq=4, type=EventType.STEP_RETRY_SCHEDULED, step="b", attempt=1, data={"due_at": 2e9}),
        ],
        steps={
            "a": StepRecord(step_id="a", status=StepStatus.DISPATCHED, attempt=1),
            "b": StepRecord(
                step_id="b", status=StepStatus.RETRY_SCHEDULED, attempt=1, due_at=2e9, detail={"failures": 1}
            ),
        },
    )
    store.commit_batch([dispatched], owner="owner")
    refused = a_write(run_id, output={"n": 2**64})
    refused.expected_version, refused.events = 1, [Event(seq=5, type=EventType.STEP_SUCCEEDED, step="a", attempt=1)]
    splitter = BatchSplitter(store=store, owner="owner")
    assert splitter.split([refused])
    assert splitter.failed == [run_id]
    doc = RunQueries(store).get_run(run_id)
    assert doc["status"] == "failed"
    assert {k: (s["status"], s["due_at"]) for k, s in doc["steps"].items()} == {
        "a": ("cancelled", None),
        "b": ("cancelled", None),
    }
    types = [(e["type"], e["step_key"]) for e in RunQueries(store).events(run_id)][-3:]
    assert types == [("step.cancelled", "a"), ("step.cancelled", "b"), ("run.failed", None)]
    assert_fold_matches(store, run_id)


def test_a_run_of_another_coordinator_is_left_alone(store: RunStore, partition: int) -> None:
    run_id = new_run(store, partition)
    splitter = BatchSplitter(store=store, owner="someone-else")
    assert not splitter.fail(run_id, {"type": "X", "message": "not mine"})
    assert RunQueries(store).run_status(run_id) == "pending"
    # Its batch conflicts instead (the lease fence): the split says so and writes nothing.
    assert not splitter.split([a_write(run_id, output=1)])
    assert len(RunQueries(store).events(run_id)) == 1


def test_processed_commands_are_kept_when_the_rows_of_no_run_are_refused(store: RunStore, partition: int) -> None:
    run_id = new_run(store, partition)
    command = store.add_command(run_id, "cancel")
    refused = DeadLetter(queue="q\x00", stream_id="1-1", reason=DeadLetterReason.UNKNOWN, error="e")
    splitter = BatchSplitter(store=store, owner="owner")
    assert splitter.split([], processed_commands=[command], dead_letters=[refused])
    assert splitter.failed == []
    assert store.pending_commands([partition]) == []
