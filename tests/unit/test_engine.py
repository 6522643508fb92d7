"""The run engine without I/O: results and timers in, events and dispatches out."""

from __future__ import annotations

import random
from typing import Any

from orchestrator.engine import RunEngine
from orchestrator.spec import load_workflow
from orchestrator.state import EventType, RunProjection, RunStatus, StepStatus, fold
from orchestrator.wire import ResultMessage, StepErrorInfo
from orchestrator.workflow import compile_workflow


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def make(yaml_text: str, inputs: dict[str, Any] | None = None) -> tuple[RunEngine, Clock]:
    clock = Clock()
    wf = compile_workflow(load_workflow(yaml_text))
    engine = RunEngine(
        workflow=wf,
        projection=RunProjection(run_id="r1"),
        inputs=inputs or {},
        partition=0,
        clock=clock,
        rng=random.Random(1),
    )
    return engine, clock


def ok(step: str, attempt: int = 1, output: Any = None) -> ResultMessage:
    return ResultMessage(run="r1", step=step, attempt=attempt, status="succeeded", output=output or {})


def failed(step: str, attempt: int = 1, retryable: bool = True) -> ResultMessage:
    return ResultMessage(
        run="r1",
        step=step,
        attempt=attempt,
        status="failed",
        error=StepErrorInfo(type="Boom", message="boom", retryable=retryable),
    )


def dispatched(engine: RunEngine) -> list[str]:
    outbox = engine.drain().dispatches
    return sorted(d.message.step for d in outbox)


def assert_fold_matches(engine: RunEngine, events: list[Any]) -> None:
    assert fold("r1", events).to_json() == engine.run.to_json()


DIAMOND = """
name: d
steps:
  - {id: a, handler: builtin.echo}
  - {id: b, handler: builtin.echo, needs: [a], with: {x: "${{ steps.a.output.v }}"}}
  - {id: c, handler: builtin.echo, needs: [a]}
  - {id: d, handler: builtin.echo, needs: [b, c]}
"""


def test_dispatches_each_step_as_soon_as_its_needs_succeed() -> None:
    engine, _ = make(DIAMOND)
    engine.start()
    assert dispatched(engine) == ["a"]
    engine.on_result(ok("a", output={"v": [1, 2]}))
    outbox = engine.drain().dispatches
    assert sorted(d.message.step for d in outbox) == ["b", "c"]
    b = next(d for d in outbox if d.message.step == "b")
    assert b.message.args == {"x": [1, 2]}  # a whole-string reference keeps its JSON type
    engine.on_result(ok("c"))
    assert dispatched(engine) == []  # d waits for b too
    engine.on_result(ok("b"))
    assert dispatched(engine) == ["d"]
    engine.on_result(ok("d", output={"done": True}))
    assert engine.run.status is RunStatus.SUCCEEDED
    assert engine.run.state["outputs"] == {"d": {"done": True}}


def test_results_are_fenced_by_attempt() -> None:
    engine, clock = make("name: f\nsteps:\n  - {id: a, handler: x.y, retry: {max_attempts: 3, jitter: false}}\n")
    engine.start()
    engine.drain()
    assert engine.on_result(failed("a", 1))
    assert engine.run.steps["a"].status is StepStatus.RETRY_SCHEDULED
    assert not engine.on_result(ok("a", 1)), "a late result of attempt 1 must not be applied"
    timers = engine.drain().timers
    clock.now = timers[0].due
    engine.on_timer(timers[0])
    assert dispatched(engine) == ["a"]
    assert engine.run.steps["a"].attempt == 2
    assert not engine.on_result(ok("a", 1))
    assert engine.on_result(ok("a", 2))
    assert not engine.on_result(ok("a", 2)), "a duplicate of the applied result is ignored"
    assert engine.run.status is RunStatus.SUCCEEDED


def test_non_retryable_failure_cancels_pending_steps_and_fails_the_run() -> None:
    engine, _ = make(DIAMOND)
    engine.start()
    engine.on_result(ok("a"))
    engine.on_result(failed("b", retryable=False))
    assert engine.run.steps["d"].status is StepStatus.CANCELLED
    assert engine.run.status is RunStatus.RUNNING, "c is still in flight"
    engine.on_result(ok("c"))
    assert engine.run.status is RunStatus.FAILED
    assert engine.run.state["error"]["step"] == "b"


def test_when_skips_and_propagates_to_dependents() -> None:
    engine, _ = make(
        """
name: w
inputs: {go: {type: boolean, default: false}}
steps:
  - {id: a, handler: h.x, when: "${{ inputs.go }}"}
  - {id: b, handler: h.x, needs: [a]}
  - {id: c, handler: h.x}
""",
        {"go": False},
    )
    engine.start()
    assert dispatched(engine) == ["c"]
    assert engine.run.steps["a"].status is StepStatus.SKIPPED
    assert engine.run.steps["b"].status is StepStatus.SKIPPED
    engine.on_result(ok("c"))
    assert engine.run.status is RunStatus.SUCCEEDED


def test_for_each_gathers_outputs_in_item_order() -> None:
    engine, _ = make(
        """
name: fe
inputs: {xs: {type: array}}
steps:
  - {id: each, handler: h.x, for_each: "${{ inputs.xs }}", with: {v: "${{ item }}"}}
""",
        {"xs": ["a", "b", "c"]},
    )
    engine.start()
    outbox = engine.drain().dispatches
    assert [d.message.args for d in outbox] == [{"v": "a"}, {"v": "b"}, {"v": "c"}]
    for index in (2, 0, 1):
        engine.on_result(ok(f"each[{index}]", output={"i": index}))
    assert engine.run.steps["each"].output == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert engine.run.status is RunStatus.SUCCEEDED


