"""Flow control (docs/spec.md §12.2) without I/O: the `concurrency:`/`rate_limit:` blocks and the
engine's `throttled` transitions (orchestrator.engine.limits)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from orchestrator.engine import RunEngine
from orchestrator.errors import SpecError
from orchestrator.spec import load_workflow
from orchestrator.spec.limits import show_seconds
from orchestrator.state import EventType, RunProjection, RunStatus, StepStatus, fold
from orchestrator.wire import ResultMessage, StepErrorInfo
from orchestrator.workflow import compile_workflow

LIMITED = """
name: llm
inputs: {customer: {type: string, required: true}}
steps:
  - id: summarise
    handler: builtin.echo
    for_each: [a, b, c]
    with: {text: "${{ item }}"}
    concurrency: {key: "openai-${{ item }}", limit: 8}
    rate_limit: {key: openai, limit: 60, per: 1m}
  - id: publish
    needs: [summarise]
    handler: builtin.echo
    priority: high
    concurrency: {key: "cms-${{ inputs.customer }}", limit: 2}
"""


def make(yaml_text: str = LIMITED, inputs: dict[str, Any] | None = None) -> RunEngine:
    return RunEngine(
        workflow=compile_workflow(load_workflow(yaml_text)),
        projection=RunProjection(run_id="r1"),
        inputs=inputs if inputs is not None else {"customer": "acme"},
        partition=3,
        clock=lambda: 1000.0,
        rng=random.Random(1),
    )


def ok(step: str, attempt: int = 1) -> ResultMessage:
    return ResultMessage(run="r1", step=step, attempt=attempt, status="succeeded", output={})


def test_blocks_compile_in_admission_order() -> None:
    wf = compile_workflow(load_workflow(LIMITED))
    kinds = [(limit.kind, limit.key, limit.limit, limit.per) for limit in wf.steps["summarise"].limits]
    assert kinds == [("concurrency", "openai-${{ item }}", 8, 0.0), ("rate", "openai", 60, 60.0)]
    run_level = compile_workflow(load_workflow(RUN_LIMITED)).concurrency
    assert run_level is not None
    assert run_level.on_limit == "cancel_new"
    assert show_seconds(60) == "1m"
    assert show_seconds(2) == "2s"
    assert show_seconds(0.25) == "250ms"


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ("concurrency: {key: openai, limit: 0}", "greater than or equal to 1"),
        ("rate_limit: {key: openai, limit: 5, per: 0s}", "per must be a positive duration"),
        ("rate_limit: {key: openai, limit: 5, per: soon}", "invalid duration"),
        ('concurrency: {key: "", limit: 1}', "non-empty key"),
        ('concurrency: {key: "${{ nope", limit: 1}', "malformed template"),
        ('concurrency: {key: "${{ inputs.missing }}", limit: 1}', "undeclared input"),
        ("concurrency: {key: openai, limit: 1, burst: 3}", "burst"),
    ],
)
def test_invalid_blocks_are_refused_saying_why(block: str, message: str) -> None:
    text = f"name: w\nsteps:\n  - id: a\n    handler: builtin.echo\n    {block}\n"
    with pytest.raises(SpecError) as excinfo:
        load_workflow(text)
    assert message in str(excinfo.value)


def test_a_run_level_key_may_reference_only_inputs() -> None:
    text = (
        'name: w\nconcurrency: {key: "${{ steps.a.output }}", limit: 1}\nsteps:\n  - {id: a, handler: builtin.echo}\n'
    )
    with pytest.raises(SpecError, match="only inputs"):
        load_workflow(text)


def test_ready_limited_steps_are_throttled_with_resolved_keys_not_dispatched() -> None:
    engine = make()
    engine.start()
    out = engine.drain()
    assert out.dispatches == []
    statuses = {k: r.status for k, r in engine.run.steps.items() if "[" in k}
    assert statuses == dict.fromkeys(("summarise[0]", "summarise[1]", "summarise[2]"), StepStatus.THROTTLED)
    first = next(r for r in out.limit_requests if r.step == "summarise[0]")
    assert first.partition == 3
    assert first.attempt == 0
    assert first.priority == 1
    assert [(x["kind"], x["key"]) for x in first.limits] == [("concurrency", "openai-a"), ("rate", "openai")]
    throttled = [e for e in out.events if e.type is EventType.STEP_THROTTLED]
    assert len(throttled) == 3
    assert throttled[0].data["at"] == 1000.0
    assert engine.run.steps["summarise[0]"].attempt == 0  # no attempt burnt
    assert fold("r1", out.events).to_json() == engine.run.to_json()


def test_admission_dispatches_the_attempt_once() -> None:
    engine = make()
    engine.start()
    events = engine.drain().events
    assert engine.throttle.admit("summarise[1]", 0)
    assert not engine.throttle.admit("summarise[1]", 0)  # a repeated grant notice changes nothing
    assert not engine.throttle.admit("summarise[2]", 5)  # another attempt's grant
    out = engine.drain()
    assert [d.message.step for d in out.dispatches] == ["summarise[1]"]
    assert out.dispatches[0].message.attempt == 1
    assert engine.run.steps["summarise[1]"].status is StepStatus.DISPATCHED
    assert engine.run.steps["summarise[1]"].detail["limits"][0]["key"] == "openai-b"  # kept for the release
    assert fold("r1", events + out.events).to_json() == engine.run.to_json()


def test_the_run_finishes_only_after_every_throttled_step_ran() -> None:
    engine = make()
    engine.start()
    engine.drain()
    for i in range(3):
        assert engine.throttle.admit(f"summarise[{i}]", 0)
        engine.on_result(ok(f"summarise[{i}]"))
    out = engine.drain()
    assert engine.run.steps["publish"].status is StepStatus.THROTTLED
    assert [r.priority for r in out.limit_requests] == [2]  # priority high
    assert out.limit_requests[0].limits[0]["key"] == "cms-acme"
    assert engine.run.status is RunStatus.RUNNING
    engine.throttle.admit("publish", 0)
    engine.on_result(ok("publish"))
    assert engine.run.status is RunStatus.SUCCEEDED


def test_a_retry_is_throttled_again() -> None:
    engine = make("name: w\nsteps:\n  - id: a\n    handler: x.y\n    concurrency: {key: k, limit: 1}\n", {})
    engine.start()
    engine.drain()
    engine.throttle.admit("a", 0)
    error = StepErrorInfo(type="Boom", message="boom", retryable=True)
    engine.on_result(ResultMessage(run="r1", step="a", attempt=1, status="failed", error=error))
    timers = engine.drain().timers
    engine.on_timer(timers[0])
    out = engine.drain()
    assert out.dispatches == []
    assert engine.run.steps["a"].status is StepStatus.THROTTLED
    assert [(r.step, r.attempt) for r in out.limit_requests] == [("a", 1)]


def test_cancel_cancels_throttled_steps_and_finishes_the_run() -> None:
    engine = make()
    engine.start()
    engine.drain()
    assert engine.request_cancel()
    assert {r.status for k, r in engine.run.steps.items() if "[" in k} == {StepStatus.CANCELLED}
    assert engine.run.status is RunStatus.CANCELLED


def test_a_key_that_cannot_resolve_fails_the_step() -> None:
    text = (
        "name: w\ninputs: {c: {type: any}}\nsteps:\n  - id: a\n    handler: x.y\n"
        '    concurrency: {key: "${{ inputs.c }}", limit: 1}\n'
    )
    engine = make(text, {"c": ""})
    engine.start()
    assert engine.run.steps["a"].status is StepStatus.FAILED
    assert "empty" in engine.run.steps["a"].error["message"]  # type: ignore[index]


def test_a_loaded_run_reports_its_throttled_attempts() -> None:
    engine = make()
    engine.start()
    events = engine.drain().events
    loaded = RunEngine(
        workflow=engine.wf,
        projection=fold("r1", events),
        inputs={"customer": "acme"},
        partition=3,
        clock=lambda: 2000.0,
    )
    requests = loaded.drain().limit_requests
    assert sorted(r.step for r in requests) == ["summarise[0]", "summarise[1]", "summarise[2]"]
    assert requests[0].limits[1] == {"kind": "rate", "key": "openai", "limit": 60, "per": 60.0}
    assert loaded.throttle.admit("summarise[0]", 0)


def test_a_run_loaded_mid_fan_out_finishes() -> None:
    """Before: a coordinator taking over a run during a for_each counted the fanned-out step as in
    flight for ever, and the run never finished (seen with limited items moving between coordinators)."""
    engine = make("name: w\nsteps:\n  - {id: a, handler: x.y, for_each: [1, 2]}\n", {})
    engine.start()
    loaded = RunEngine(
        workflow=engine.wf, projection=fold("r1", engine.drain().events), inputs={}, partition=0, clock=lambda: 1.0
    )
    for i in range(2):
        loaded.on_result(ok(f"a[{i}]"))
    assert loaded.run.status is RunStatus.SUCCEEDED


RUN_LIMITED = """
name: per-customer
inputs: {customer: {type: string}}
concurrency: {key: "customer-${{ inputs.customer }}", limit: 1, on_limit: cancel_new}
steps:
  - {id: a, handler: x.y}
