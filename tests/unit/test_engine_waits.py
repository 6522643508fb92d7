"""Durable waits in the engine, without I/O: a wait step waits (no dispatch), signals, approvals and
timers end it with the output docs/spec.md §12.1 gives, rejections and timeouts fail it; the fold of
the log equals the engine's projection throughout."""

from __future__ import annotations

import random
from typing import Any

from orchestrator.engine import RunEngine
from orchestrator.engine.waits import WAIT_TIMER, Signal
from orchestrator.spec import load_workflow
from orchestrator.state import EventType, RunProjection, RunStatus, StepStatus, fold
from orchestrator.wire import ResultMessage
from orchestrator.workflow import compile_workflow

FLOW = """\
name: refund
on_failure: compensate
steps:
  - id: draft
    handler: llm.draft
    compensate: {handler: llm.discard}
  - id: review
    needs: [draft]
    approval: {timeout: 48h, approvers: [alice, bob]}
  - id: paid
    needs: [review]
    wait: {signal: payment-webhook, timeout: 7d}
  - id: cool_off
    needs: [paid]
    sleep: 10m
  - id: publish
    needs: [cool_off]
    handler: cms.publish
    with: {amount: "${{ steps.paid.output.amount }}"}
"""


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Run:
    """One engine and every event it emitted, to compare with the fold."""

    def __init__(self, text: str = FLOW, inputs: dict[str, Any] | None = None) -> None:
        self.clock = Clock()
        self.engine = RunEngine(
            workflow=compile_workflow(load_workflow(text)),
            projection=RunProjection(run_id="r1"),
            inputs=inputs or {},
            partition=0,
            clock=self.clock,
            rng=random.Random(1),
        )
        self.events: list[Any] = []
        self.timers: list[Any] = []

    def drain(self) -> list[str]:
        out = self.engine.drain()
        self.events += out.events
        self.timers += out.timers
        assert fold("r1", self.events).to_json() == self.engine.run.to_json()
        return [d.message.step for d in out.dispatches]

    def ok(self, step: str, output: Any = None) -> list[str]:
        attempt = self.engine.run.steps[step].attempt
        for status in ("started", "succeeded"):
            self.engine.on_result(
                ResultMessage(run="r1", step=step, attempt=attempt, status=status, output=output or {})
            )
        return self.drain()

    def status(self, step: str) -> StepStatus:
        return self.engine.run.steps[step].status

    def wait_timer(self, step: str) -> Any:
        return next(t for t in self.timers if t.step == step and t.kind == WAIT_TIMER)


def approve(signal_id: int, by: str = "alice", *, kind: str = "approve", comment: str | None = "ok") -> Signal:
    return Signal(signal_id, kind, "review", by=by, comment=comment, at=1_000_100.0)


def to_review() -> Run:
    run = Run()
    run.engine.start()
    assert run.drain() == ["draft"]
    assert run.ok("draft") == []  # review waits: nothing is dispatched
    return run


def test_an_approval_waits_without_a_dispatch_and_approved_continues() -> None:
    run = to_review()
    assert run.status("review") is StepStatus.WAITING
    wait = run.engine.run.steps["review"].detail["wait"]
    assert wait == {"kind": "approval", "since": 1_000_000.0, "approvers": ["alice", "bob"], "timeout": 172800.0}
    assert run.wait_timer("review").due == 1_000_000.0 + 48 * 3600
    assert run.engine.offer_signals([approve(7)])
    assert run.drain() == []  # paid waits for its signal
    review = run.engine.run.steps["review"]
    assert review.output == {"approved": True, "by": "alice", "comment": "ok", "at": "1970-01-12T13:48:20+00:00"}
    assert review.detail["by"] == "alice"
    assert review.detail["signal_id"] == 7
    assert run.status("paid") is StepStatus.WAITING
    step_events = [e for e in run.events if e.step == "review"]
    assert [e.type for e in step_events] == [EventType.STEP_WAITING, EventType.STEP_SUCCEEDED]
    assert step_events[-1].data["by"] == "alice"


def test_a_rejection_fails_the_step_and_the_saga_compensates() -> None:
    run = to_review()
    run.engine.offer_signals([approve(7, "bob", kind="reject", comment="too much")])
    assert run.drain() == ["draft:compensate"]
    review = run.engine.run.steps["review"]
    assert review.status is StepStatus.FAILED
    assert review.error is not None
    assert review.error["type"] == "ApprovalRejected"
    assert review.error["retryable"] is False
    assert review.error["message"] == "rejected by bob: too much"
    assert run.status("paid") is StepStatus.CANCELLED
    run.ok("draft:compensate")
    assert run.engine.run.status is RunStatus.COMPENSATED


