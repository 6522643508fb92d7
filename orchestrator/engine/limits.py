"""Flow control inside one run (docs/spec.md §12.2): pure transitions, no I/O.

A step (or for_each item, or swarm replica) whose definition has `concurrency:` or `rate_limit:`
is not dispatched when it becomes ready: `Throttle.hold` resolves its keys (templates, with the
item for an item) and emits `step.throttled` with the resolved limits. The step then holds no
worker slot and burns no attempt. The coordinator turns the event into waiter rows in PostgreSQL
(`orchestrator.store.limits`) and, once every limit of the step granted it, calls `admit`, which
dispatches the attempt. Cancelling or failing the run cancels throttled steps (`cancel_all`).

Whether a slot is free is never decided here: only the admission transaction in PostgreSQL sees
every coordinator's holders, so that is where exactness lives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from orchestrator.errors import TemplateError
from orchestrator.spec.limits import resolved_key
from orchestrator.state import EventType, RunStatus, StepStatus
from orchestrator.step_keys import StepKey, StepRole

if TYPE_CHECKING:
    from orchestrator.engine.core import RunEngine

# Roles whose dispatch a step's limits apply to: the step's own attempts, items and replicas.
_LIMITED_ROLES = (StepRole.STEP, StepRole.ITEM)
PRIORITIES = {"high": 2, "normal": 1, "low": 0}


@dataclass(frozen=True, slots=True)
class LimitRequest:
    """One throttled attempt, for the coordinator: waiter rows to insert, keys to try to admit."""

    run_id: str
    step: str  # the stored step key
    attempt: int  # the attempt number the step had when throttled (the next dispatch is attempt + 1)
    partition: int
    priority: int
    limits: tuple[dict[str, Any], ...]  # {"kind", "key", "limit", "per"} in admission order


class Throttle:
    """The run engine's flow-control collaborator."""

    __slots__ = ("engine", "requests")

    def __init__(self, engine: RunEngine) -> None:
        self.engine = engine
        self.requests: list[LimitRequest] = []  # drained with the engine's output

    def hold(self, key: StepKey) -> bool:
        """Throttle this dispatch when the step has limits; True when it was held back (or failed)."""
        if key.role not in _LIMITED_ROLES:
            return False
        step = self.engine.wf.steps[key.step]
        if not step.limits:
            return False
        item = (key.step, key.index) if step.for_each is not None and key.index is not None else None
        try:
            limits = tuple(
                {
                    "kind": limit.kind,
                    "key": resolved_key(self.engine.messages.resolve(limit.key, item)),
                    "limit": limit.limit,
                    "per": limit.per,
                }
                for limit in step.limits
            )
        except TemplateError as e:
            self.engine.fail_now(key, {"type": "TemplateError", "message": str(e), "retryable": False})
            return True
        text = str(key)
        record = self.engine.run.step(text)
        priority = PRIORITIES.get(step.priority, 1)
        self.engine.emit(
            EventType.STEP_THROTTLED,
            step=text,
            attempt=record.attempt,
            limits=list(limits),
            priority=priority,
            at=round(self.engine.clock(), 3),
        )
        self.engine.idx.in_flight.add(text)
        self.requests.append(self._request(text, record.attempt, priority, limits))
        return True

    def _request(self, step: str, attempt: int, priority: int, limits: tuple[dict[str, Any], ...]) -> LimitRequest:
        run = self.engine.run
        return LimitRequest(run.run_id, step, attempt, self.engine.partition, priority, limits)

    def admit(self, step: str, attempt: int) -> bool:
        """Every limit granted the throttled attempt: dispatch it. False when it is no longer throttled
        (cancelled meanwhile, or admitted already: a repeated grant notice)."""
        record = self.engine.run.steps.get(step)
        if record is None or record.status is not StepStatus.THROTTLED or record.attempt != attempt:
            return False
        if self.engine.finished:
            return False
        self.engine.dispatch(StepKey.parse(step), admitted=True)
        return True

    def cancel_all(self) -> None:
        """The run unwinds: throttled steps are cancelled (their waiter rows go with their status)."""
        for text, record in sorted(self.engine.run.steps.items()):
            if record.status is StepStatus.THROTTLED:
                self.engine.cancel_attempt(StepKey.parse(text), record.attempt)

    def pending(self) -> list[LimitRequest]:
        """The throttled attempts of a freshly loaded run (their waiter rows are in PostgreSQL already)."""
        out = []
        for text, record in sorted(self.engine.run.steps.items()):
            if record.status is StepStatus.THROTTLED:
                limits = tuple(record.detail.get("limits") or ())
                step = self.engine.wf.steps[StepKey.parse(text).step]
                out.append(self._request(text, record.attempt, PRIORITIES.get(step.priority, 1), limits))
        return out

    # -- run level (the workflow's `concurrency:`) ----------------------------------------------------

    def hold_run(self) -> bool:
        """The run is to start: True when it must first wait for a slot of its workflow's key (it stays
        pending; `run.throttled` records the resolved key once; the coordinator enqueues it)."""
        spec = self.engine.wf.concurrency
        run = self.engine.run
        if spec is None:
            return False
        if "throttled" in run.state:
            return True  # loaded again while waiting: its waiter row is (or is put back) in PostgreSQL
        try:
            key = resolved_key(self.engine.messages.resolve(spec.key, None))
        except TemplateError as e:
            error = {"type": "TemplateError", "message": f"the workflow's concurrency key: {e}", "retryable": False}
            self.engine.emit(EventType.RUN_STARTED)
            self.engine.emit(EventType.RUN_FAILED, error=error)
            return True
        self.engine.emit(
            EventType.RUN_THROTTLED, key=key, limit=spec.limit, on_limit=spec.on_limit, at=round(self.engine.clock(), 3)
        )
        return True

    def admit_run(self) -> bool:
        """The run's slot was granted: start it. False when it is not waiting (a repeated notice)."""
        run = self.engine.run
        if run.status is not RunStatus.PENDING or "throttled" not in run.state or run.state.get("cancel_requested"):
            return False
        self.engine.start(admitted=True)
        return True

    def refuse_run(self) -> bool:
        """`on_limit: cancel_new` and no slot free: the new run is cancelled, saying why."""
        run = self.engine.run
        limit = run.state.get("throttled")
        if run.status is not RunStatus.PENDING or not limit:
            return False
        self.engine.emit(EventType.RUN_CANCELLED, error=_limit_error(limit, "cancel_new"))
        return True

    def cancel_pending_run(self) -> bool:
        """A cancel reached a run still waiting for its slot: it ends cancelled, never having started."""
        run = self.engine.run
        if run.status is not RunStatus.PENDING or "throttled" not in run.state:
            return False
        self.engine.emit(EventType.RUN_CANCELLED, error={"type": "Cancelled", "message": "cancelled while queued"})
        return True

    def drain(self) -> list[LimitRequest]:
        requests, self.requests = self.requests, []
        return requests


def _limit_error(limit: dict[str, Any], policy: str) -> dict[str, Any]:
    return {
        "type": "ConcurrencyLimit",
        "message": f"{limit.get('limit')} run(s) of key {limit.get('key')!r} are running and the workflow says "
        f"on_limit: {policy}",
        "retryable": False,
    }
