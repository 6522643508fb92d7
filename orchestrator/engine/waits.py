"""Durable waits (docs/spec.md §12.1): steps that wait for a signal, an approval or a timer.

`Waits` is a collaborator of `RunEngine`, like `PatternTransitions` and `Unwinding`: a `wait`,
`approval` or `sleep` step becomes `waiting` (no dispatch, no worker slot) with a `step.waiting`
event whose `due_at` is its timer (a sleep's wake-up, a wait's timeout). The coordinator offers
the run's stored, unconsumed signals (`offer`): each is consumed by the first step waiting for it,
or kept until one does. A consumed signal's id rides on the event that ends the wait, so that the
store marks it consumed in the same transaction, and the fold remembers it. No I/O here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from orchestrator.durations import format_duration
from orchestrator.engine.ops import EngineOps
from orchestrator.engine.output import Timer
from orchestrator.instants import iso, parse_instant
from orchestrator.state import EventType, StepRecord, StepStatus
from orchestrator.step_keys import StepKey
from orchestrator.workflow import StepDef

__all__ = ["WAIT_TIMER", "Signal", "Waits"]

WAIT_TIMER = "wait"  # the Timer kind of a sleep's wake-up and of a wait's or approval's timeout

# What a stored signal row asks for: a named signal, or a decision on an approval step.
SIGNAL, APPROVE, REJECT = "signal", "approve", "reject"


@dataclass(frozen=True, slots=True)
class Signal:
    """A stored signal or approval decision (a row of `run_signals`), as the engine sees it."""

    signal_id: int
    kind: str  # SIGNAL, APPROVE or REJECT
    name: str  # the signal's name; the step id for an approval decision
    payload: Any = None
    by: str | None = None
    comment: str | None = None
    at: float = 0.0


class Waits:
    """Start waits, deliver signals and decisions, and fire their timers, for one run."""

    __slots__ = ("clock", "consumed", "engine", "pending", "run")

    def __init__(self, engine: EngineOps, clock: Callable[[], float]) -> None:
        self.engine = engine
        self.clock = clock
        self.run = engine.run
        self.pending: dict[int, Signal] = {}  # offered, not consumed yet (early signals)
        self.consumed: set[int] = {
            int(r.detail["signal_id"]) for r in self.run.steps.values() if r.detail.get("signal_id") is not None
        }

    def start(self, step: StepDef) -> Timer | None:
        """Step `step` starts waiting; returns its timer, if it has one. A pending signal ends it at once."""
        wait = step.wait
        assert wait is not None
        key = StepKey.parse(step.id)
        attempt = self.run.step(step.id).attempt + 1
        now = self.clock()
        due: float | None = None
        if wait.kind == "sleep":
            due = now + wait.duration if wait.duration is not None else parse_instant(self._until(step))
        elif wait.timeout is not None:
            due = now + wait.timeout
        detail: dict[str, Any] = {"kind": wait.kind, "since": now}
        if wait.signal is not None:
            detail["signal"] = wait.signal
        if wait.approvers is not None:
            detail["approvers"] = list(wait.approvers)
        if wait.timeout is not None:
            detail["timeout"] = wait.timeout
        due = round(due, 3) if due is not None else None
        self.engine.emit(EventType.STEP_WAITING, step=key, attempt=attempt, due_at=due, wait=detail)
        self.deliver()
        if due is None or self.run.steps[step.id].status is not StepStatus.WAITING:
            return None
        return Timer(due, self.run.run_id, step.id, attempt, WAIT_TIMER)

    def _until(self, step: StepDef) -> str:
        assert step.wait is not None
        assert step.wait.until is not None
        value = self.engine.messages.resolve(step.wait.until, None)
        if not isinstance(value, str):
            raise ValueError(f"sleep.until resolved to {value!r}, not an ISO-8601 time")
        return value

    def offer(self, signals: Iterable[Signal]) -> None:
        """Stored signals of this run not consumed yet: deliver them, or keep them for a later wait."""
        self.keep(signals)
        self.deliver()

    def keep(self, signals: Iterable[Signal]) -> None:
        """Hold stored signals not consumed yet without delivering them: a step that starts waiting
        consumes them, and so does the next `offer` (a run just loaded changes nothing until then)."""
        for signal in signals:
            if signal.signal_id not in self.consumed:
                self.pending[signal.signal_id] = signal

    def deliver(self) -> None:
        """Hand each pending signal, oldest first, to a step waiting for it."""
        for signal_id in sorted(self.pending):
            signal = self.pending[signal_id]
            key = self._waiting_for(signal)
            if key is None:
                continue
            del self.pending[signal_id]
            self.consumed.add(signal_id)
            self._wake(key, signal)

    def _waiting_for(self, signal: Signal) -> str | None:
        if signal.kind == SIGNAL:
            waiting = [
                (float(r.detail["wait"].get("since", 0)), key)
                for key, r in self.run.steps.items()
                if _waits(r, "signal") and r.detail["wait"].get("signal") == signal.name
            ]
            return min(waiting)[1] if waiting else None
        record = self.run.steps.get(signal.name)
        return signal.name if record is not None and _waits(record, "approval") else None

    def _wake(self, key: str, signal: Signal) -> None:
        attempt = self.run.steps[key].attempt
        step = StepKey.parse(key)
        if signal.kind == SIGNAL:
            self.engine.emit(EventType.STEP_SUCCEEDED, step=key, attempt=attempt, output=signal.payload, **_id(signal))
            self.engine.after_terminal(step.step)
        elif signal.kind == APPROVE:
            output = {"approved": True, "by": signal.by, "comment": signal.comment, "at": iso(signal.at)}
            self.engine.emit(
                EventType.STEP_SUCCEEDED, step=key, attempt=attempt, output=output, by=signal.by, **_id(signal)
            )
            self.engine.after_terminal(step.step)
        else:
            who = signal.by or "an unnamed approver"
            error = {
                "type": "ApprovalRejected",
                "message": f"rejected by {who}" + (f": {signal.comment}" if signal.comment else ""),
                "retryable": False,
                "by": signal.by,
                "comment": signal.comment,
                "at": iso(signal.at),
            }
            self.engine.fail_now(step, error, by=signal.by, **_id(signal))

    def on_timer(self, key: StepKey, record: StepRecord) -> None:
        """The timer of a waiting step is due: a sleep ends, a wait or approval times out."""
        wait = record.detail.get("wait") or {}
        kind = wait.get("kind")
        if kind == "sleep":
            now = self.clock()
            output = {"slept_until": iso(record.due_at or now), "woke_at": iso(now)}
            self.engine.emit(EventType.STEP_SUCCEEDED, step=key, attempt=record.attempt, output=output)
            self.engine.after_terminal(key.step)
            return
        timeout = format_duration(float(wait.get("timeout") or 0))
        if kind == "approval":
            error = {"type": "ApprovalTimeout", "message": f"no approval or rejection within {timeout}"}
        else:
            error = {"type": "WaitTimeout", "message": f"no signal {wait.get('signal')!r} within {timeout}"}
        self.engine.fail_now(key, {**error, "retryable": False})


def _waits(record: StepRecord, kind: str) -> bool:
    return record.status is StepStatus.WAITING and (record.detail.get("wait") or {}).get("kind") == kind


def _id(signal: Signal) -> dict[str, Any]:
    return {"signal_id": signal.signal_id}