SAGA = """
name: saga
on_failure: compensate
steps:
  - {id: reserve, handler: h.x, compensate: {handler: h.release, with: {r: "${{ steps.reserve.output.id }}"}}}
  - {id: charge, handler: h.x, needs: [reserve], compensate: {handler: h.refund}}
  - {id: ship, handler: h.x, needs: [charge], retry: {max_attempts: 1}}
"""


def test_saga_compensates_in_reverse_dependency_order() -> None:
    engine, _ = make(SAGA)
    engine.start()
    engine.on_result(ok("reserve", output={"id": "R1"}))
    engine.on_result(ok("charge"))
    engine.drain()
    engine.on_result(failed("ship", retryable=False))
    assert engine.run.status is RunStatus.COMPENSATING
    outbox = engine.drain().dispatches
    assert [d.message.step for d in outbox] == ["charge:compensate"]
    engine.on_result(ok("charge:compensate"))
    outbox = engine.drain().dispatches
    assert [(d.message.step, d.message.args) for d in outbox] == [("reserve:compensate", {"r": "R1"})]
    engine.on_result(ok("reserve:compensate"))
    assert engine.run.status is RunStatus.COMPENSATED
    assert engine.run.steps["reserve"].status is StepStatus.COMPENSATED


def test_failed_compensation_ends_compensation_failed_with_a_dead_letter() -> None:
    engine, _ = make(SAGA.replace("handler: h.refund}", "handler: h.refund, retry: {max_attempts: 1}}"))
    engine.start()
    engine.on_result(ok("reserve", output={"id": "R1"}))
    engine.on_result(ok("charge"))
    engine.on_result(failed("ship", retryable=False))
    engine.on_result(failed("charge:compensate"))
    engine.on_result(ok("reserve:compensate"))
    assert engine.run.status is RunStatus.COMPENSATION_FAILED
    dead = engine.drain().dead_letters
    assert [(d.step_key, d.reason) for d in dead] == [("charge:compensate", "compensation_failed")]


def test_cancel_waits_for_in_flight_steps() -> None:
    engine, _ = make(DIAMOND)
    engine.start()
    assert engine.request_cancel()
    assert engine.run.status is RunStatus.RUNNING
    engine.on_result(ResultMessage(run="r1", step="a", attempt=1, status="cancelled"))
    assert engine.run.status is RunStatus.CANCELLED
    assert {s.status for s in engine.run.steps.values()} == {StepStatus.CANCELLED}


def test_resume_keeps_succeeded_outputs() -> None:
    engine, _ = make(DIAMOND)
    engine.start()
    engine.on_result(ok("a", output={"v": 1}))
    engine.on_result(ok("c"))
    engine.on_result(failed("b", retryable=False))
    assert engine.run.status is RunStatus.FAILED
    engine.drain()
    assert engine.resume()
    assert dispatched(engine) == ["b"]
    assert engine.run.steps["b"].attempt == 2
    engine.on_result(ok("b", 2))
    engine.on_result(ok("d"))
    assert engine.run.status is RunStatus.SUCCEEDED
    assert engine.run.steps["a"].output == {"v": 1}


def test_rebuilt_engine_continues_where_the_log_left_off() -> None:
    engine, clock = make(DIAMOND)
    engine.start()
    engine.on_result(ok("a", output={"v": 1}))
    events = engine.drain().events
    assert_fold_matches(engine, events)
    restored = RunEngine(workflow=engine.wf, projection=fold("r1", events), inputs={}, partition=0, clock=clock)
    assert sorted(d.message.step for d in restored.in_flight_dispatches()) == ["b", "c"]
    restored.on_result(ok("b"))
    restored.on_result(ok("c"))
    assert dispatched(restored) == ["d"]


def test_deferred_result_does_not_burn_an_attempt() -> None:
    engine, clock = make("name: b\nsteps:\n  - {id: a, handler: h.x, retry: {max_attempts: 1}}\n")
    engine.start()
    engine.drain()
    engine.on_result(ResultMessage(run="r1", step="a", attempt=1, status="deferred"))
    timers = engine.drain().timers
    clock.now = timers[0].due
    engine.on_timer(timers[0])
    assert dispatched(engine) == ["a"]
    engine.on_result(ok("a", 2))
    assert engine.run.status is RunStatus.SUCCEEDED


def test_every_event_type_folds() -> None:
    engine, _ = make(SAGA)
    engine.start()
    engine.on_result(ok("reserve", output={"id": "R"}))
    engine.on_result(ResultMessage(run="r1", step="charge", attempt=1, status="started", worker="w"))
    engine.on_result(ok("charge"))
    engine.on_result(failed("ship", retryable=False))
    engine.on_result(ok("charge:compensate"))
    engine.on_result(ok("reserve:compensate"))
    events = engine.drain().events
    assert_fold_matches(engine, events)
    assert EventType.STEP_STARTED in {e.type for e in events}


def test_resume_with_overridden_arguments_uses_them_and_logs_them() -> None:
    engine, _ = make("name: o\nsteps:\n  - {id: a, handler: h.x, with: {n: 1}, retry: {max_attempts: 1}}\n")
    engine.start()
    engine.on_result(failed("a"))
    assert engine.run.status is RunStatus.FAILED
    events = engine.drain().events
    assert engine.resume({"a": {"n": 2}})
    out = engine.drain()
    new_events, outbox = out.events, out.dispatches
    assert [d.message.args for d in outbox] == [{"n": 2}]
    assert_fold_matches(engine, events + new_events)
