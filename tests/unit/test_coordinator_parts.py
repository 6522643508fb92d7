"""The coordinator's pure parts: its timer queue, the batch that gathers engine outputs, and the
engine's drain (one `EngineOutput`, buffers emptied)."""

from __future__ import annotations

import random

from orchestrator.batch import Batch, Tracked
from orchestrator.engine import RunEngine, Timer
from orchestrator.spec import load_workflow
from orchestrator.state import EventType, RunProjection, RunStatus
from orchestrator.timer_queue import TimerQueue
from orchestrator.wire import ResultMessage
from orchestrator.workflow import compile_workflow

TWO = """
name: two
steps:
  - {id: a, handler: builtin.echo}
  - {id: b, handler: builtin.echo, needs: [a]}
"""


def engine() -> RunEngine:
    return RunEngine(
        workflow=compile_workflow(load_workflow(TWO)),
        projection=RunProjection(run_id="r1"),
        inputs={},
        partition=0,
        clock=lambda: 1000.0,
        rng=random.Random(1),
    )


def test_timers_pop_by_due_time_then_in_arrival_order() -> None:
    queue = TimerQueue()
    assert queue.next_due() is None
    late, first, second = (
        Timer(20.0, "r1", "a", 1, "retry"),
        Timer(10.0, "r1", "b", 1, "timeout"),
        Timer(10.0, "r2", "a", 1, "retry"),
    )
    queue.push([late, first, second])
    assert (len(queue), queue.next_due()) == (3, 10.0)
    assert queue.pop_due(9.9) == []
    assert queue.pop_due(15.0) == [first, second]
    assert queue.pop_due(30.0) == [late]
    queue.push([late])
    queue.clear()
    assert len(queue) == 0


def test_drain_returns_one_output_and_starts_over() -> None:
    run = engine()
    run.start()
    out = run.drain()
    assert [e.type for e in out.events] == [EventType.RUN_STARTED, EventType.STEP_DISPATCHED]
    assert [d.message.step for d in out.dispatches] == ["a"]
    assert [t.kind for t in out.timers] == []  # a timeout is armed when the step starts
    again = run.drain()
    assert (again.events, again.dispatches, again.timers, again.dead_letters) == ([], [], [], [])
    assert (again.child_starts, again.child_cancels) == ([], [])


def test_a_batch_writes_runs_with_events_and_keeps_the_rest_of_each_output() -> None:
    run = engine()
    run.start()
    tracked = Tracked(engine=run, version=3, workflow="two")
    batch = Batch()
    assert batch.add(tracked, run.drain())
    [write] = batch.writes
    assert (write.run_id, write.expected_version, write.status, write.finished) == ("r1", 3, RunStatus.RUNNING, False)
    assert set(write.steps) == {"a"}
    assert [d.message.step for d in batch.dispatches] == ["a"]

    run.on_result(ResultMessage(run="r1", step="a", attempt=1, status="started"))
    quiet = run.drain()  # a started step arms its timeout: a timer, and its event
    assert quiet.timers
    assert batch.add(tracked, quiet)
    assert batch.timers == quiet.timers
    assert batch.finished == []
    assert not Batch().add(tracked, run.drain())  # nothing decided: nothing to write
