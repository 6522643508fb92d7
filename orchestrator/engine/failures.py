"""How a step instance's failure ends: a retry, or a final failure and what it means for the run.

`Failures` is a collaborator of `RunEngine`: a retryable failure with attempts left (and the run
not unwinding) schedules a retry with backoff; otherwise the instance fails for good. A final
failure of a compensation becomes a dead letter; of a swarm replica, the swarm's business; of an
item, gate handler or pre hook, the failure of its step; and the run starts unwinding.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from orchestrator.engine.indexes import status_of
from orchestrator.engine.output import Timer
from orchestrator.state import TERMINAL_STEP_STATUSES, EventType
from orchestrator.step_keys import StepKey, StepRole
from patterns.dead_letter import DeadLetter
from patterns.retry import compute_backoff

if TYPE_CHECKING:
    from orchestrator.engine.core import RunEngine

# How a step's failure names the instance that caused it.
_CAUSES = {StepRole.ITEM: "item", StepRole.GATE: "gate handler", StepRole.PRE: "pre hook"}


class Failures:
    """Retry or final failure of one run's step instances."""

    __slots__ = ("engine",)

    def __init__(self, engine: RunEngine) -> None:
        self.engine = engine

    def on_failure(self, key: StepKey, attempt: int, error: dict[str, Any]) -> None:
        """A failed attempt: retry it after the policy's backoff, or fail the instance for good."""
        e = self.engine
        text = str(key)
        record = e.run.steps[text]
        policy = e.messages.policy_of(key)
        failures = int(record.detail.get("failures", 0)) + 1
        unwinding = e.idx.failing and key.role is not StepRole.COMPENSATE
        if error.get("retryable", True) and failures < policy.max_attempts and not unwinding:
            due = round(e.clock() + compute_backoff(failures, policy, e.rng), 3)
            e.emit(EventType.STEP_RETRY_SCHEDULED, step=text, attempt=attempt, due_at=due, error=error)
            e.timers.append(Timer(due, e.run.run_id, text, attempt, "retry"))
            return
        e.emit(EventType.STEP_FAILED, step=text, attempt=attempt, error=error)
        e.idx.in_flight.discard(text)
        self.on_final_failure(key, error)

    def fail_now(self, key: StepKey, error: dict[str, Any], **data: Any) -> None:
        e = self.engine
        text = str(key)
        record = e.run.step(text)
        e.emit(EventType.STEP_FAILED, step=text, attempt=record.attempt, error=error, **data)
        e.idx.in_flight.discard(text)
        self.on_final_failure(key, error)

    def on_final_failure(self, key: StepKey, error: dict[str, Any]) -> None:
        e = self.engine
        sid, role = key.step, key.role
        if role is StepRole.COMPENSATE:
            record = e.run.steps[str(key)]
            e.dead_letters.append(
                DeadLetter.compensation(
                    run_id=e.run.run_id,
                    step_key=str(key),
                    attempt=record.attempt,
                    queue=e.messages.queue_of(key),
                    error=error,
                )
            )
            return
        if role is StepRole.ITEM and e.wf.steps[sid].swarm is not None:
            e.patterns.replica_failed(sid)
            return
        if role in _CAUSES:
            if status_of(e.run.steps, sid) in TERMINAL_STEP_STATUSES:
                return
            message = f"{_CAUSES[role]} {key} failed: {error.get('message', '')}"
            e.emit(EventType.STEP_FAILED, step=sid, error={**error, "message": message, "item": str(key)})
        e.after_terminal(sid)
        e.idx.failing = True