"""


def test_a_run_level_limit_keeps_the_run_pending_until_admitted() -> None:
    engine = make(RUN_LIMITED)
    engine.start()
    out = engine.drain()
    assert engine.run.status is RunStatus.PENDING
    assert out.dispatches == []
    assert engine.run.state["throttled"] == {"key": "customer-acme", "limit": 1, "on_limit": "cancel_new", "at": 1000.0}
    engine.start()  # loaded again while queued: nothing new
    assert engine.drain().events == []
    assert engine.throttle.admit_run()
    assert not engine.throttle.admit_run()
    out = engine.drain()
    assert engine.run.status is RunStatus.RUNNING
    assert [d.message.step for d in out.dispatches] == ["a"]


def test_refused_and_cancelled_queued_runs_end_cancelled_saying_why() -> None:
    refused = make(RUN_LIMITED)
    refused.start()
    assert refused.throttle.refuse_run()
    assert refused.run.status is RunStatus.CANCELLED
    assert refused.run.state["error"]["type"] == "ConcurrencyLimit"
    assert "on_limit: cancel_new" in refused.run.state["error"]["message"]
    queued = make(RUN_LIMITED)
    queued.start()
    assert queued.request_cancel()
    assert queued.run.status is RunStatus.CANCELLED
    assert not queued.throttle.admit_run()
