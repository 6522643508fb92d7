"""The store's one insert path per row kind (issue 15): runs (submission, bulk, child runs) and dead
letters (the coordinator's batch and the stream merge), against the real PostgreSQL."""

from __future__ import annotations

import datetime as dt
import random
import uuid
from collections.abc import Iterator

import pytest

from orchestrator.store.dead_letters import DeadLetterStore
from orchestrator.store.queries import RunQueries
from orchestrator.store.runs import INSERT_CHUNK, NewRun, RunStore
from orchestrator.wire import FIELD
from patterns.dead_letter import DeadLetter, DeadLetterReason

pytestmark = pytest.mark.integration


@pytest.fixture
def store(database_url: str) -> Iterator[RunStore]:
    store = RunStore(database_url)
    store.open()
    yield store
    store.close()


def a_run(**fields: object) -> NewRun:
    values: dict[str, object] = {
        "run_id": f"r-w-{uuid.uuid4().hex[:10]}",
        "workflow": "w",
        "partition": 0,
        "definition": {"name": "w", "steps": [{"id": "a", "handler": "h.a"}]},
        "inputs": {"n": 1},
        "plan": {"waves": [["a"]]},
        **fields,
    }
    return NewRun(**values)  # type: ignore[arg-type]


def submitted_events(store: RunStore, run_id: str) -> list[tuple[int, str, object]]:
    return [(e["seq"], e["type"], e["data"]) for e in RunQueries(store).events(run_id)]


def test_a_submission_is_a_pending_row_with_its_submitted_event(store: RunStore) -> None:
    run = a_run(inputs={"text": "é ✓", "deep": {"list": [1, 2.5, None, True]}})
    assert store.create_run(run) == (run.run_id, True)
    doc = RunQueries(store).get_run(run.run_id)
    assert (doc["status"], doc["workflow"], doc["inputs"], doc["plan"]) == ("pending", "w", run.inputs, run.plan)
    assert doc["definition"] == run.definition
    assert submitted_events(store, run.run_id) == [(1, "run.submitted", {"workflow": "w"})]
    [stored] = store.load_runs([run.run_id])
    assert (stored.version, stored.projection.last_seq, stored.projection.state) == (0, 1, {"workflow": "w"})


def test_runs_of_one_definition_load_with_one_definition_text(store: RunStore) -> None:
    """The coordinator compiles a definition once per stored text: the same content written with its
    keys in another order must load as the same text, and that text must decode to the definition."""
    definition = {"name": "w", "steps": [{"id": "a", "handler": "h.a", "with": {"x": 1, "b": [1, 2]}}]}
    reordered = {"steps": [{"with": {"b": [1, 2], "x": 1}, "handler": "h.a", "id": "a"}], "name": "w"}
    first, second, other = a_run(definition=definition), a_run(definition=reordered), a_run()
    for run in (first, second, other):
        store.create_run(run)
    loaded = {r.run_id: r for r in store.load_runs([first.run_id, second.run_id, other.run_id])}
    assert loaded[first.run_id].definition_text == loaded[second.run_id].definition_text
    assert loaded[first.run_id].definition == definition
    assert loaded[other.run_id].definition_text != loaded[first.run_id].definition_text
    assert loaded[other.run_id].definition == other.definition


def test_a_repeated_idempotency_key_returns_the_first_run(store: RunStore) -> None:
    key = f"k-{uuid.uuid4().hex}"
    first = a_run(idempotency_key=key)
    assert store.create_run(first) == (first.run_id, True)
    again = a_run(idempotency_key=key)
    assert store.create_run(again) == (first.run_id, False)
    with pytest.raises(Exception, match="no run"):
        RunQueries(store).run_status(again.run_id)  # nothing of the second was written
    assert len(submitted_events(store, first.run_id)) == 1


def test_child_runs_are_created_once_however_often_a_coordinator_asks(store: RunStore) -> None:
    parent = a_run()
    store.create_run(parent)
    children = [a_run(parent_run_id=parent.run_id, parent_step=f"c{i}", depth=1) for i in range(3)]
    assert sorted(store.create_child_runs(children[:2])) == sorted(c.run_id for c in children[:2])
    assert store.create_child_runs(children) == [children[2].run_id]  # after a crash: the missing one only
    assert store.create_child_runs([]) == []
    for child in children:
        assert submitted_events(store, child.run_id) == [(1, "run.submitted", {"workflow": "w"})]
        assert RunQueries(store).get_run(child.run_id)["parent_run_id"] == parent.run_id
    with store.connection() as conn:
        rows = conn.execute(
            "SELECT parent_step, depth FROM workflow_runs WHERE parent_run_id = %s ORDER BY parent_step",
            (parent.run_id,),
        ).fetchall()
    assert [(r["parent_step"], r["depth"]) for r in rows] == [("c0", 1), ("c1", 1), ("c2", 1)]


def test_a_bulk_submission_inserts_every_run(store: RunStore) -> None:
    runs = [a_run(inputs={"i": i}, partition=i % 4) for i in range(INSERT_CHUNK * 2 + 7)]
    store.create_runs(runs)
    with store.connection() as conn:
        row = conn.execute(
            "SELECT count(*) AS runs, count(*) FILTER (WHERE e.seq = 1) AS events FROM workflow_runs r"
            " LEFT JOIN workflow_events e USING (run_id) WHERE r.run_id = ANY(%s)",
            ([r.run_id for r in runs],),
        ).fetchone()
    assert row is not None
    assert (row["runs"], row["events"]) == (len(runs), len(runs))
    assert RunQueries(store).get_run(runs[-1].run_id)["inputs"] == {"i": len(runs) - 1}


