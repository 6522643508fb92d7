"""The in-process tier (issue 15 item 6): a real `Coordinator`, stepped by hand, and a real `Worker`
against the session's Redis and a private PostgreSQL database — the loop's guarantees checked in
seconds, between the unit tests and the subprocess end-to-end and fault suites.

Each coordinator runs on the tier's manual clock, so nothing happens between two `step()` calls that
the test did not ask for: no lease renewal, no reconcile, no timer (see tests/integration/inprocess.py).
"""

from __future__ import annotations

import os
import types
from collections import Counter
from typing import Any

import pytest
from prometheus_client import REGISTRY

from orchestrator import fault_points
from orchestrator.errors import ConflictError
from orchestrator.keys import COORDINATOR_GROUP
from orchestrator.wire import ResultMessage
from tests.faults.invariants import check_applied_once, check_event_logs
from tests.helpers import assert_eventually
from tests.integration.inprocess import Tier
from workers import StepContext

pytestmark = pytest.mark.integration

CHAIN = """
name: inproc
steps:
  - {id: a, handler: inproc.echo, with: {value: 1}}
  - {id: b, handler: inproc.echo, with: {value: 2}, needs: [a]}
"""


def echo(ctx: StepContext, value: Any) -> dict[str, Any]:
    return {"value": value, "attempt": ctx.attempt}


HANDLERS = {"inproc.echo": echo}


def published(tier: Tier, run_id: str) -> Counter[tuple[str, int]]:
    """How many messages the queue streams hold for each (step, attempt) of the run."""
    return Counter((m.step, m.attempt) for m in tier.published() if m.run == run_id)


def succeeded_result(run_id: str, step: str, attempt: int = 1, output: Any = "ok") -> ResultMessage:
    return ResultMessage(run=run_id, step=step, attempt=attempt, status="succeeded", worker="w-test", output=output)


def duplicates() -> float:
    return REGISTRY.get_sample_value("steppe_duplicates_suppressed_total", {"kind": "succeeded"}) or 0.0


def run_version(tier: Tier, run_id: str) -> int:
    with tier.store.connection() as conn:
        row = conn.execute("SELECT version FROM workflow_runs WHERE run_id = %s", (run_id,)).fetchone()
    assert row is not None
    return int(row["version"])


def test_a_submitted_run_is_dispatched_and_the_workers_results_applied(tier: Tier) -> None:
    coord = tier.coordinator("c-apply")
    run_id = tier.submit(CHAIN)
    tier.drive(coord, lambda: published(tier, run_id))
    assert published(tier, run_id) == {("a", 1): 1}  # b waits for a
    assert tier.steps(run_id) == {"a": ("dispatched", 1)}
    assert tier.status(run_id) == "running"

    with tier.worker(HANDLERS):
        tier.drive(coord, lambda: tier.status(run_id) == "succeeded")

    assert tier.steps(run_id) == {"a": ("succeeded", 1), "b": ("succeeded", 1)}
    run = tier.queries.get_run(run_id)
    assert run["steps"]["b"]["output"] == {"value": 2, "attempt": 1}
    assert published(tier, run_id) == {("a", 1): 1, ("b", 1): 1}
    assert [(r.step, r.status) for r in tier.results() if r.status != "started"] == [
        ("a", "succeeded"),
        ("b", "succeeded"),
    ]
    check_applied_once(tier, [run_id])  # type: ignore[arg-type] - they read only `.queries`
    check_event_logs(tier, [run_id])  # type: ignore[arg-type]


