"""Swarm, handoff, pre hooks and child workflows in the run engine, without I/O."""

from __future__ import annotations

import random
from typing import Any

from orchestrator.engine import PreCheck, RunEngine
from orchestrator.spec import load_workflow
from orchestrator.state import Event, RunProjection, RunStatus, StepStatus, fold
from orchestrator.wire import ResultMessage, StepErrorInfo
from orchestrator.workflow import compile_workflow
from patterns.hierarchical import outcome, parent_of


class Run:
    """An engine plus the whole log it emitted, with shortcuts to feed it results."""

    def __init__(self, yaml_text: str, *, inputs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self.now = 1_000_000.0
        self.engine = RunEngine(
            workflow=compile_workflow(load_workflow(yaml_text)),
            projection=RunProjection(run_id="r1"),
            inputs=inputs or {},
            partition=0,
            clock=lambda: self.now,
            rng=random.Random(1),
            **kwargs,
        )
        self.log: list[Event] = []
        self.sent: list[Any] = []
        self.children: list[Any] = []  # every child run the engine asked to start
        self.engine.start()
        self._collect()

    def _collect(self) -> list[str]:
        out = self.engine.drain()
        events, outbox = out.events, out.dispatches
        self.log.extend(events)
        self.sent.extend(outbox)
        self.children.extend(out.child_starts)
        return sorted(d.message.step for d in outbox)

    def result(self, step: str, status: str = "succeeded", *, attempt: int = 1, output: Any = None) -> list[str]:
        error = None if status == "succeeded" else StepErrorInfo(type="Boom", message="boom", retryable=False)
        self.engine.on_result(
            ResultMessage(run="r1", step=step, attempt=attempt, status=status, output=output, error=error)  # type: ignore[arg-type]
        )
        return self._collect()

    def status(self, key: str) -> StepStatus:
        return self.engine.run.steps[key].status

    def message(self, step: str) -> Any:
        return [d.message for d in self.sent if d.message.step == step][-1]

    def assert_fold_matches(self) -> None:
        assert fold("r1", self.log).to_json() == self.engine.run.to_json()


SWARM = """
name: s
steps:
  - id: answer
    handler: oracle.ask
    swarm: {{replicas: 3, vote: {vote}{quorum}}}
  - {{id: after, handler: builtin.echo, needs: [answer], with: {{v: "${{{{ steps.answer.output }}}}"}}}}
"""


def swarm(vote: str, quorum: int | None = None) -> Run:
    return Run(SWARM.format(vote=vote, quorum=f", quorum: {quorum}" if quorum else ""))


def test_swarm_majority_returns_the_consensus_and_records_the_dissent() -> None:
    run = swarm("majority")
    assert sorted(d.message.step for d in run.sent) == ["answer[0]", "answer[1]", "answer[2]"]
    run.result("answer[0]", output={"v": 1})
    assert run.result("answer[1]", output={"v": 2}) == []
    assert run.result("answer[2]", output={"v": 1}) == ["after"]
    record = run.engine.run.steps["answer"]
    assert record.status is StepStatus.SUCCEEDED
    assert record.output == {"v": 1}
    assert record.detail["vote"]["agreed"] == [0, 2]
    assert record.detail["vote"]["dissent"] == [{"replica": 1, "output": {"v": 2}}]
    assert run.message("after").args == {"v": {"v": 1}}
    run.assert_fold_matches()


def test_swarm_without_quorum_fails_the_step_and_the_run() -> None:
    run = swarm("majority")
    run.result("answer[0]", output={"v": 1})
    run.result("answer[1]", "failed")
    run.result("answer[2]", output={"v": 2})
    record = run.engine.run.steps["answer"]
    assert record.status is StepStatus.FAILED
    assert record.error is not None
    assert record.error["type"] == "NoQuorum"
    assert {"replica": 1, "error": "Boom: boom"} in record.detail["vote"]["dissent"]
    assert run.engine.run.status is RunStatus.FAILED
    assert run.status("after") is StepStatus.CANCELLED
    run.assert_fold_matches()


def test_unanimous_vote_fails_on_any_disagreement() -> None:
    run = swarm("unanimous")
    for i, v in enumerate([1, 1, 2]):
        run.result(f"answer[{i}]", output=v)
    assert run.status("answer") is StepStatus.FAILED
    run = swarm("unanimous")
    for i in range(3):
        run.result(f"answer[{i}]", output=7)
    assert run.status("answer") is StepStatus.SUCCEEDED


def test_first_vote_decides_as_soon_as_the_quorum_agrees() -> None:
    run = swarm("first", quorum=2)
    run.result("answer[2]", output="x")
    assert run.result("answer[0]", output="x") == ["after"]  # replica 1 is still running
    assert run.engine.run.steps["answer"].output == "x"
    run.result("answer[1]", output="y")  # late replica: recorded, changes nothing
    assert run.status("answer[1]") is StepStatus.SUCCEEDED
    assert run.status("answer") is StepStatus.SUCCEEDED
    run.result("after", output={})
    assert run.engine.run.status is RunStatus.SUCCEEDED
    run.assert_fold_matches()


GATE = """
name: g
steps:
  - id: draft
    handler: writer.draft
    gate: {handler: editor.review, with: {min_words: 3}, max_attempts: 3}
  - {id: publish, handler: builtin.echo, needs: [draft]}
"""


def test_gate_approval_releases_the_dependents_with_the_checked_output() -> None:
    run = Run(GATE)
    assert run.result("draft", output={"text": "a b c"}) == ["draft:gate"]
    assert run.status("draft") is StepStatus.CHECKING
    assert run.message("draft:gate").args == {"min_words": 3, "output": {"text": "a b c"}}
    assert run.result("draft:gate", output={"approved": True}) == ["publish"]
    assert run.engine.run.steps["draft"].output == {"text": "a b c"}
    run.assert_fold_matches()


def test_gate_rejection_reruns_the_step_with_feedback_then_fails_after_max_attempts() -> None:
    run = Run(GATE)
    run.result("draft", output={"text": "a"})
    assert run.result("draft:gate", output={"approved": False, "feedback": "too short"}) == ["draft"]
    assert run.message("draft").attempt == 2
    assert run.message("draft").feedback == "too short"
    run.result("draft", attempt=2, output={"text": "a b"})
    run.result("draft:gate", attempt=2, output={"approved": False, "feedback": "still short"})
    run.result("draft", attempt=3, output={"text": "a b"})
    assert run.result("draft:gate", attempt=3, output=False) == []
    record = run.engine.run.steps["draft"]
    assert record.status is StepStatus.FAILED
    assert record.error is not None
    assert record.error["type"] == "GateRejected"
    assert "3 time(s)" in record.error["message"]
    assert run.engine.run.status is RunStatus.FAILED
    run.assert_fold_matches()


def test_a_gate_that_returns_no_verdict_fails_the_step_clearly() -> None:
    run = Run(GATE)
    run.result("draft", output={"text": "a b c"})
    run.result("draft:gate", output="looks fine")
    error = run.engine.run.steps["draft"].error
    assert error is not None
    assert "must return true/false" in error["message"]


HOOKED = """
name: h
steps:
  - {id: charge, handler: payments.charge}
"""


def test_pre_hook_veto_fails_the_step_before_it_is_dispatched() -> None:
    run = Run(HOOKED, pre_checks=(PreCheck(7, "policy", "policy.check", {}),))
    assert [d.message.step for d in run.sent] == ["charge:pre-7"]
    assert run.sent[0].queue == "hooks"
    assert run.result("charge:pre-7", output={"veto": True, "reason": "over budget"}) == []
    error = run.engine.run.steps["charge"].error
    assert error is not None
    assert error["type"] == "Vetoed"
    assert "over budget" in error["message"]
    assert run.engine.run.status is RunStatus.FAILED
    assert not any(d.message.step == "charge" for d in run.sent)
    run.assert_fold_matches()


def test_pre_hooks_annotate_and_the_step_waits_for_all_of_them() -> None:
    checks = (PreCheck(1, "a", "h.a", {}), PreCheck(2, "b", "h.b", {}))
    run = Run(HOOKED, pre_checks=checks)
    assert run.result("charge:pre-1", output={"annotations": {"risk": "low"}}) == []
    assert run.result("charge:pre-2", output=None) == ["charge"]
    assert run.message("charge").annotations == {"risk": "low"}
    run.assert_fold_matches()


PARENT = """
name: parent
steps:
  - {id: child, workflow: kid, with: {n: 2}, retry: {max_attempts: 2, initial_delay: 1s, jitter: false}}
  - {id: after, handler: builtin.echo, needs: [child], with: {got: "${{ steps.child.output }}"}}
workflows:
  kid:
    name: kid
    inputs: {n: {type: integer, required: true}}
    steps:
      - {id: work, handler: builtin.echo, with: {n: "${{ inputs.n }}"}}
"""


def test_child_workflow_is_started_with_its_inputs_and_its_outputs_become_the_step_output() -> None:
    run = Run(PARENT)
    [start] = run.children
    assert start.run_id == "r1.child.1"
    assert (start.workflow, start.inputs, start.depth) == ("kid", {"n": 2}, 1)
    assert start.definition["workflows"]["kid"]["name"] == "kid"  # grandchildren stay resolvable
    assert parent_of(start.run_id) == ("r1", "child", 1)
    assert run.sent == []  # a child run is not a queue message
    assert run.engine.in_flight_dispatches() == []
    assert [c.run_id for c in run.engine.child_starts()] == ["r1.child.1"]
    done = outcome("r1.child.1", RunStatus.SUCCEEDED, {"outputs": {"work": {"n": 2}}})
    assert done is not None
    run.engine.on_result(done)
    assert run._collect() == ["after"]
    assert run.message("after").args == {"got": {"work": {"n": 2}}}
    run.assert_fold_matches()


def test_failed_child_is_retried_as_a_new_child_run_then_fails_the_parent() -> None:
    run = Run(PARENT)
    failure = outcome("r1.child.1", RunStatus.FAILED, {"error": {"step": "work", "message": "boom"}})
    assert failure is not None
    assert failure.error is not None
    assert "ended failed at step 'work': boom" in failure.error.message
    run.engine.on_result(failure)
    timers = run.engine.drain().timers
    run.now = timers[0].due
    run.engine.on_timer(timers[0])
    run._collect()
    assert [c.run_id for c in run.children] == ["r1.child.1", "r1.child.2"]
    second = outcome("r1.child.2", RunStatus.COMPENSATED, {"error": {"message": "undone"}})
    assert second is not None
    run.engine.on_result(second)
    assert run.engine.run.status is RunStatus.FAILED
    assert run.engine.run.state["error"]["type"] == "ChildRunFailed"


def test_depth_limit_and_bad_child_inputs_fail_the_step_without_retrying() -> None:
    run = Run(PARENT, depth=5, max_depth=5)
    error = run.engine.run.steps["child"].error
    assert error is not None
    assert "levels deep" in error["message"]
    assert run.children == []
    bad = Run(PARENT.replace("with: {n: 2}", "with: {n: two}"))
    error = bad.engine.run.steps["child"].error
    assert error is not None
    assert "must be of type integer" in error["message"]
    assert bad.engine.run.status is RunStatus.FAILED


def test_cancel_propagates_to_in_flight_child_runs() -> None:
    run = Run(PARENT)
    assert run.engine.request_cancel()
    assert run.engine.child_cancels == ["r1.child.1"]
    cancelled = outcome("r1.child.1", RunStatus.CANCELLED, {"error": {"message": "the run was cancelled"}})
    assert cancelled is not None
    run.engine.on_result(cancelled)
    assert run.engine.run.status is RunStatus.CANCELLED


def test_resuming_a_vetoed_step_asks_its_pre_hooks_again() -> None:
    run = Run(HOOKED, pre_checks=(PreCheck(7, "policy", "policy.check", {}),))
    run.result("charge:pre-7", output={"veto": True, "reason": "over budget"})
    assert run.engine.run.status is RunStatus.FAILED
    assert run.engine.resume()
    out = run.engine.drain()
    events, outbox = out.events, out.dispatches
    run.log.extend(events)
    assert [d.message.step for d in outbox] == ["charge:pre-7"]  # not the step itself
    assert outbox[0].message.attempt == 2
    run.sent.extend(outbox)
    assert run.result("charge:pre-7", attempt=2, output={}) == ["charge"]
    run.assert_fold_matches()
