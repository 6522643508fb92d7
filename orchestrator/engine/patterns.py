"""Run-engine transitions of the for_each, swarm, handoff, pre-hook and hierarchical patterns.

`PatternTransitions` is a collaborator of `RunEngine`: it decides what an item's result, a
gate's verdict, a `pre` hook's answer or a child workflow's start mean for the run, and acts
only through what `EngineOps` offers: a few engine operations, the run's projection and
messages, and the `RunIndexes` they share.
"""

from __future__ import annotations

from typing import Any

from orchestrator import run_limits
from orchestrator.engine.indexes import status_of
from orchestrator.engine.ops import EngineOps
from orchestrator.errors import TemplateError
from orchestrator.messages import PreCheck
from orchestrator.state import TERMINAL_STEP_STATUSES, EventType, StepStatus
from orchestrator.step_keys import StepKey, StepRole
from orchestrator.workflow import StepDef
from patterns.handoff import verdict_of
from patterns.hierarchical import ChildStart
from patterns.swarm import count_votes


class PatternTransitions:
    """for_each items and swarm replicas, handoff gates, `pre` hook checks and child runs."""

    __slots__ = ("engine", "idx", "limits", "messages", "pre_checks", "run", "wf")

    def __init__(self, engine: EngineOps) -> None:
        self.engine = engine
        self.idx = engine.idx
        self.wf = engine.wf
        self.run = engine.run
        self.messages = engine.messages
        self.pre_checks = engine.pre_checks
        self.limits = engine.limits

    # -- for_each and swarm --------------------------------------------------------------------------

    def fan_out(self, step: StepDef) -> None:
        """Dispatch every for_each item, or every swarm replica (TemplateError when the items are not a list)."""
        if step.swarm is not None:
            count = step.swarm.replicas
        else:
            items = self.messages.resolve(step.for_each, None)
            if not isinstance(items, list):
                raise TemplateError(f"for_each of step {step.id!r} must resolve to a list, got {type(items).__name__}")
            count = len(items)
            steps = len(self.wf.steps)
            run_limits.check_fan_out(step.id, count, self.run.steps, static_steps=steps, limits=self.limits)
            self.messages.items[step.id] = items
        self.engine.emit(EventType.STEP_FANNED_OUT, step=step.id, items=count)
        left = 0
        for index in range(count):
            key = StepKey.item(step.id, index)
            if status_of(self.run.steps, str(key)) is StepStatus.SUCCEEDED:
                continue  # kept from before a resume
            left += 1
            self.engine.dispatch(key)
        self.idx.items_left[step.id] = left
        if left == 0:
            self._items_settled(step.id)

    def item_succeeded(self, sid: str) -> None:
        if status_of(self.run.steps, sid) in TERMINAL_STEP_STATUSES:
            return  # the step already failed, or its swarm already decided
        self.idx.items_left[sid] -= 1
        if self.wf.steps[sid].swarm is not None or self.idx.items_left[sid] == 0:
            self._items_settled(sid)

    def replica_failed(self, sid: str) -> None:
        """A swarm replica failed for good: a dissenting vote."""
        if status_of(self.run.steps, sid) not in TERMINAL_STEP_STATUSES:
            self.idx.items_left[sid] -= 1
            self._items_settled(sid)

    def _items_settled(self, sid: str) -> None:
        """A for_each item or swarm replica finished: gather the outputs, or count the votes."""
        record = self.run.steps[sid]
        # A run loaded mid fan-out counts the fanned-out step (dispatched) as in flight: not any more.
        self.idx.in_flight.discard(sid)
        count = int(record.detail.get("items") or 0)
        swarm = self.wf.steps[sid].swarm
        if swarm is None:
            gathered = [self.run.steps[str(StepKey.item(sid, i))].output for i in range(count)]
            self.engine.emit(EventType.STEP_SUCCEEDED, step=sid, output=gathered)
            self.engine.after_terminal(sid)
            return
        result = count_votes(self.run.steps, sid, replicas=count, quorum=swarm.quorum, vote=swarm.vote)
        if not result.decided:
            return
        if result.consensus:
            self.engine.emit(EventType.STEP_SUCCEEDED, step=sid, output=result.output, vote=result.record)
        else:
            self.engine.emit(EventType.STEP_FAILED, step=sid, error=result.error, vote=result.record)
            self.idx.failing = True
        self.engine.after_terminal(sid)

    # -- pre hooks -----------------------------------------------------------------------------------

    def pre_checks_passed(self, sid: str) -> bool:
        """Dispatch the `pre` hooks not run yet for this step; True once all of them approved."""
        passed = True
        for check in self.pre_checks:
            key = StepKey.pre_check(sid, check.hook_id)
            status = status_of(self.run.steps, str(key))
            if status is StepStatus.PENDING:
                self.engine.dispatch(key)
            if status is not StepStatus.SUCCEEDED:
                passed = False
        return passed

    def on_pre_check(self, key: StepKey) -> None:
        """A `pre` hook answered: veto fails the step; otherwise it starts once every check is in."""
        sid = key.step
        if status_of(self.run.steps, sid) is not StepStatus.PENDING:
            return  # cancelled meanwhile
        output = self.run.steps[str(key)].output
        if isinstance(output, dict) and output.get("veto"):
            check = self.messages.pre_check(key)
            reason = output.get("reason") or "no reason given"
            error = {"type": "Vetoed", "message": f"pre hook {check.name!r} vetoed the step: {reason}"}
            self.engine.fail_now(StepKey(sid), {**error, "retryable": False})
            return
        if all(status_of(self.run.steps, self._pre_key(sid, c)) is StepStatus.SUCCEEDED for c in self.pre_checks):
            self.idx.ready.append(sid)

    def reset_pre_checks(self, sid: str) -> None:
        """A step resumes: its `pre` hooks decide again, so that a veto is not bypassed."""
        for check in self.pre_checks:
            key = self._pre_key(sid, check)
            if status_of(self.run.steps, key) is StepStatus.SUCCEEDED:
                self.engine.emit(EventType.STEP_RESET, step=key, attempt=self.run.steps[key].attempt)

    @staticmethod
    def _pre_key(sid: str, check: PreCheck) -> str:
        return str(StepKey.pre_check(sid, check.hook_id))

    # -- handoff -------------------------------------------------------------------------------------

    def on_verdict(self, sid: str, output: Any) -> None:
        """Handoff: the gate approved or rejected the output the step proposed."""
        record = self.run.steps[sid]
        if record.status is not StepStatus.CHECKING:
            return
        gate = self.wf.steps[sid].gate
        assert gate is not None
        verdict = verdict_of(output)
        if verdict.approved:
            self.engine.emit(EventType.STEP_SUCCEEDED, step=sid, attempt=record.attempt, output=record.output)
            self.engine.after_terminal(sid)
            return
        rejections = int(record.detail.get("rejections", 0)) + 1
        if verdict.problem is None and rejections < gate.max_attempts and not self.idx.failing:
            self.engine.emit(EventType.STEP_REJECTED, step=sid, attempt=record.attempt, feedback=verdict.feedback)
            self.engine.dispatch(StepKey.parse(sid))
            return
        error = verdict.error(gate.handler, rejections, gate.max_attempts)
        self.engine.emit(EventType.STEP_FAILED, step=sid, attempt=record.attempt, error=error)
        self.engine.after_terminal(sid)
        self.idx.failing = True

    # -- hierarchical --------------------------------------------------------------------------------

    def start_child(self, key: StepKey, attempt: int) -> ChildStart | None:
        """Record the dispatch of a child run, returned for the coordinator to create once committed."""
        try:
            start = self.messages.child_start(key, attempt)
        except (TemplateError, ValueError) as e:
            self.engine.fail_now(key, {"type": "ChildWorkflowError", "message": str(e), "retryable": False})
            return None
        self.engine.emit(
            EventType.STEP_DISPATCHED, step=key, attempt=attempt, workflow=start.workflow, child_run=start.run_id
        )
        self.idx.in_flight.add(str(key))
        return start

    # -- cancel --------------------------------------------------------------------------------------

    def abandon_checked(self, key: StepKey) -> None:
        """A gate or pre check was cancelled: the step it was checking is cancelled with it."""
        sid = key.step
        if key.role in (StepRole.GATE, StepRole.PRE) and status_of(self.run.steps, sid) in (
            StepStatus.CHECKING,
            StepStatus.PENDING,
        ):
            self.engine.emit(EventType.STEP_CANCELLED, step=sid)
            self.idx.open.discard(sid)
