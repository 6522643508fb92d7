"""Run and step states, events, and the fold that projects an event log into run state.

This module is pure: the coordinator appends events and applies them with `apply_event`
to its in-memory projection; `steppe admin rebuild` and the tests fold the stored log
with the same function and compare with the stored rows (event sourcing, docs/spec.md §6).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class RunStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    COMPENSATING = "compensating"
    COMPENSATED = "compensated"
    COMPENSATION_FAILED = "compensation_failed"


TERMINAL_RUN_STATUSES = frozenset(
    {
        RunStatus.SUCCEEDED,
        RunStatus.FAILED,
        RunStatus.CANCELLED,
        RunStatus.COMPENSATED,
        RunStatus.COMPENSATION_FAILED,
    }
)
SUCCESSFUL_RUN_STATUSES = frozenset({RunStatus.SUCCEEDED})


class StepStatus(StrEnum):
    PENDING = "pending"
    DISPATCHED = "dispatched"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"
    RETRY_SCHEDULED = "retry_scheduled"
    DEAD_LETTERED = "dead_lettered"
    COMPENSATED = "compensated"
    CHECKING = "checking"  # handoff: the attempt succeeded and its gate is checking the output
    THROTTLED = "throttled"  # held back by a concurrency or rate limit; holds no worker slot (§12.2)
    WAITING = "waiting"  # for a signal, an approval or a timer (docs/spec.md §12.1); holds no worker slot


IN_FLIGHT_STEP_STATUSES = frozenset({StepStatus.DISPATCHED, StepStatus.RUNNING})
ACTIVE_STEP_STATUSES = IN_FLIGHT_STEP_STATUSES | {StepStatus.RETRY_SCHEDULED, StepStatus.THROTTLED}
TERMINAL_STEP_STATUSES = frozenset(
    {
        StepStatus.SUCCEEDED,
        StepStatus.FAILED,
        StepStatus.SKIPPED,
        StepStatus.CANCELLED,
        StepStatus.DEAD_LETTERED,
        StepStatus.COMPENSATED,
    }
)
FAILED_STEP_STATUSES = frozenset({StepStatus.FAILED, StepStatus.DEAD_LETTERED})


class EventType(StrEnum):
    RUN_SUBMITTED = "run.submitted"
    RUN_STARTED = "run.started"
    RUN_SUCCEEDED = "run.succeeded"
    RUN_FAILED = "run.failed"
    RUN_CANCEL_REQUESTED = "run.cancel_requested"
    RUN_CANCELLED = "run.cancelled"
    RUN_COMPENSATING = "run.compensating"
    RUN_COMPENSATED = "run.compensated"
    RUN_COMPENSATION_FAILED = "run.compensation_failed"
    RUN_RESUMED = "run.resumed"
    RUN_THROTTLED = "run.throttled"  # flow control: the run waits for a slot of its workflow's key (§12.2)
    STEP_DISPATCHED = "step.dispatched"
    STEP_STARTED = "step.started"
    STEP_SUCCEEDED = "step.succeeded"
    STEP_FAILED = "step.failed"
    STEP_RETRY_SCHEDULED = "step.retry_scheduled"
    STEP_SKIPPED = "step.skipped"
    STEP_CANCELLED = "step.cancelled"
    STEP_DEAD_LETTERED = "step.dead_lettered"
    STEP_FANNED_OUT = "step.fanned_out"
    STEP_COMPENSATED = "step.compensated"
    STEP_RESET = "step.reset"
    STEP_CHECKING = "step.checking"  # handoff: output proposed, the gate runs
    STEP_REJECTED = "step.rejected"  # handoff: the gate rejected the output; the step runs again
    STEP_THROTTLED = "step.throttled"  # flow control: the step waits for a slot or a rate token
    STEP_WAITING = "step.waiting"  # a wait, approval or sleep step waits (docs/spec.md §12.1)


RUN_TERMINAL_EVENTS = {
    EventType.RUN_SUCCEEDED: RunStatus.SUCCEEDED,
    EventType.RUN_FAILED: RunStatus.FAILED,
    EventType.RUN_CANCELLED: RunStatus.CANCELLED,
    EventType.RUN_COMPENSATED: RunStatus.COMPENSATED,
    EventType.RUN_COMPENSATION_FAILED: RunStatus.COMPENSATION_FAILED,
}


@dataclass(frozen=True, slots=True)
class Event:
    """One entry of a run's append-only log."""

    seq: int
    type: EventType
    step: str | None = None
    attempt: int | None = None
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class StepRecord:
    """Projection of one step instance (a row of `workflow_steps`)."""

    step_id: str
    status: StepStatus = StepStatus.PENDING
    attempt: int = 0
    output: Any = None
    error: dict[str, Any] | None = None
    due_at: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def to_row(self) -> dict[str, Any]:
        return {
            "step_id": self.step_id,
            "status": str(self.status),
            "attempt": self.attempt,
            "output": self.output,
            "error": self.error,
            "due_at": self.due_at,
            "detail": self.detail,
        }


