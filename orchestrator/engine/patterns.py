"""Run-engine transitions of the handoff, hierarchical and pre-hook patterns.

`PatternTransitions` is mixed into `RunEngine`: the methods here decide what a gate's
verdict, a `pre` hook's answer or a child workflow's start mean for a run, using the
engine's own event plumbing (declared by `_Engine`, which `RunEngine` satisfies).
"""

from __future__ import annotations

from typing import Any, Protocol

from orchestrator.errors import TemplateError
from orchestrator.messages import PreCheck, StepMessages
from orchestrator.state import EventType, RunProjection, StepStatus, base_step_id, key_role, pre_check_key
from orchestrator.workflow import CompiledWorkflow
from patterns.handoff import verdict_of
from patterns.hierarchical import ChildStart


class _Engine(Protocol):
    """What the transitions below need from the engine."""

    wf: CompiledWorkflow
    run: RunProjection
    messages: StepMessages
    pre_checks: tuple[PreCheck, ...]
    children: list[ChildStart]
    _in_flight: set[str]
    _open: set[str]
    _ready: list[str]
    _failing: bool

    def _emit(self, kind: EventType, step: str | None = None, attempt: int | None = None, **data: Any) -> None: ...
    def _dispatch(self, key: str) -> None: ...
    def _fail_now(self, key: str, error: dict[str, Any]) -> None: ...
    def _after_terminal(self, sid: str) -> None: ...


def _status(run: RunProjection, key: str) -> StepStatus:
    record = run.steps.get(key)
    return record.status if record is not None else StepStatus.PENDING


class PatternTransitions:
    """Handoff gates, `pre` hook checks and child-workflow dispatch."""

    def _pre_checks_passed(self: _Engine, sid: str) -> bool:
        """Dispatch the `pre` hooks not run yet for this step; True once all of them approved."""
        passed = True
        for check in self.pre_checks:
            key = pre_check_key(sid, check.hook_id)
            status = _status(self.run, key)
            if status is StepStatus.PENDING:
                self._dispatch(key)
            if status is not StepStatus.SUCCEEDED:
                passed = False
        return passed

    def _start_child(self: _Engine, key: str, attempt: int) -> None:
        """Hierarchical: record the dispatch of a child run; the coordinator creates it once committed."""
        try:
            start = self.messages.child_start(key, attempt)
        except (TemplateError, ValueError) as e:
            self._fail_now(key, {"type": "ChildWorkflowError", "message": str(e), "retryable": False})
            return
        self._emit(
            EventType.STEP_DISPATCHED, step=key, attempt=attempt, workflow=start.workflow, child_run=start.run_id
        )
        self._in_flight.add(key)
        self.children.append(start)

    def _on_verdict(self: _Engine, sid: str, output: Any) -> None:
        """Handoff: the gate approved or rejected the output the step proposed."""
        record = self.run.steps[sid]
        if record.status is not StepStatus.CHECKING:
            return
        gate = self.wf.steps[sid].gate
        assert gate is not None
        verdict = verdict_of(output)
        if verdict.approved:
            self._emit(EventType.STEP_SUCCEEDED, step=sid, attempt=record.attempt, output=record.output)
            self._after_terminal(sid)
            return
        rejections = int(record.detail.get("rejections", 0)) + 1
        if verdict.problem is None and rejections < gate.max_attempts and not self._failing:
            self._emit(EventType.STEP_REJECTED, step=sid, attempt=record.attempt, feedback=verdict.feedback)
            self._dispatch(sid)
            return
        error = verdict.error(gate.handler, rejections, gate.max_attempts)
        self._emit(EventType.STEP_FAILED, step=sid, attempt=record.attempt, error=error)
        self._after_terminal(sid)
        self._failing = True

    def _on_pre_check(self: _Engine, sid: str, key: str) -> None:
        """A `pre` hook answered: veto fails the step; otherwise it starts once every check is in."""
        if _status(self.run, sid) is not StepStatus.PENDING:
            return  # cancelled meanwhile
        output = self.run.steps[key].output
        if isinstance(output, dict) and output.get("veto"):
            check = self.messages.pre_check(key)
            reason = output.get("reason") or "no reason given"
            error = {"type": "Vetoed", "message": f"pre hook {check.name!r} vetoed the step: {reason}"}
            self._fail_now(sid, {**error, "retryable": False})
            return
        if all(_status(self.run, pre_check_key(sid, c.hook_id)) is StepStatus.SUCCEEDED for c in self.pre_checks):
            self._ready.append(sid)

    def _abandon_checked(self: _Engine, key: str) -> None:
        """A gate or pre check was cancelled: the step it was checking is cancelled with it."""
        sid = base_step_id(key)
        if key_role(key) in ("gate", "pre") and _status(self.run, sid) in (
            StepStatus.CHECKING,
            StepStatus.PENDING,
        ):
            self._emit(EventType.STEP_CANCELLED, step=sid)
            self._open.discard(sid)
