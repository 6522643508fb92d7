"""The run engine: pure decision logic that turns results and timers into events and dispatches.

A `RunEngine` owns one run's projection. Every change goes through `emit`, which appends
an event and folds it into the projection with `state.apply_event`, so the in-memory
state is by construction the fold of the log. The coordinator drains an `EngineOutput`:
events to commit, then dispatches to publish, timers to schedule and child runs to start or
cancel. No I/O happens here.
Messages are built by `orchestrator.messages`. The engine parses each step key once, where it
enters (a result, a timer, a loaded projection), and passes the `StepKey` along; it delegates to
two collaborators that act through `EngineOps`: `PatternTransitions` (for_each, swarm, handoff,
`pre` hooks, child workflows, in `engine.patterns`) and `Unwinding` (failure, cancel and the
saga, in `engine.unwind`); `Failures` (retry or final failure of a step instance, in
`engine.failures`), `Throttle` (`engine.limits`) and `Waits` (`engine.waits`) see the engine itself.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import Any

from orchestrator.engine.failures import Failures
from orchestrator.engine.indexes import RunIndexes, status_of
from orchestrator.engine.limits import Throttle
from orchestrator.engine.output import EngineOutput, Timer
from orchestrator.engine.patterns import PatternTransitions
from orchestrator.engine.unwind import Unwinding
from orchestrator.engine.waits import WAIT_TIMER, Signal, Waits
from orchestrator.errors import TemplateError
from orchestrator.messages import Dispatch, PreCheck, StepMessages
from orchestrator.settings import LimitSettings
from orchestrator.state import (
    IN_FLIGHT_STEP_STATUSES,
    TERMINAL_RUN_STATUSES,
    Event,
    EventType,
    RunProjection,
    RunStatus,
    StepStatus,
    apply_event,
)
from orchestrator.step_keys import StepKey, StepRole
from orchestrator.wire import ResultMessage
from orchestrator.workflow import CompiledWorkflow, StepDef
from patterns.dead_letter import DeadLetter
from patterns.hierarchical import ChildStart

__all__ = ["DEFER_DELAY", "RunEngine"]

# Deferred steps (open circuit breaker) are re-offered after this many seconds.
DEFER_DELAY = 1.0

# What `resume` runs again.
_RESUMABLE = (StepStatus.FAILED, StepStatus.DEAD_LETTERED, StepStatus.CANCELLED, StepStatus.SKIPPED)


class RunEngine:
    """Decides what happens next in one run; implements `EngineOps` for its collaborators."""

    def __init__(
        self,
        *,
        workflow: CompiledWorkflow,
        projection: RunProjection,
        inputs: dict[str, Any],
        partition: int,
        timeout_grace: float = 10.0,
        clock: Callable[[], float],
        rng: random.Random | None = None,
        depth: int = 0,
        max_depth: int = 5,
        pre_checks: tuple[PreCheck, ...] = (),
        limits: LimitSettings | None = None,
    ) -> None:
        self.wf = workflow
        self.limits = limits or LimitSettings()
        self.run = projection
        self.inputs = inputs
        self.partition = partition
        self.timeout_grace = timeout_grace
        self.clock = clock
        self.rng = rng or random.Random()
        self.events: list[Event] = []
        self.outbox: list[Dispatch] = []
        self.timers: list[Timer] = []
        self.dead_letters: list[DeadLetter] = []
        self.depth = depth
        self.max_depth = max_depth
        self.pre_checks = pre_checks
        self.messages = StepMessages(
            workflow=workflow,
            run=projection,
            inputs=inputs,
            partition=partition,
            pre_checks=pre_checks,
            depth=depth,
            max_depth=max_depth,
        )
        self.children: list[ChildStart] = []  # child runs to create once committed
        self.child_cancels: list[str] = []  # child runs to cancel
        self.idx = RunIndexes()  # shared with the collaborators below
        self.patterns = PatternTransitions(self)
        self.unwinding = Unwinding(self)
        self.throttle = Throttle(self)  # flow control (engine.limits)
        self.waits = Waits(self, clock)  # signals, approvals and sleeps (engine.waits)
        self.failures = Failures(self)  # retry or final failure (engine.failures)
        self._rebuild_indexes()

    def _rebuild_indexes(self) -> None:
        """Derive the indexes from the projection, and the timers of what is waiting or running."""
        self.idx.rebuild(self.wf, self.run)
        self.throttle.requests = self.throttle.pending()  # throttled attempts of a loaded run
        for key, record in self.run.steps.items():
            if record.status is StepStatus.RETRY_SCHEDULED and record.due_at is not None:
                self.timers.append(Timer(record.due_at, self.run.run_id, key, record.attempt, "retry"))
            elif record.status is StepStatus.RUNNING:
                started_at = float(record.detail.get("started_at") or self.clock())
                self._arm_timeout(StepKey.parse(key), record.attempt, started_at)
            elif record.status is StepStatus.WAITING and record.due_at is not None:
                self.timers.append(Timer(record.due_at, self.run.run_id, key, record.attempt, WAIT_TIMER))

    def release(self) -> None:
        """Break the engine's reference cycles (each collaborator holds the engine) when the coordinator
        drops the run: reference counting then frees the run's objects at once, instead of the cyclic
        garbage collector later, after scanning them in every collection until then. The engine's
        transitions are not to be called after; its `run` stays readable."""
        del self.patterns, self.unwinding, self.throttle, self.waits, self.failures

    @property
    def finished(self) -> bool:
        return self.run.status in TERMINAL_RUN_STATUSES

    # -- event plumbing -----------------------------------------------------------------------------

    def emit(self, kind: EventType, step: StepKey | str | None = None, attempt: int | None = None, **data: Any) -> None:
        text = str(step) if step is not None else None
        event = Event(seq=self.run.last_seq + 1, type=kind, step=text, attempt=attempt, data=data)
        apply_event(self.run, event)
        self.events.append(event)

    def drain(self) -> EngineOutput:
        """Everything decided since the last drain; the engine starts over with empty buffers."""
        out = EngineOutput(
            events=self.events,
            dispatches=self.outbox,
            timers=self.timers,
            dead_letters=self.dead_letters,
            child_starts=self.children,
            child_cancels=self.child_cancels,
            limit_requests=self.throttle.drain(),
        )
        self.events, self.outbox, self.timers, self.dead_letters = [], [], [], []
        self.children, self.child_cancels = [], []
        return out

    # -- commands -------------------------------------------------------------------------------------

    def start(self, *, admitted: bool = False) -> None:
        """Start a pending run; a run of a workflow with `concurrency:` waits for its slot (engine.limits)."""
        if self.run.status is not RunStatus.PENDING:
            return
        if not admitted and self.throttle.hold_run():
            return
        self.emit(EventType.RUN_STARTED)
        self.idx.all_ready(self.wf)
        self.advance()

    def request_cancel(self) -> bool:
        if self.finished or self.run.state.get("cancel_requested"):
            return False
        self.emit(EventType.RUN_CANCEL_REQUESTED)
        if self.throttle.cancel_pending_run():
            return True
        self.idx.failing = True
        self.child_cancels.extend(
            r.detail["child_run"]
            for r in self.run.steps.values()
            if r.status in IN_FLIGHT_STEP_STATUSES and "child_run" in r.detail
        )
        self.advance()
        return True

    def resume(self, overrides: Mapping[str, Any] | None = None) -> bool:
        """Re-run a failed or cancelled run from its failed steps, keeping succeeded outputs.

        `overrides` maps step keys to replacement `with` arguments (a replayed dead letter
        with an edited payload); they are recorded in the log like everything else.
        """
        if self.run.status not in (RunStatus.FAILED, RunStatus.CANCELLED):
            return False
        overrides = overrides or {}
        self.emit(EventType.RUN_RESUMED)
        for key, record in sorted(self.run.steps.items()):
            if record.status not in _RESUMABLE:
                continue
            if record.status is StepStatus.SKIPPED and record.detail.get("reason") == "when":
                continue  # a `when` that was false stays false: the inputs are unchanged
            extra = {"args": overrides[key]} if key in overrides else {}
            self.emit(EventType.STEP_RESET, step=key, attempt=record.attempt, **extra)
            parsed = StepKey.parse(key)
            if parsed.role is StepRole.STEP:
                self.patterns.reset_pre_checks(parsed.step)
        self._rebuild_indexes()
        self.idx.all_ready(self.wf)
        self.advance()
        return True

    def on_timer(self, timer: Timer) -> None:
        record = self.run.steps.get(timer.step)
        if record is None or record.attempt != timer.attempt or self.finished:
            return
        key = StepKey.parse(timer.step)
        if timer.kind == "retry" and record.status is StepStatus.RETRY_SCHEDULED:
            if self.idx.failing and key.role is not StepRole.COMPENSATE:
                self._cancelled(key, record.attempt)
            else:
                self.dispatch(key)
        elif timer.kind == "timeout" and record.status is StepStatus.RUNNING:
            error = {
                "type": "StepTimeoutError",
                "message": f"no result within timeout + grace ({self.messages.timeout_of(key):.0f}s"
                f" + {self.timeout_grace:.0f}s); the attempt is abandoned",
                "retryable": True,
            }
            self.failures.on_failure(key, record.attempt, error)
        elif timer.kind == WAIT_TIMER and record.status is StepStatus.WAITING:
            self.waits.on_timer(key, record)
        self.advance()

    def offer_signals(self, signals: list[Signal]) -> bool:
        """The run's stored signals and approval decisions not consumed yet; True when one ended a wait."""
        if self.finished:
            return False
        before = self.run.last_seq
        self.waits.offer(signals)
        self.advance()
        return self.run.last_seq != before

    def on_result(self, msg: ResultMessage) -> bool:
        """Apply one worker result; False when fenced off as a duplicate or late result."""
        record = self.run.steps.get(msg.step)
        if (
            record is None
            or record.attempt != msg.attempt
            or record.status not in IN_FLIGHT_STEP_STATUSES
            or self.finished
        ):
            return False
        key = StepKey.parse(msg.step)  # a key this engine dispatched, since it has a record
        if msg.status == "started":
            if record.status is StepStatus.RUNNING:
                return False
            now = self.clock()
            self.emit(EventType.STEP_STARTED, step=key, attempt=msg.attempt, worker=msg.worker, at=now)
            self._arm_timeout(key, msg.attempt, now)
            return True
        if msg.status == "succeeded":
            self._on_succeeded(key, msg)
        elif msg.status == "deferred":
            self._on_deferred(key, msg)
        elif msg.status == "cancelled" and self.run.state.get("cancel_requested"):
            self._cancelled(key, msg.attempt)
        elif msg.status == "dead_lettered":
            error = _error_dict(msg) | {"retryable": False}
            self.emit(EventType.STEP_DEAD_LETTERED, step=key, attempt=msg.attempt, error=error)
            self.idx.in_flight.discard(msg.step)
            self.failures.on_final_failure(key, error)
        else:  # failed, or cancelled without a cancel request
            self.failures.on_failure(key, msg.attempt, _error_dict(msg))
        self.advance()
        return True

    def _on_succeeded(self, key: StepKey, msg: ResultMessage) -> None:
        self.idx.in_flight.discard(msg.step)
        output = {"output": msg.output, **_redaction(msg)}
        if key.role is StepRole.STEP and self.wf.steps[key.step].gate is not None:
            self.emit(EventType.STEP_CHECKING, step=key, attempt=msg.attempt, **output)
            self.dispatch(StepKey.gate(key.step))
        else:
            self.emit(EventType.STEP_SUCCEEDED, step=key, attempt=msg.attempt, **output)
            self._on_success(key)

    def _on_deferred(self, key: StepKey, msg: ResultMessage) -> None:
        """An open circuit breaker turned the attempt down: offer it again soon, without burning an attempt."""
        due = round(self.clock() + DEFER_DELAY, 3)
        self.emit(
            EventType.STEP_RETRY_SCHEDULED,
            step=key,
            attempt=msg.attempt,
            due_at=due,
            counts=False,
            error={"type": "CircuitOpenError", "message": msg.error.message if msg.error else "breaker open"},
        )
        self.timers.append(Timer(due, self.run.run_id, msg.step, msg.attempt, "retry"))

    def cancel_attempt(self, key: StepKey, attempt: int) -> None:
        """Cancel an attempt that has not run (a throttled one) while the run unwinds."""
        self._cancelled(key, attempt)

    def _cancelled(self, key: StepKey, attempt: int) -> None:
        """An attempt is cancelled while the run unwinds (with the step its gate or pre hook was checking)."""
        self.emit(EventType.STEP_CANCELLED, step=key, attempt=attempt)
        self.idx.in_flight.discard(str(key))
        self.patterns.abandon_checked(key)
        if key.role is StepRole.STEP:
            self.after_terminal(key.step)

    # -- transitions ------------------------------------------------------------------------------

    def advance(self) -> None:
        if self.finished or self.run.status is RunStatus.PENDING:
            return
        if self.run.status is RunStatus.COMPENSATING:
            self.unwinding.advance_compensation()
            return
        if self.idx.failing:
            self.throttle.cancel_all()
            self.unwinding.unwind()
            return
        while self.idx.ready and not self.idx.failing:
            sid = self.idx.ready.pop()
            if status_of(self.run.steps, sid) is StepStatus.PENDING:
                self._start_step(self.wf.steps[sid])
        if self.idx.failing:
            self.throttle.cancel_all()
            self.unwinding.unwind()
        elif not self.idx.open and not self.idx.in_flight:
            outputs = {
                sid: self.run.steps[sid].output
                for sid in self.wf.leaves
                if status_of(self.run.steps, sid) is StepStatus.SUCCEEDED
            }
            self.emit(EventType.RUN_SUCCEEDED, outputs=outputs)

    def _start_step(self, step: StepDef) -> None:
        try:
            if step.when is not None and not self.messages.resolve(step.when, None):
                self._skip(step.id, "when")
                return
            if self.pre_checks and not self.patterns.pre_checks_passed(step.id):
                return  # dispatched (or still running): the step starts once every check approves
            if step.for_each is not None or step.swarm is not None:
                self.patterns.fan_out(step)
                return
            if step.wait is not None:  # waits without a dispatch, holding no worker slot
                timer = self.waits.start(step)
                self.timers.extend([timer] if timer is not None else [])
                return
        except (TemplateError, ValueError) as e:  # RunLimitError included; a sleep's `until` that is no time
            self.fail_now(StepKey.parse(step.id), {"type": type(e).__name__, "message": str(e), "retryable": False})
            return
        self.dispatch(StepKey.parse(step.id))  # parsed keys are shared: no validation per run

    def dispatch(self, key: StepKey, *, admitted: bool = False) -> None:
        """Dispatch the next attempt of a step, item, replica, compensation, gate or pre check; a step
        with limits is throttled instead until the coordinator admits it (`admitted`, engine.limits)."""
        if not admitted and self.throttle.hold(key):
            return
        text = str(key)
        attempt = self.run.step(text).attempt + 1
        if key.role is StepRole.STEP and self.wf.steps[key.step].workflow is not None:
            start = self.patterns.start_child(key, attempt)
            if start is not None:
                self.children.append(start)
            return
        try:
            dispatch = self.messages.message(key, attempt)
        except TemplateError as e:
            self.fail_now(key, {"type": "TemplateError", "message": str(e), "retryable": False})
            return
        handler = dispatch.message.handler
        self.emit(EventType.STEP_DISPATCHED, step=text, attempt=attempt, queue=dispatch.queue, handler=handler)
        self.idx.in_flight.add(text)
        self.outbox.append(dispatch)

    def child_starts(self) -> list[ChildStart]:
        """Child runs of in-flight hierarchical steps, to create again if PostgreSQL lacks them."""
        return self.messages.in_flight_children()

    def in_flight_dispatches(self, *, started: bool = True) -> list[Dispatch]:
        """Messages of every dispatched (and, unless `started=False`, running) attempt, to re-publish
        what Redis lost. Child runs are not messages: see `child_starts`."""
        return self.messages.in_flight(started=started)

    def dispatched_attempts(self) -> list[tuple[str, int, str]]:
        """(step key, attempt, queue) of each attempt `in_flight_dispatches(started=False)` lists, without
        building its message: the reconciler builds only those Redis lost (`dispatch_of`)."""
        out = []
        for key, record in self.run.steps.items():
            detail = record.detail
            if record.status is StepStatus.DISPATCHED and detail.get("items") is None and "child_run" not in detail:
                out.append((key, record.attempt, self.messages.queue_of(StepKey.parse(key))))
        return out

    def dispatch_of(self, key: str, attempt: int) -> Dispatch | None:
        """The message of one dispatched attempt again (None if it no longer renders: it cannot happen
        for an attempt dispatched with the same inputs)."""
        try:
            return self.messages.message(StepKey.parse(key), attempt)
        except TemplateError:
            return None

    def _on_success(self, key: StepKey) -> None:
        sid = key.step
        if key.role is StepRole.COMPENSATE:
            self.emit(EventType.STEP_COMPENSATED, step=sid)
        elif key.role is StepRole.ITEM:
            self.patterns.item_succeeded(sid)
        elif key.role is StepRole.GATE:
            self.patterns.on_verdict(sid, self.run.steps[str(key)].output)
        elif key.role is StepRole.PRE:
            self.patterns.on_pre_check(key)
        else:
            self.after_terminal(sid)

    def after_terminal(self, sid: str) -> None:
        """Bookkeeping once step `sid` (not an item or compensation) is terminal."""
        self.idx.open.discard(sid)
        if status_of(self.run.steps, sid) is not StepStatus.SUCCEEDED:
            return
        for dep in self.wf.steps[sid].dependents:
            left = self.idx.waiting.get(dep, 0) - 1
            self.idx.waiting[dep] = left
            if left == 0:
                self.idx.ready.append(dep)

    def _skip(self, sid: str, reason: str) -> None:
        stack = [(sid, reason)]
        while stack:
            current, why = stack.pop()
            if status_of(self.run.steps, current) is not StepStatus.PENDING:
                continue
            self.emit(EventType.STEP_SKIPPED, step=current, reason=why)
            self.idx.open.discard(current)
            stack.extend((dep, f"needs {current}, which was skipped") for dep in self.wf.steps[current].dependents)

    def fail_now(self, key: StepKey, error: dict[str, Any], **data: Any) -> None:
        self.failures.fail_now(key, error, **data)

    # -- helpers ------------------------------------------------------------------------------------

    def _arm_timeout(self, key: StepKey, attempt: int, started_at: float) -> None:
        due = started_at + self.messages.timeout_of(key) + self.timeout_grace
        self.timers.append(Timer(due, self.run.run_id, str(key), attempt, "timeout"))


def _redaction(msg: ResultMessage) -> dict[str, Any]:
    """What the step's event says when the worker removed secret values from its output."""
    if not msg.redacted:
        return {}
    return {"output_redacted": {"secrets": msg.redacted, "note": "secret values in the output were replaced by ***"}}


def _error_dict(msg: ResultMessage) -> dict[str, Any]:
    if msg.error is None:
        return {"type": "StepError", "message": f"step reported {msg.status}", "retryable": True}
    return {
        "type": msg.error.type,
        "message": msg.error.message,
        "traceback": msg.error.traceback,
        "retryable": msg.error.retryable,
    }