@dataclass(slots=True)
class RunProjection:
    """Projection of a run: the run-level state (JSONB on `workflow_runs`) and its step rows."""

    run_id: str
    status: RunStatus = RunStatus.PENDING
    state: dict[str, Any] = field(default_factory=dict)
    steps: dict[str, StepRecord] = field(default_factory=dict)
    last_seq: int = 0

    def step(self, key: str) -> StepRecord:
        record = self.steps.get(key)
        if record is None:
            record = self.steps[key] = StepRecord(step_id=base_step_id(key))
        return record

    def to_json(self) -> dict[str, Any]:
        return {
            "status": str(self.status),
            "state": self.state,
            "steps": {k: v.to_row() for k, v in sorted(self.steps.items())},
            "last_seq": self.last_seq,
        }


def base_step_id(step_key: str) -> str:
    """`pack[3]` → `pack`, `charge:compensate` → `charge`: the step id of any stored key, for display
    (the engine parses keys into `orchestrator.step_keys.StepKey`)."""
    for sep in ("[", ":"):
        if sep in step_key:
            step_key = step_key.split(sep, 1)[0]
    return step_key


def apply_event(run: RunProjection, event: Event) -> None:  # noqa: PLR0912, PLR0915 - one branch per event type
    # Long on purpose: one arm per event type; splitting would scatter the fold that defines the projection.
    """Fold one event into the projection. Events are facts: no validation happens here."""
    if event.seq != run.last_seq + 1:
        raise ValueError(f"event seq {event.seq} does not follow {run.last_seq} in run {run.run_id}")
    run.last_seq = event.seq
    data = event.data
    kind = event.type
    if kind.startswith("run."):
        _apply_run_event(run, kind, data)
        return
    assert event.step is not None
    record = run.step(event.step)
    if event.attempt is not None:
        record.attempt = event.attempt
    if kind is EventType.STEP_DISPATCHED:
        record.status = StepStatus.DISPATCHED
        record.due_at = None
        record.error = None
        if "child_run" in data:
            record.detail["child_run"] = data["child_run"]
    elif kind is EventType.STEP_STARTED:
        record.status = StepStatus.RUNNING
        record.detail["worker"] = data.get("worker")
        record.detail["started_at"] = data.get("at")
    elif kind is EventType.STEP_SUCCEEDED:
        record.status = StepStatus.SUCCEEDED
        record.output = data.get("output")
        record.error = None
        record.due_at = None
        if "vote" in data:
            record.detail["vote"] = data["vote"]
        _note_wake(record, data)
    elif kind is EventType.STEP_FAILED:
        record.status = StepStatus.FAILED
        record.error = data.get("error")
        record.detail["failures"] = record.detail.get("failures", 0) + 1
        if "vote" in data:
            record.detail["vote"] = data["vote"]
        _note_wake(record, data)
    elif kind is EventType.STEP_WAITING:
        record.status = StepStatus.WAITING
        record.due_at = data.get("due_at")
        record.error = None
        record.detail["wait"] = data.get("wait")
    elif kind is EventType.STEP_CHECKING:
        record.status = StepStatus.CHECKING
        record.output = data.get("output")
    elif kind is EventType.STEP_REJECTED:
        record.status = StepStatus.PENDING
        record.output = None
        record.detail["rejections"] = record.detail.get("rejections", 0) + 1
        record.detail["feedback"] = data.get("feedback")
    elif kind is EventType.STEP_RETRY_SCHEDULED:
        record.status = StepStatus.RETRY_SCHEDULED
        record.error = data.get("error")
        record.due_at = data.get("due_at")
        if data.get("counts", True):
            # Deferrals (open circuit breaker) do not burn an attempt.
            record.detail["failures"] = record.detail.get("failures", 0) + 1
    elif kind is EventType.STEP_THROTTLED:
        record.status = StepStatus.THROTTLED
        record.due_at = None
        record.detail["limits"] = data.get("limits")
        record.detail["throttled_at"] = data.get("at")
        record.detail["priority"] = data.get("priority", 1)
    elif kind is EventType.STEP_SKIPPED:
        record.status = StepStatus.SKIPPED
        record.detail["reason"] = data.get("reason")
    elif kind is EventType.STEP_CANCELLED:
        record.status = StepStatus.CANCELLED
        record.due_at = None
    elif kind is EventType.STEP_DEAD_LETTERED:
        record.status = StepStatus.DEAD_LETTERED
        record.error = data.get("error")
        record.detail["failures"] = record.detail.get("failures", 0) + 1
    elif kind is EventType.STEP_FANNED_OUT:
        record.status = StepStatus.DISPATCHED
        record.detail["items"] = data.get("items")
    elif kind is EventType.STEP_COMPENSATED:
        record.status = StepStatus.COMPENSATED
    elif kind is EventType.STEP_RESET:
        record.status = StepStatus.PENDING
        record.error = None
        record.due_at = None
        record.output = None
        record.detail.pop("items", None)
        record.detail.pop("rejections", None)
        record.detail.pop("feedback", None)
        for waited in ("wait", "signal_id", "by"):  # a wait that timed out waits again
            record.detail.pop(waited, None)
        record.detail["failures"] = 0
        if "args" in data:  # a dead letter replayed with an edited payload
            record.detail["args"] = data["args"]
    else:  # pragma: no cover - exhaustive over EventType
        raise ValueError(f"unknown event type {kind}")


