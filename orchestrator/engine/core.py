"""The run engine: pure decision logic that turns results and timers into events and dispatches.

A `RunEngine` owns one run's projection. Every change goes through `_emit`, which appends
an event and folds it into the projection with `state.apply_event`, so the in-memory
state is by construction the fold of the log. The coordinator drains an `EngineOutput`:
events to commit, then dispatches to publish, timers to schedule and child runs to start or
cancel. No I/O happens here.
Messages are built by `orchestrator.messages`; the handoff, pre-hook and child-workflow
transitions live in `orchestrator.engine.patterns`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestrator import run_limits
from orchestrator.engine.patterns import PatternTransitions
from orchestrator.errors import TemplateError
from orchestrator.messages import PRE_CHECK_QUEUE, Dispatch, PreCheck, StepMessages
from orchestrator.settings import LimitSettings
from orchestrator.state import (
    ACTIVE_STEP_STATUSES,
    FAILED_STEP_STATUSES,
    IN_FLIGHT_STEP_STATUSES,
    TERMINAL_RUN_STATUSES,
    TERMINAL_STEP_STATUSES,
    Event,
    EventType,
    RunProjection,
    RunStatus,
    StepStatus,
    apply_event,
    base_step_id,
    compensation_key,
    gate_key,
    item_key,
    key_role,
    pre_check_key,
)
from orchestrator.wire import ResultMessage
from orchestrator.workflow import CompiledWorkflow, StepDef
from patterns.dead_letter import DeadLetter
from patterns.hierarchical import ChildStart
from patterns.retry import compute_backoff
from patterns.saga import compensation_blockers, ready_compensations
from patterns.swarm import count_votes

__all__ = ["DEFER_DELAY", "PRE_CHECK_QUEUE", "Dispatch", "EngineOutput", "PreCheck", "RunEngine", "Timer"]

# Deferred steps (open circuit breaker) are re-offered after this many seconds.
DEFER_DELAY = 1.0


@dataclass(frozen=True, slots=True)
class Timer:
    """Something the coordinator must call back at `due` (unix seconds)."""

    due: float
    run_id: str
    step: str
    attempt: int
    kind: str  # "retry" | "timeout"


@dataclass(slots=True)
class EngineOutput:
    """What one run decided since the last `RunEngine.drain()`, for the coordinator to act on.

    `events` are committed (with the run's projection); only once they are, `dispatches` are
    published, `timers` scheduled, `child_starts` created and `child_cancels` requested.
    `dead_letters` are rows committed with the events (compensations that failed for good).
    """

    events: list[Event] = field(default_factory=list)
    dispatches: list[Dispatch] = field(default_factory=list)
    timers: list[Timer] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    child_starts: list[ChildStart] = field(default_factory=list)
    child_cancels: list[str] = field(default_factory=list)


class RunEngine(PatternTransitions):
    """Decides what happens next in one run."""

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
        self._rebuild_indexes()

    # -- indexes -----------------------------------------------------------------------------------

    def _rebuild_indexes(self) -> None:
        """Derive the counters that make each result O(dependents) instead of O(steps)."""
        steps = self.run.steps
        self._waiting: dict[str, int] = {}
        self._ready: list[str] = []
        self._open: set[str] = set()
        self._in_flight: set[str] = set()
        self._items_left: dict[str, int] = {}
        self._failing = False
        for sid in self.wf.order:
            record = steps.get(sid)
            status = record.status if record else StepStatus.PENDING
            if status not in TERMINAL_STEP_STATUSES:
                self._open.add(sid)
            if status in FAILED_STEP_STATUSES:
                self._failing = True
            if status is StepStatus.PENDING:
                unmet = sum(1 for n in self.wf.steps[sid].needs if _status(steps, n) is not StepStatus.SUCCEEDED)
                self._waiting[sid] = unmet
                if unmet == 0 and self.run.status is RunStatus.RUNNING:
                    self._ready.append(sid)
        for key, record in steps.items():
            if record.status in ACTIVE_STEP_STATUSES:
                self._in_flight.add(key)
                if record.status is StepStatus.RETRY_SCHEDULED and record.due_at is not None:
                    self.timers.append(Timer(record.due_at, self.run.run_id, key, record.attempt, "retry"))
                elif record.status is StepStatus.RUNNING:
                    self._arm_timeout(key, record.attempt, float(record.detail.get("started_at") or self.clock()))
            if key_role(key) == "item" and record.status not in TERMINAL_STEP_STATUSES:
                parent = base_step_id(key)
                self._items_left[parent] = self._items_left.get(parent, 0) + 1
        if self.run.state.get("cancel_requested"):
            self._failing = True

    @property
    def finished(self) -> bool:
        return self.run.status in TERMINAL_RUN_STATUSES

    # -- event plumbing -----------------------------------------------------------------------------

    def _emit(self, kind: EventType, step: str | None = None, attempt: int | None = None, **data: Any) -> None:
        event = Event(seq=self.run.last_seq + 1, type=kind, step=step, attempt=attempt, data=data)
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
        )
        self.events, self.outbox, self.timers, self.dead_letters = [], [], [], []
        self.children, self.child_cancels = [], []
        return out

    # -- commands -------------------------------------------------------------------------------------

    def start(self) -> None:
        if self.run.status is not RunStatus.PENDING:
            return
        self._emit(EventType.RUN_STARTED)
        self._ready = [sid for sid in self.wf.order if self._waiting.get(sid) == 0]
        self.advance()

    def request_cancel(self) -> bool:
        if self.finished or self.run.state.get("cancel_requested"):
            return False
        self._emit(EventType.RUN_CANCEL_REQUESTED)
        self._failing = True
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
        self._emit(EventType.RUN_RESUMED)
        for key, record in sorted(self.run.steps.items()):
            if record.status in (
                StepStatus.FAILED,
                StepStatus.DEAD_LETTERED,
                StepStatus.CANCELLED,
                StepStatus.SKIPPED,
            ):
                if record.status is StepStatus.SKIPPED and record.detail.get("reason") == "when":
                    continue  # a `when` that was false stays false: the inputs are unchanged
                extra = {"args": overrides[key]} if key in overrides else {}
                self._emit(EventType.STEP_RESET, step=key, attempt=record.attempt, **extra)
                if key_role(key) == "step":  # its `pre` hooks decide again: a veto is not bypassed
                    for check in self.pre_checks:
                        pre_key = pre_check_key(key, check.hook_id)
                        if _status(self.run.steps, pre_key) is StepStatus.SUCCEEDED:
                            self._emit(EventType.STEP_RESET, step=pre_key, attempt=self.run.steps[pre_key].attempt)
        self._rebuild_indexes()
        self._ready = [sid for sid in self.wf.order if self._waiting.get(sid) == 0]
        self.advance()
        return True

    def on_timer(self, timer: Timer) -> None:
        record = self.run.steps.get(timer.step)
        if record is None or record.attempt != timer.attempt or self.finished:
            return
        if timer.kind == "retry" and record.status is StepStatus.RETRY_SCHEDULED:
            if self._failing and key_role(timer.step) != "compensate":
                self._emit(EventType.STEP_CANCELLED, step=timer.step, attempt=record.attempt)
                self._in_flight.discard(timer.step)
                self._abandon_checked(timer.step)
                self._after_terminal(timer.step)
            else:
                self._dispatch(timer.step)
        elif timer.kind == "timeout" and record.status is StepStatus.RUNNING:
            error = {
                "type": "StepTimeoutError",
                "message": f"no result within timeout + grace ({self.messages.timeout_of(timer.step):.0f}s"
                f" + {self.timeout_grace:.0f}s); the attempt is abandoned",
                "retryable": True,
            }
            self._on_failure(timer.step, record.attempt, error)
        self.advance()

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
        if msg.status == "started":
            if record.status is StepStatus.RUNNING:
                return False
            now = self.clock()
            self._emit(EventType.STEP_STARTED, step=msg.step, attempt=msg.attempt, worker=msg.worker, at=now)
            self._arm_timeout(msg.step, msg.attempt, now)
            return True
        if msg.status == "succeeded":
            self._in_flight.discard(msg.step)
            if self.wf.steps[base_step_id(msg.step)].gate is not None and key_role(msg.step) == "step":
                self._emit(
                    EventType.STEP_CHECKING, step=msg.step, attempt=msg.attempt, output=msg.output, **_redaction(msg)
                )
                self._dispatch(gate_key(msg.step))
            else:
                self._emit(
                    EventType.STEP_SUCCEEDED, step=msg.step, attempt=msg.attempt, output=msg.output, **_redaction(msg)
                )
                self._on_success(msg.step)
        elif msg.status == "deferred":
            due = round(self.clock() + DEFER_DELAY, 3)
            self._emit(
                EventType.STEP_RETRY_SCHEDULED,
                step=msg.step,
                attempt=msg.attempt,
                due_at=due,
                counts=False,
                error={
                    "type": "CircuitOpenError",
                    "message": msg.error.message if msg.error else "breaker open",
                },
            )
            self.timers.append(Timer(due, self.run.run_id, msg.step, msg.attempt, "retry"))
        elif msg.status == "cancelled" and self.run.state.get("cancel_requested"):
            self._emit(EventType.STEP_CANCELLED, step=msg.step, attempt=msg.attempt)
            self._in_flight.discard(msg.step)
            self._abandon_checked(msg.step)
            self._after_terminal(msg.step)
        elif msg.status == "dead_lettered":
            error = _error_dict(msg) | {"retryable": False}
            self._emit(EventType.STEP_DEAD_LETTERED, step=msg.step, attempt=msg.attempt, error=error)
            self._in_flight.discard(msg.step)
            self._on_final_failure(msg.step, error)
        else:  # failed, or cancelled without a cancel request
            self._on_failure(msg.step, msg.attempt, _error_dict(msg))
        self.advance()
        return True

    # -- transitions ------------------------------------------------------------------------------

    def advance(self) -> None:
        if self.finished or self.run.status is RunStatus.PENDING:
            return
        if self.run.status is RunStatus.COMPENSATING:
            self._advance_compensation()
            return
        if self._failing:
            self._unwind()
            return
        while self._ready and not self._failing:
            sid = self._ready.pop()
            if _status(self.run.steps, sid) is StepStatus.PENDING:
                self._start_step(self.wf.steps[sid])
        if self._failing:
            self._unwind()
        elif not self._open and not self._in_flight:
            outputs = {
                sid: self.run.steps[sid].output
                for sid in self.wf.leaves
                if _status(self.run.steps, sid) is StepStatus.SUCCEEDED
            }
            self._emit(EventType.RUN_SUCCEEDED, outputs=outputs)

    def _start_step(self, step: StepDef) -> None:
        try:
            if step.when is not None and not self.messages.resolve(step.when, None):
                self._skip(step.id, "when")
                return
            if self.pre_checks and not self._pre_checks_passed(step.id):
                return  # dispatched (or still running): the step starts once every check approves
            if step.for_each is not None or step.swarm is not None:
                self._fan_out(step)
                return
        except TemplateError as e:  # RunLimitError included
            self._fail_now(step.id, {"type": type(e).__name__, "message": str(e), "retryable": False})
            return
        self._dispatch(step.id)

    def _fan_out(self, step: StepDef) -> None:
        """Dispatch every for_each item, or every swarm replica."""
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
        self._emit(EventType.STEP_FANNED_OUT, step=step.id, items=count)
        left = 0
        for index in range(count):
            key = item_key(step.id, index)
            if _status(self.run.steps, key) is StepStatus.SUCCEEDED:
                continue  # kept from before a resume
            left += 1
            self._dispatch(key)
        self._items_left[step.id] = left
        if left == 0:
            self._items_settled(step.id)

    def _dispatch(self, key: str) -> None:
        """Dispatch the next attempt of a step, item, replica, compensation, gate or pre check."""
        attempt = self.run.step(key).attempt + 1
        if key_role(key) == "step" and self.wf.steps[key].workflow is not None:
            self._start_child(key, attempt)
            return
        try:
            dispatch = self.messages.message(key, attempt)
        except TemplateError as e:
            self._fail_now(key, {"type": "TemplateError", "message": str(e), "retryable": False})
            return
        self._emit(
            EventType.STEP_DISPATCHED,
            step=key,
            attempt=attempt,
            queue=dispatch.queue,
            handler=dispatch.message.handler,
        )
        self._in_flight.add(key)
        self.outbox.append(dispatch)

    def child_starts(self) -> list[ChildStart]:
        """Child runs of in-flight hierarchical steps, to create again if PostgreSQL lacks them."""
        return self.messages.in_flight_children()

    def in_flight_dispatches(self, *, started: bool = True) -> list[Dispatch]:
        """Messages of every dispatched (and, unless `started=False`, running) attempt, to re-publish
        what Redis lost. Child runs are not messages: see `child_starts`."""
        return self.messages.in_flight(started=started)

    def _on_success(self, key: str) -> None:
        sid = base_step_id(key)
        role = key_role(key)
        if role == "compensate":
            self._emit(EventType.STEP_COMPENSATED, step=sid)
        elif role == "item":
            if _status(self.run.steps, sid) in TERMINAL_STEP_STATUSES:
                return  # the step already failed, or its swarm already decided
            self._items_left[sid] -= 1
            if self.wf.steps[sid].swarm is not None or self._items_left[sid] == 0:
                self._items_settled(sid)
        elif role == "gate":
            self._on_verdict(sid, self.run.steps[key].output)
        elif role == "pre":
            self._on_pre_check(sid, key)
        else:
            self._after_terminal(sid)

    def _items_settled(self, sid: str) -> None:
        """A for_each item or swarm replica finished: gather the outputs, or count the votes."""
        record = self.run.steps[sid]
        count = int(record.detail.get("items") or 0)
        swarm = self.wf.steps[sid].swarm
        if swarm is None:
            gathered = [self.run.steps[item_key(sid, i)].output for i in range(count)]
            self._emit(EventType.STEP_SUCCEEDED, step=sid, output=gathered)
            self._after_terminal(sid)
            return
        result = count_votes(self.run.steps, sid, replicas=count, quorum=swarm.quorum, vote=swarm.vote)
        if not result.decided:
            return
        if result.consensus:
            self._emit(EventType.STEP_SUCCEEDED, step=sid, output=result.output, vote=result.record)
        else:
            self._emit(EventType.STEP_FAILED, step=sid, error=result.error, vote=result.record)
            self._failing = True
        self._after_terminal(sid)

    def _after_terminal(self, sid: str) -> None:
        """Bookkeeping once a step id (not an item or compensation) is terminal."""
        if key_role(sid) != "step":
            return
        self._open.discard(sid)
        if _status(self.run.steps, sid) is not StepStatus.SUCCEEDED:
            return
        for dep in self.wf.steps[sid].dependents:
            left = self._waiting.get(dep, 0) - 1
            self._waiting[dep] = left
            if left == 0:
                self._ready.append(dep)

    def _skip(self, sid: str, reason: str) -> None:
        stack = [(sid, reason)]
        while stack:
            current, why = stack.pop()
            if _status(self.run.steps, current) is not StepStatus.PENDING:
                continue
            self._emit(EventType.STEP_SKIPPED, step=current, reason=why)
            self._open.discard(current)
            stack.extend((dep, f"needs {current}, which was skipped") for dep in self.wf.steps[current].dependents)

    def _on_failure(self, key: str, attempt: int, error: dict[str, Any]) -> None:
        record = self.run.steps[key]
        policy = self.messages.policy_of(key)
        failures = int(record.detail.get("failures", 0)) + 1
        unwinding = self._failing and key_role(key) != "compensate"
        if error.get("retryable", True) and failures < policy.max_attempts and not unwinding:
            due = round(self.clock() + compute_backoff(failures, policy, self.rng), 3)
            self._emit(EventType.STEP_RETRY_SCHEDULED, step=key, attempt=attempt, due_at=due, error=error)
            self.timers.append(Timer(due, self.run.run_id, key, attempt, "retry"))
            return
        self._emit(EventType.STEP_FAILED, step=key, attempt=attempt, error=error)
        self._in_flight.discard(key)
        self._on_final_failure(key, error)

    def _fail_now(self, key: str, error: dict[str, Any]) -> None:
        record = self.run.step(key)
        self._emit(EventType.STEP_FAILED, step=key, attempt=record.attempt, error=error)
        self._in_flight.discard(key)
        self._on_final_failure(key, error)

    def _on_final_failure(self, key: str, error: dict[str, Any]) -> None:
        sid = base_step_id(key)
        role = key_role(key)
        if role == "compensate":
            record = self.run.steps[key]
            self.dead_letters.append(
                DeadLetter.compensation(
                    run_id=self.run.run_id,
                    step_key=key,
                    attempt=record.attempt,
                    queue=self.messages.queue_of(key),
                    error=error,
                )
            )
            return
        if role == "item" and self.wf.steps[sid].swarm is not None:
            if _status(self.run.steps, sid) not in TERMINAL_STEP_STATUSES:
                self._items_left[sid] -= 1
                self._items_settled(sid)  # a failed replica is a dissenting vote
            return
        if role in ("item", "gate", "pre"):
            if _status(self.run.steps, sid) not in TERMINAL_STEP_STATUSES:
                what = {"item": "item", "gate": "gate handler", "pre": "pre hook"}[role]
                message = f"{what} {key} failed: {error.get('message', '')}"
                self._emit(EventType.STEP_FAILED, step=sid, error={**error, "message": message, "item": key})
                self._after_terminal(sid)
            else:
                return
        else:
            self._after_terminal(sid)
        self._failing = True

    # -- failure, cancel and saga -----------------------------------------------------------------

    def _unwind(self) -> None:
        """Stop dispatching, cancel what has not started, and finish once nothing is in flight."""
        for sid in self.wf.order:
            if _status(self.run.steps, sid) is StepStatus.PENDING:
                self._emit(EventType.STEP_CANCELLED, step=sid)
                self._open.discard(sid)
        self._ready.clear()
        if self._in_flight:
            return
        error = self._run_error()
        if self.wf.on_failure == "compensate":
            self._emit(EventType.RUN_COMPENSATING, error=error)
            self._advance_compensation()
        elif self.run.state.get("cancel_requested"):
            self._emit(EventType.RUN_CANCELLED, error=error)
        else:
            self._emit(EventType.RUN_FAILED, error=error)

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
            and _status(self.run.steps, sid) in (StepStatus.SUCCEEDED, StepStatus.COMPENSATED)
        ]

    def _advance_compensation(self) -> None:
        targets = self._to_compensate()
        blockers = compensation_blockers({s: d.dependents for s, d in self.wf.steps.items()}, targets)
        started, finished, failed = set(), set(), False
        for sid in targets:
            record = self.run.steps.get(compensation_key(sid))
            if record is not None:
                started.add(sid)
                if record.status in TERMINAL_STEP_STATUSES:
                    finished.add(sid)
                    failed |= record.status is not StepStatus.SUCCEEDED
        for sid in ready_compensations(blockers, started, finished):
            self._dispatch(compensation_key(sid))
            started.add(sid)
        if finished == set(targets):
            if failed:
                self._emit(EventType.RUN_COMPENSATION_FAILED, error=self.run.state.get("error"))
            else:
                self._emit(EventType.RUN_COMPENSATED)

    # -- helpers ------------------------------------------------------------------------------------

    def _arm_timeout(self, key: str, attempt: int, started_at: float) -> None:
        due = started_at + self.messages.timeout_of(key) + self.timeout_grace
        self.timers.append(Timer(due, self.run.run_id, key, attempt, "timeout"))


def _status(steps: Mapping[str, Any], key: str) -> StepStatus:
    record = steps.get(key)
    return record.status if record is not None else StepStatus.PENDING


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
