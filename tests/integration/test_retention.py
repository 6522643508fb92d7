"""Retention against the real PostgreSQL, as the DML-only app role: `steppe_prune_finished_runs`
deletes only terminal runs finished before the cutoff (with their child runs and every row of
theirs), one pruner at a time, and the event log stays append-only outside it."""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import errors

from orchestrator.dev import PostgresServer
from orchestrator.retention import Pruner
from orchestrator.settings import RetentionSettings
from orchestrator.store import retention
from orchestrator.store.db import upgrade
from orchestrator.store.runs import NewRun, RunStore
from tests.helpers import assert_eventually

pytestmark = pytest.mark.integration

NOW = dt.datetime.now(dt.UTC)
OLD = NOW - dt.timedelta(days=40)
CUTOFF = NOW - dt.timedelta(days=30)


@pytest.fixture
def migrated(postgres_server: PostgresServer) -> Iterator[str]:
    """A database of its own (prunes are database-wide), migrated by its owner; yields its name."""
    name = f"steppe_ret_{uuid.uuid4().hex[:8]}"
    postgres_server.create_database(name)
    upgrade(postgres_server.owner_url(name))
    yield name
    postgres_server.drop_database(name)


@pytest.fixture
def store(postgres_server: PostgresServer, migrated: str) -> Iterator[RunStore]:
    store = RunStore(postgres_server.app_url(migrated))
    store.open()
    yield store
    store.close()


def add_run(
    store: RunStore,
    *,
    status: str = "running",
    finished_at: dt.datetime | None = None,
    parent: str | None = None,
    events: int = 3,
) -> str:
    """A run with `events` events after its submission, a step, a hook execution and a dead letter."""
    run_id = f"r-{uuid.uuid4().hex[:10]}"
    store.create_run(
        NewRun(
            run_id=run_id,
            workflow="w",
            partition=0,
            definition={"name": "w", "steps": [{"id": "a", "handler": "h.a"}]},
            inputs={},
            plan={"waves": [["a"]]},
            parent_run_id=parent,
            parent_step="a" if parent else None,
            depth=1 if parent else 0,
        )
    )
    with store.connection() as conn, conn.transaction():
        if status != "pending":
            conn.execute(
                "UPDATE workflow_runs SET status = %s, finished_at = %s WHERE run_id = %s",
                (status, finished_at, run_id),
            )
        for seq in range(2, events + 2):
            conn.execute(
                "INSERT INTO workflow_events (run_id, seq, type, step_key, attempt) VALUES (%s, %s, 'step.x', 'a', 1)",
                (run_id, seq),
            )
        conn.execute(
            "INSERT INTO workflow_steps (run_id, step_key, step_id, status) VALUES (%s, 'a', 'a', 'succeeded')",
            (run_id,),
        )
        conn.execute(
            "INSERT INTO hook_executions (run_id, step_key, hook_id, partition, attempt, status, message)"
            " VALUES (%s, 'hook:1', 1, 0, 1, 'succeeded', '{}')",
            (run_id,),
        )
        conn.execute(
            "INSERT INTO dead_letters (run_id, step_key, queue, stream_id, delivery_count, reason, error)"
            " VALUES (%s, 'a', 'default', %s, 1, 'crash', 'x')",
            (run_id, run_id),
        )
        conn.execute("INSERT INTO run_commands (run_id, command, processed_at) VALUES (%s, 'cancel', now())", (run_id,))
    return run_id


def rows_of(store: RunStore, run_id: str) -> dict[str, int]:
    return retention.row_counts(store, [run_id]).counts()


FULL = {"runs": 1, "steps": 1, "events": 4, "hook_executions": 1, "commands": 1, "dead_letters": 1}
GONE = dict.fromkeys(FULL, 0)