def test_an_early_signal_is_kept_until_a_step_waits_for_it_then_its_payload_is_the_output() -> None:
    run = to_review()
    assert not run.engine.offer_signals([Signal(3, "signal", "payment-webhook", payload={"amount": 42})])
    assert run.status("review") is StepStatus.WAITING  # not for an approval
    run.engine.offer_signals([approve(4)])
    run.drain()
    assert run.status("paid") is StepStatus.SUCCEEDED
    assert run.engine.run.steps["paid"].output == {"amount": 42}
    assert run.status("cool_off") is StepStatus.WAITING
    # the same signal offered again (a reload, a repeated wake-up) is not applied twice
    assert not run.engine.offer_signals([Signal(3, "signal", "payment-webhook", payload={"amount": 42})])


def test_a_sleep_fires_on_its_timer_and_the_next_step_gets_the_signal_payload() -> None:
    run = to_review()
    run.engine.offer_signals([approve(1), Signal(2, "signal", "payment-webhook", payload={"amount": 9})])
    run.drain()
    timer = run.wait_timer("cool_off")
    assert timer.due == 1_000_000.0 + 600
    run.clock.now = timer.due
    run.engine.on_timer(timer)
    dispatched = run.drain()
    assert dispatched == ["publish"]
    assert run.engine.run.steps["cool_off"].output["slept_until"].startswith("1970-01-12T13:56:40")
    assert run.engine.drain().dispatches == []
    run.engine.on_timer(timer)  # a timer fired twice (a takeover) changes nothing
    assert run.drain() == []
    assert run.ok("publish") == []
    assert run.engine.run.status is RunStatus.SUCCEEDED


def test_a_wait_timeout_fails_without_retry_and_a_late_signal_is_not_applied() -> None:
    run = Run("name: w\nsteps:\n  - id: paid\n    wait: {signal: go, timeout: 1h}\n")
    run.engine.start()
    run.drain()
    timer = run.wait_timer("paid")
    run.engine.on_timer(timer)
    run.drain()
    paid = run.engine.run.steps["paid"]
    assert paid.status is StepStatus.FAILED
    assert paid.error == {"type": "WaitTimeout", "message": "no signal 'go' within 1h", "retryable": False}
    assert run.engine.run.status is RunStatus.FAILED
    assert not run.engine.offer_signals([Signal(1, "signal", "go")])


def test_retry_of_a_run_failed_on_a_wait_timeout_waits_again() -> None:
    run = Run("name: w\nsteps:\n  - id: paid\n    wait: {signal: go, timeout: 1h}\n")
    run.engine.start()
    run.drain()
    run.engine.on_timer(run.wait_timer("paid"))
    run.drain()
    assert run.engine.resume()
    run.drain()
    assert run.status("paid") is StepStatus.WAITING
    assert run.engine.run.steps["paid"].attempt == 2
    run.engine.offer_signals([Signal(5, "signal", "go", payload=1)])
    run.drain()
    assert run.engine.run.status is RunStatus.SUCCEEDED


def test_an_approval_timeout_fails_with_approval_timeout() -> None:
    run = to_review()
    run.engine.on_timer(run.wait_timer("review"))
    run.drain()
    error = run.engine.run.steps["review"].error
    assert error is not None
    assert error["type"] == "ApprovalTimeout"


def test_cancel_releases_every_wait() -> None:
    run = Run("name: w\nsteps:\n  - id: a\n    wait: {signal: go}\n  - id: b\n    sleep: 1d\n")
    run.engine.start()
    run.drain()
    assert run.status("a") is StepStatus.WAITING
    assert run.status("b") is StepStatus.WAITING
    assert run.engine.request_cancel()
    run.drain()
    assert run.status("a") is StepStatus.CANCELLED
    assert run.status("b") is StepStatus.CANCELLED
    assert run.engine.run.status is RunStatus.CANCELLED


def test_a_loaded_waiting_step_arms_its_timer_again() -> None:
    run = Run("name: w\nsteps:\n  - id: s\n    sleep: 5s\n")
    run.engine.start()
    run.drain()
    loaded = RunEngine(
        workflow=run.engine.wf,
        projection=fold("r1", run.events),
        inputs={},
        partition=0,
        clock=run.clock,
    )
    timers = loaded.drain().timers
    assert [(t.step, t.kind, t.due) for t in timers] == [("s", WAIT_TIMER, 1_000_005.0)]


def test_sleep_until_an_input_time() -> None:
    run = Run(
        'name: w\ninputs: {at: {type: string}}\nsteps:\n  - id: s\n    sleep: {until: "${{ inputs.at }}"}\n',
        inputs={"at": "1970-01-12T14:00:00Z"},
    )
    run.engine.start()
    run.drain()
    assert run.wait_timer("s").due == 1_000_800.0
    bad = Run(
        'name: w\ninputs: {at: {type: string}}\nsteps:\n  - id: s\n    sleep: {until: "${{ inputs.at }}"}\n',
        inputs={"at": "tomorrow"},
    )
    bad.engine.start()
    bad.drain()
    assert bad.engine.run.status is RunStatus.FAILED
    assert "is not an ISO-8601 time" in (bad.engine.run.steps["s"].error or {})["message"]
