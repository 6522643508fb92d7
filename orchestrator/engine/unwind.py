"""How a failing or cancelled run ends: unwinding, and the saga's compensations.

`Unwinding` is a collaborator of `RunEngine`: once a step failed for good or a cancel was
requested, it cancels what has not started, waits for what is in flight, and then fails or
cancels the run, or (`on_failure: compensate`) compensates what succeeded, dependents first.
"""

from __future__ import annotations

from typing import Any

from orchestrator.engine.indexes import status_of
from orchestrator.engine.ops import EngineOps
from orchestrator.state import FAILED_STEP_STATUSES, TERMINAL_STEP_STATUSES, EventType, StepStatus
from orchestrator.step_keys import StepKey
from patterns.saga import compensation_blockers, ready_compensations


class Unwinding:
    """Failure, cancel and compensation of one run."""

    __slots__ = ("engine", "idx", "run", "wf")

    def __init__(self, engine: EngineOps) -> None:
        self.engine = engine
        self.idx = engine.idx
        self.wf = engine.wf
        self.run = engine.run

    def unwind(self) -> None:
        """Stop dispatching, cancel what has not started, and finish once nothing is in flight."""
        for sid in self.wf.order:  # a waiting step is released (docs/spec.md §12.1)
            if status_of(self.run.steps, sid) in (StepStatus.PENDING, StepStatus.WAITING):
                self.engine.emit(EventType.STEP_CANCELLED, step=sid)
                self.idx.open.discard(sid)
        self.idx.ready.clear()
        if self.idx.in_flight:
            return
        error = self._run_error()
        if self.wf.on_failure == "compensate":
            self.engine.emit(EventType.RUN_COMPENSATING, error=error)
            self.advance_compensation()
        elif self.run.state.get("cancel_requested"):
            self.engine.emit(EventType.RUN_CANCELLED, error=error)
        else:
            self.engine.emit(EventType.RUN_FAILED, error=error)

    def advance_compensation(self) -> None:
        """Dispatch the compensations whose dependents are compensated; end the run once all finished."""
        targets = self._to_compensate()
        blockers = compensation_blockers({s: d.dependents for s, d in self.wf.steps.items()}, targets)
        started, finished, failed = set(), set(), False
        for sid in targets:
            record = self.run.steps.get(str(StepKey.compensation(sid)))
            if record is not None:
                started.add(sid)
                if record.status in TERMINAL_STEP_STATUSES:
                    finished.add(sid)
                    failed |= record.status is not StepStatus.SUCCEEDED
        for sid in ready_compensations(blockers, started, finished):
            self.engine.dispatch(StepKey.compensation(sid))
            started.add(sid)
        if finished == set(targets):
            if failed:
                self.engine.emit(EventType.RUN_COMPENSATION_FAILED, error=self.run.state.get("error"))
            else:
                self.engine.emit(EventType.RUN_COMPENSATED)

    def _run_error(self) -> dict[str, Any] | None:
        for sid in self.wf.order:
            record = self.run.steps.get(sid)
            if record is not None and record.status in FAILED_STEP_STATUSES:
                return {"step": sid, **(record.error or {})}
        if self.run.state.get("cancel_requested"):
            return {"type": "Cancelled", "message": "the run was cancelled"}
        return None

    def _to_compensate(self) -> list[str]:
        return [
            sid
            for sid in self.wf.order
            if self.wf.steps[sid].compensate is not None
            and status_of(self.run.steps, sid) in (StepStatus.SUCCEEDED, StepStatus.COMPENSATED)
        ]
