"""The counters a run engine keeps beside its projection, shared with the transitions it calls.

They are derived from the projection (`rebuild`) and kept up to date by the transitions, so
that each result costs O(dependents) instead of O(steps).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from orchestrator.state import (
    ACTIVE_STEP_STATUSES,
    FAILED_STEP_STATUSES,
    TERMINAL_STEP_STATUSES,
    RunProjection,
    RunStatus,
    StepRecord,
    StepStatus,
)
from orchestrator.step_keys import StepKey, StepRole
from orchestrator.workflow import CompiledWorkflow


@dataclass(slots=True)
class RunIndexes:
    """Where each step of one run stands, beyond what its record says."""

    waiting: dict[str, int] = field(default_factory=dict)  # pending step id → needs not succeeded yet
    ready: list[str] = field(default_factory=list)  # step ids whose needs all succeeded, to start
    open: set[str] = field(default_factory=set)  # step ids not terminal yet
    in_flight: set[str] = field(default_factory=set)  # keys dispatched, running or waiting for a retry
    items_left: dict[str, int] = field(default_factory=dict)  # fanned-out step id → items not finished
    failing: bool = False  # a step failed for good, or a cancel was requested: the run unwinds

    def rebuild(self, wf: CompiledWorkflow, run: RunProjection) -> None:
        """Derive every counter from the projection again (after a load or a resume)."""
        steps = run.steps
        self.waiting, self.ready, self.open, self.in_flight, self.items_left = {}, [], set(), set(), {}
        self.failing = bool(run.state.get("cancel_requested"))
        for sid in wf.order:
            status = status_of(steps, sid)
            if status not in TERMINAL_STEP_STATUSES:
                self.open.add(sid)
            if status in FAILED_STEP_STATUSES:
                self.failing = True
            if status is StepStatus.PENDING:
                unmet = sum(1 for n in wf.steps[sid].needs if status_of(steps, n) is not StepStatus.SUCCEEDED)
                self.waiting[sid] = unmet
                if unmet == 0 and run.status is RunStatus.RUNNING:
                    self.ready.append(sid)
        for key, record in steps.items():
            if record.status in ACTIVE_STEP_STATUSES:
                self.in_flight.add(key)
            if record.status not in TERMINAL_STEP_STATUSES:
                parsed = StepKey.parse(key)
                if parsed.role is StepRole.ITEM:
                    self.items_left[parsed.step] = self.items_left.get(parsed.step, 0) + 1

    def all_ready(self, wf: CompiledWorkflow) -> None:
        """Every step without unmet needs is ready to start (the run starts, or resumes)."""
        self.ready = [sid for sid in wf.order if self.waiting.get(sid) == 0]


def status_of(steps: Mapping[str, StepRecord], key: str) -> StepStatus:
    """A step key's status; a key without a record is pending."""
    record = steps.get(key)
    return record.status if record is not None else StepStatus.PENDING