def test_a_duplicate_result_for_the_same_attempt_is_fenced(tier: Tier) -> None:
    coord = tier.coordinator("c-fence")
    run_id = tier.submit(CHAIN)
    tier.drive(coord, lambda: published(tier, run_id))
    before = duplicates()

    # In one batch: a report for an attempt never dispatched, then the same report twice (a worker's
    # flush retried after a lost reply): only the first report of attempt 1 is applied.
    tier.send_result(succeeded_result(run_id, "a", attempt=2, output="stale"))
    tier.send_result(succeeded_result(run_id, "a"))
    tier.send_result(succeeded_result(run_id, "a", output="again"))
    tier.drive(coord, lambda: ("b", 1) in published(tier, run_id))
    assert duplicates() - before == 2
    version = run_version(tier, run_id)

    # Once more in a later batch, after the first one committed.
    tier.send_result(succeeded_result(run_id, "a", output="late"))
    tier.drive(coord, lambda: duplicates() - before == 3)
    assert run_version(tier, run_id) == version  # nothing written for it

    assert tier.steps(run_id) == {"a": ("succeeded", 1), "b": ("dispatched", 1)}
    assert tier.queries.get_run(run_id)["steps"]["a"]["output"] == "ok"
    assert published(tier, run_id) == {("a", 1): 1, ("b", 1): 1}  # b dispatched once
    tier.send_result(succeeded_result(run_id, "b"))
    tier.drive(coord, lambda: tier.status(run_id) == "succeeded")
    assert tier.event_types(run_id).count(("step.succeeded", "a")) == 1
    check_applied_once(tier, [run_id])  # type: ignore[arg-type]
    check_event_logs(tier, [run_id])  # type: ignore[arg-type]


class Crashed(Exception):
    """What `os._exit(137)` does to a coordinator process, raised instead in-process."""