def _note_wake(record: StepRecord, data: dict[str, Any]) -> None:
    """What ended a wait: the signal (or approval) consumed, and who decided; `None` clears the timer."""
    if "signal_id" in data:
        record.detail["signal_id"] = data["signal_id"]
        record.due_at = None
    if "by" in data:
        record.detail["by"] = data["by"]


def _apply_run_event(run: RunProjection, kind: EventType, data: dict[str, Any]) -> None:
    if kind is EventType.RUN_SUBMITTED:
        run.status = RunStatus.PENDING
        run.state = {"workflow": data.get("workflow")}
    elif kind is EventType.RUN_STARTED:
        run.status = RunStatus.RUNNING
    elif kind is EventType.RUN_CANCEL_REQUESTED:
        run.state["cancel_requested"] = True
    elif kind is EventType.RUN_COMPENSATING:
        run.status = RunStatus.COMPENSATING
        run.state["error"] = data.get("error")
    elif kind is EventType.RUN_THROTTLED:  # the run stays pending until admitted
        run.state["throttled"] = data
    elif kind is EventType.RUN_RESUMED:
        run.status = RunStatus.RUNNING
        run.state.pop("error", None)
        run.state.pop("outputs", None)
        run.state.pop("cancel_requested", None)
    elif kind in RUN_TERMINAL_EVENTS:
        run.status = RUN_TERMINAL_EVENTS[kind]
        if "outputs" in data:
            run.state["outputs"] = data["outputs"]
        if "error" in data:
            run.state["error"] = data["error"]
    else:  # pragma: no cover - exhaustive over EventType
        raise ValueError(f"unknown event type {kind}")


def fold(run_id: str, events: list[Event]) -> RunProjection:
    """Rebuild a run's projection from its whole log."""
    run = RunProjection(run_id=run_id)
    for event in events:
        apply_event(run, event)
    return run