def test_only_finished_runs_older_than_the_cutoff_go_with_their_children(store: RunStore) -> None:
    old_done = [add_run(store, status=s, finished_at=OLD) for s in ("succeeded", "failed", "cancelled")]
    old_parent = add_run(store, status="succeeded", finished_at=OLD)
    old_child = add_run(store, status="succeeded", finished_at=OLD, parent=old_parent)
    grandchild = add_run(store, status="failed", finished_at=OLD, parent=old_child)
    recent = add_run(store, status="succeeded", finished_at=NOW - dt.timedelta(days=1))
    active = [add_run(store, status="running"), add_run(store, status="pending")]
    # A finished, old parent whose child is still running is kept, child and all.
    busy_parent = add_run(store, status="cancelled", finished_at=OLD)
    busy_child = add_run(store, status="running", parent=busy_parent)
    # A finished, old run with a retry waiting for its coordinator is kept.
    retried = add_run(store, status="failed", finished_at=OLD)
    store.add_command(retried, "retry")
    # A child run is never pruned on its own, however old, while its parent is kept.
    kept_parent_child = add_run(store, status="succeeded", finished_at=OLD, parent=recent)

    expected = [*old_done, old_parent]
    trees = retention.prunable_runs(store, CUTOFF)
    assert sorted(t[0] for t in trees) == sorted(expected)
    tree = next(t for t in trees if t[0] == old_parent)
    assert (tree[0], sorted(tree[1:])) == (old_parent, sorted([old_child, grandchild]))

    result = retention.prune_batch(store, CUTOFF, max_runs=100)

    assert result == retention.PruneResult(
        busy=False, runs=6, steps=6, events=24, hook_executions=6, commands=6, dead_letters=6
    )
    for run_id in [*expected, old_child, grandchild]:
        assert rows_of(store, run_id) == GONE, run_id
    for run_id in [recent, busy_parent, busy_child, kept_parent_child, *active]:
        assert rows_of(store, run_id) == FULL, run_id
    assert rows_of(store, retried) == {**FULL, "commands": 2}
    assert retention.prune_batch(store, CUTOFF, max_runs=100).runs == 0  # nothing else is due


def test_batches_are_bounded_oldest_first(store: RunStore) -> None:
    runs = [add_run(store, status="succeeded", finished_at=OLD + dt.timedelta(minutes=i)) for i in range(5)]
    first = retention.prune_batch(store, CUTOFF, max_runs=2)
    assert (first.runs, first.events) == (2, 8)
    assert [rows_of(store, r)["runs"] for r in runs] == [0, 0, 1, 1, 1]
    assert retention.prune_batch(store, CUTOFF, max_runs=2).runs == 2
    assert retention.prune_batch(store, CUTOFF, max_runs=2).runs == 1
    assert retention.oldest_finished_at(store) is None


def test_a_cutoff_in_the_future_or_a_huge_batch_is_refused(store: RunStore) -> None:
    with pytest.raises(errors.InvalidParameterValue, match="future"):
        retention.prune_batch(store, NOW + dt.timedelta(hours=1), max_runs=1)
    with store.connection() as conn, pytest.raises(errors.InvalidParameterValue, match="max_runs"):
        conn.execute("SELECT * FROM steppe_prune_finished_runs(now(), 0)")


def test_two_pruners_at_once_one_works_the_other_is_busy(store: RunStore) -> None:
    runs = [add_run(store, status="succeeded", finished_at=OLD) for _ in range(3)]
    with psycopg.connect(store.url) as first:
        row = first.execute("SELECT busy, runs FROM steppe_prune_finished_runs(%s, 100)", (CUTOFF,)).fetchone()
        assert row == (False, 3)  # its transaction is still open: it holds the pruning lock
        second = retention.prune_batch(store, CUTOFF, max_runs=100)
        assert second == retention.PruneResult(busy=True)
        first.rollback()
    assert [rows_of(store, r)["runs"] for r in runs] == [1, 1, 1]  # the first rolled back
    assert retention.prune_batch(store, CUTOFF, max_runs=100).runs == 3