def test_a_crash_between_commit_and_publish_is_published_once_by_the_next_coordinator(
    tier: Tier,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The real crash point (orchestrator/fault_points.py), armed as the fault tests arm it, but
    # raising where a subprocess would exit.
    def exit_now(code: int) -> None:
        raise Crashed(code)

    monkeypatch.setenv("STEPPE_FAULT_CRASH_AFTER_COMMIT", "1")
    monkeypatch.setattr(fault_points, "os", types.SimpleNamespace(environ=os.environ, _exit=exit_now))
    monkeypatch.setattr(fault_points, "_batches", {})

    victim = tier.coordinator("c-victim")
    run_id = tier.submit(CHAIN)
    with pytest.raises(Crashed):
        tier.drive(victim, lambda: False)
    tier.coordinators.remove(victim)  # it died: it never releases its lease or deregisters

    assert tier.steps(run_id) == {"a": ("dispatched", 1)}  # committed ...
    assert ("step.dispatched", "a") in tier.event_types(run_id)
    assert published(tier, run_id) == {}  # ... never published
    monkeypatch.delenv("STEPPE_FAULT_CRASH_AFTER_COMMIT")

    tier.expire_leases()  # its lease times out
    heir = tier.coordinator("c-heir")
    assert heir.partitions == [0]
    tier.drive(heir, lambda: published(tier, run_id), steps=5)  # its first reconcile publishes it
    for _ in range(3):  # later reconciles find it in Redis and leave it there
        tier.clock.advance(tier.settings.coordinator.reconcile_interval + 0.1)
        heir.step(block_ms=20)
    assert published(tier, run_id) == {("a", 1): 1}

    with tier.worker(HANDLERS):
        tier.drive(heir, lambda: tier.status(run_id) == "succeeded")
    assert published(tier, run_id) == {("a", 1): 1, ("b", 1): 1}
    assert tier.steps(run_id) == {"a": ("succeeded", 1), "b": ("succeeded", 1)}
    check_applied_once(tier, [run_id])  # type: ignore[arg-type]
    check_event_logs(tier, [run_id])  # type: ignore[arg-type]


def test_a_lease_lost_to_another_coordinator_fences_the_batch(
    tier: Tier,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    old = tier.coordinator("c-old")
    run_id = tier.submit(CHAIN)
    tier.drive(old, lambda: published(tier, run_id))
    version = run_version(tier, run_id)
    events = tier.event_types(run_id)

    # The old coordinator stalls past its lease TTL (its clock stands still: it does not renew);
    # a new one takes the partition over.
    tier.expire_leases()
    new = tier.coordinator("c-new")
    assert new.partitions == [0]
    assert old.partitions == [0]  # the old one does not know yet

    raised: list[Exception] = []
    commit_batch = tier.store.commit_batch

    def spy(*args: Any, **kwargs: Any) -> None:
        try:
            commit_batch(*args, **kwargs)
        except Exception as e:
            raised.append(e)
            raise

    monkeypatch.setattr(tier.store, "commit_batch", spy)
    tier.send_result(succeeded_result(run_id, "a"))
    tier.drive(old, lambda: raised, steps=3)

    assert [type(e) for e in raised] == [ConflictError]
    assert old.runs == {}  # it dropped what it held, to reload it from PostgreSQL
    assert run_version(tier, run_id) == version
    assert tier.event_types(run_id) == events  # nothing of the batch was written
    assert tier.steps(run_id) == {"a": ("dispatched", 1)}
    assert published(tier, run_id) == {("a", 1): 1}  # b not dispatched

    old.step(block_ms=20)  # its next lease renewal finds the partition taken
    assert old.partitions == []
    monkeypatch.undo()
    with tier.worker(HANDLERS):  # the new owner drives the run to its end
        tier.drive(new, lambda: tier.status(run_id) == "succeeded")
    assert tier.steps(run_id) == {"a": ("succeeded", 1), "b": ("succeeded", 1)}
    check_applied_once(tier, [run_id])  # type: ignore[arg-type]
    check_event_logs(tier, [run_id])  # type: ignore[arg-type]


def test_a_result_read_in_a_fenced_batch_is_handed_to_the_new_owner_and_the_step_runs_once(
    tier: Tier,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    executed: Counter[str] = Counter()

    def counted(ctx: StepContext, value: Any) -> dict[str, Any]:
        executed[ctx.step_id] += 1
        return echo(ctx, value)

    handlers = {"inproc.echo": counted}
    old = tier.coordinator("c-old")
    run_id = tier.submit(CHAIN)
    tier.drive(old, lambda: published(tier, run_id))

    # The old coordinator stalls past its lease TTL; a new one takes the partition over. Meanwhile the
    # worker runs a and reports, and only the old coordinator, which does not know yet, reads the report.
    tier.expire_leases()
    new = tier.coordinator("c-new")
    assert new.partitions == [0]
    assert old.partitions == [0]
    with tier.worker(handlers):
        assert_eventually(lambda: ("a", "succeeded") in [(r.step, r.status) for r in tier.results()])

    raised: list[Exception] = []
    commit_batch = tier.store.commit_batch

    def spy(*args: Any, **kwargs: Any) -> None:
        try:
            commit_batch(*args, **kwargs)
        except Exception as e:
            raised.append(e)
            raise

    monkeypatch.setattr(tier.store, "commit_batch", spy)
    tier.drive(old, lambda: raised, steps=3)
    assert [type(e) for e in raised] == [ConflictError]
    results_stream = tier.keys.results_stream(0)
    assert pending_of(tier, results_stream, "c-old"), "the fenced batch was acknowledged"

    old.step(block_ms=20)  # its lease renewal finds the partition taken: it hands the report back
    assert old.partitions == []
    assert pending_of(tier, results_stream, "c-old") == []
    monkeypatch.undo()

    with tier.worker(handlers):  # the new owner applies the report and drives the run to its end
        tier.drive(new, lambda: tier.status(run_id) == "succeeded", steps=50)
    assert executed == {"a": 1, "b": 1}
    assert tier.steps(run_id) == {"a": ("succeeded", 1), "b": ("succeeded", 1)}
    # Never re-published (the queue's acknowledged entries are trimmed by now: count the log's dispatches).
    assert Counter(e for e in tier.event_types(run_id) if e[0] == "step.dispatched") == {
        ("step.dispatched", "a"): 1,
        ("step.dispatched", "b"): 1,
    }
    check_applied_once(tier, [run_id])  # type: ignore[arg-type]
    check_event_logs(tier, [run_id])  # type: ignore[arg-type]


def pending_of(tier: Tier, stream: str, consumer: str) -> list[bytes]:
    """Ids of the stream's entries the consumer read and did not acknowledge."""
    rows = tier.redis.xpending_range(stream, COORDINATOR_GROUP, "-", "+", 100, consumername=consumer)
    return [row["message_id"] for row in rows]