def stored_row(store: RunStore, run_id: str) -> dict[str, object]:
    with store.connection() as conn:
        row = conn.execute(
            "SELECT workflow, status, partition, definition, inputs, plan, state, last_seq, version, idempotency_key,"
            " parent_run_id, parent_step, depth, finished_at FROM workflow_runs WHERE run_id = %s",
            (run_id,),
        ).fetchone()
    assert row is not None
    return dict(row)


def test_a_bulk_submission_writes_the_rows_a_single_submission_writes(store: RunStore) -> None:
    # create_runs goes by COPY, create_run by the INSERT statement: the same row and event either way.
    fields = {"inputs": {"text": "é ✓\n\t\\", "deep": [1, 2.5, None]}, "partition": 3}
    single, bulk = a_run(**fields), a_run(**fields)
    store.create_run(single)
    store.create_runs([bulk])
    assert stored_row(store, bulk.run_id) == stored_row(store, single.run_id)
    assert submitted_events(store, bulk.run_id) == submitted_events(store, single.run_id)
    parent = a_run()
    store.create_run(parent)
    child_fields = {"parent_run_id": parent.run_id, "parent_step": "c", "depth": 1}
    child, copied = a_run(**child_fields), a_run(**child_fields)
    store.create_child_runs([child])
    store.create_runs([copied])
    assert stored_row(store, copied.run_id) == stored_row(store, child.run_id)


def test_child_runs_over_several_statements_are_created_once(store: RunStore) -> None:
    parent = a_run()
    store.create_run(parent)
    children = [a_run(parent_run_id=parent.run_id, parent_step=f"c{i}", depth=1) for i in range(INSERT_CHUNK * 2 + 3)]
    assert len(store.create_child_runs(children[: INSERT_CHUNK + 1])) == INSERT_CHUNK + 1
    again = store.create_child_runs(children)
    assert sorted(again) == sorted(c.run_id for c in children[INSERT_CHUNK + 1 :])


def test_a_bulk_submission_with_a_bad_row_writes_nothing(store: RunStore) -> None:
    runs = [a_run(), a_run(inputs={"s": "a\x00b"})]  # PostgreSQL refuses NUL in JSONB
    with pytest.raises(Exception, match="Unicode"):
        store.create_runs(runs)
    with pytest.raises(Exception, match="no run"):
        RunQueries(store).run_status(runs[0].run_id)


def test_the_coordinators_dead_letter_is_completed_by_the_stream_merge(store: RunStore) -> None:
    number = random.randint(10_000, 1_000_000)
    with store.connection() as conn:
        conn.execute("INSERT INTO coordinator_leases (partition, owner) VALUES (%s, 'owner')", (number,))
    run = a_run(partition=number)
    store.create_run(run)
    stream_id = f"{int(dt.datetime.now(dt.UTC).timestamp() * 1000)}-0"
    row = DeadLetter(
        run_id=run.run_id,
        step_key="a",
        attempt=1,
        queue="default",
        stream_id=stream_id,
        delivery_count=6,
        reason=DeadLetterReason.MAX_DELIVERIES,
        error="delivered 6 times",
    )
    store.commit_batch([], owner="owner", dead_letters=[row, row])  # written twice: one row
    dead = DeadLetterStore(store)
    [stored] = dead.find(run_id=run.run_id)
    assert (stored["reason"], stored["raw"], stored["status"]) == ("MaxDeliveriesExceeded", None, "dead")
    entry = DeadLetter.from_stream_entry(
        f"{stream_id[:-2]}-1", {b"id": stream_id.encode(), b"queue": b"default", b"reason": b"x", FIELD: b"{}"}
    )
    assert dead.merge([entry]) == 1
    assert dead.merge([entry]) == 0  # complete now: nothing more to write
    [merged] = dead.find(run_id=run.run_id)
    assert (merged["dead_letter_id"], merged["raw"], merged["reason"]) == (
        stored["dead_letter_id"],
        "{}",
        stored["reason"],
    )


def test_a_reason_filter_finds_the_rows_older_versions_spelled_otherwise(store: RunStore) -> None:
    run_id = f"r-old-{uuid.uuid4().hex[:8]}"
    with store.connection() as conn:
        conn.execute(
            "INSERT INTO dead_letters (run_id, queue, stream_id, delivery_count, reason, error) VALUES"
            " (%s, 'q', %s, 0, 'max_deliveries', 'old'), (%s, 'q', %s, 0, 'MaxDeliveriesExceeded', 'new'),"
            " (%s, 'q', %s, 0, 'TrimmedEntry', 'other')",
            (run_id, f"{run_id}/1", run_id, f"{run_id}/2", run_id, f"{run_id}/3"),
        )
    dead = DeadLetterStore(store)
    for spelling in ("MaxDeliveriesExceeded", "max_deliveries", "max-deliveries"):
        assert sorted(r["error"] for r in dead.find(run_id=run_id, reason=spelling)) == ["new", "old"], spelling
    assert [r["error"] for r in dead.find(run_id=run_id, reason="TrimmedEntry")] == ["other"]
    assert dead.find(run_id=run_id, reason="NoSuchReason") == []