def test_the_coordinators_pruner_works_in_the_background_when_due(store: RunStore) -> None:
    old = [add_run(store, status="succeeded", finished_at=OLD) for _ in range(3)]
    kept = add_run(store, status="succeeded", finished_at=NOW)
    pruner = Pruner(store=store, settings=RetentionSettings(finished_runs="30d", batch_runs=2, interval=3600))
    pruner.tick(time.time())
    pruner.join(30)
    assert pruner.last is not None
    assert pruner.last.runs == 2  # a full batch: a backlog
    # The interval is an hour, but a full batch means a backlog: the next follows at once.

    def pruned() -> bool:
        pruner.tick(time.time())  # what the coordinator loop does every iteration
        pruner.join(30)
        return all(rows_of(store, r)["runs"] == 0 for r in old)

    assert_eventually(pruned, timeout=30)
    now = time.time()
    assert rows_of(store, kept) == FULL
    off = Pruner(store=store, settings=RetentionSettings(finished_runs=0))
    assert not off.enabled
    off.tick(now)
    assert off.last is None


def test_the_app_role_still_cannot_delete_events_outside_pruning(
    store: RunStore, postgres_server: PostgresServer, migrated: str
) -> None:
    run_id = add_run(store, status="succeeded", finished_at=OLD)
    refused = [
        ("DELETE FROM workflow_events WHERE run_id = %(r)s", errors.InsufficientPrivilege),
        ("DELETE FROM workflow_runs WHERE run_id = %(r)s", errors.InsufficientPrivilege),  # the trigger
        ("INSERT INTO steppe_prune_tokens VALUES (txid_current())", errors.InsufficientPrivilege),
        ("SELECT * FROM steppe_prune_tokens", errors.InsufficientPrivilege),
    ]
    for statement, error in refused:
        with psycopg.connect(store.url) as conn, pytest.raises(error):
            conn.execute(statement, {"r": run_id})
    # After a prune in the same transaction, its token is gone: a DELETE is refused again.
    active = add_run(store, status="running")
    with psycopg.connect(store.url) as conn:
        conn.execute("SELECT * FROM steppe_prune_finished_runs(%s, 10)", (CUTOFF,))
        with pytest.raises(errors.InsufficientPrivilege, match="append-only"):
            conn.execute("DELETE FROM workflow_runs WHERE run_id = %s", (active,))
    assert rows_of(store, active) == FULL
    # The owner is refused too, outside the function.
    owner = psycopg.connect(postgres_server.owner_url(migrated))
    with owner as conn, pytest.raises(errors.InsufficientPrivilege, match="append-only"):
        conn.execute("DELETE FROM workflow_events WHERE run_id = %s", (active,))


def test_concurrent_pruners_never_delete_a_run_twice(store: RunStore) -> None:
    runs = [add_run(store, status="succeeded", finished_at=OLD) for _ in range(20)]
    results: list[retention.PruneResult] = []

    def prune() -> None:
        while True:
            result = retention.prune_batch(store, CUTOFF, max_runs=3)
            results.append(result)
            if not result.busy and result.runs == 0:
                return

    threads = [threading.Thread(target=prune) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sum(r.runs for r in results) == 20
    assert all(rows_of(store, r)["runs"] == 0 for r in runs)


def test_a_run_being_written_or_commanded_is_skipped_until_it_is_free(store: RunStore) -> None:
    """A coordinator's write holds the run row; adding a command (a retry) holds it FOR KEY SHARE
    until it commits: the pruner skips such a run this time instead of waiting or racing it."""
    held, commanded, free = (add_run(store, status="succeeded", finished_at=OLD) for _ in range(3))
    with psycopg.connect(store.url) as writer, psycopg.connect(store.url) as retrier:
        writer.execute("SELECT FROM workflow_runs WHERE run_id = %s FOR UPDATE", (held,))
        retrier.execute("INSERT INTO run_commands (run_id, command) VALUES (%s, 'retry')", (commanded,))
        assert retention.prune_batch(store, CUTOFF, max_runs=100).runs == 1
        assert [rows_of(store, r)["runs"] for r in (held, commanded, free)] == [1, 1, 0]
        writer.rollback()
        retrier.commit()  # the retry is now pending: its run is kept until a coordinator processed it
    assert retention.prune_batch(store, CUTOFF, max_runs=100).runs == 1
    assert [rows_of(store, r)["runs"] for r in (held, commanded)] == [0, 1]
