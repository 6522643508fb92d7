"""The coordinator's side of hooks: match events, stage durable executions, count results.

Every post/session hook execution is a row of `hook_executions`, written in the batch that
commits its triggering event (`on_events` stages it, the coordinator commits `take_batch()`, then
`committed`), and updated in the batch that applies each result, so a crash or a Redis data loss
does not lose it: the reconciler reloads pending rows (`reload`) and republishes what Redis does
not hold. Hooks run at
least once: a handler must tolerate a repeat (its `ctx.idempotency_key` is stable).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from msgspec.structs import replace

from orchestrator import metrics
from orchestrator.engine import Dispatch, PreCheck
from orchestrator.errors import TemplateError
from orchestrator.state import Event
from orchestrator.step_keys import StepKey
from orchestrator.store.hook_executions import HOOK_PENDING, HookCount, HookExecutionRow
from orchestrator.store.hooks import HookStore
from orchestrator.templates import TemplateContext, resolve
from orchestrator.wire import ResultMessage, StepMessage, decode_step, encode
from orchestrator.workflow import CompiledWorkflow
from patterns.hooks import HOOKS_QUEUE, HookDef, hook_id_of, hook_step_key, triggered
from patterns.retry import RetryPolicy, compute_backoff

log = structlog.get_logger(__name__)

HOOK_RETRY = RetryPolicy(max_attempts=3, initial_delay=1.0, max_delay=10.0)
HOOK_TIMEOUT = 60.0


@dataclass(slots=True)
class HookBatch:
    """What one coordinator batch changes about hooks; written in its transaction."""

    rows: list[HookExecutionRow] = field(default_factory=list)
    counts: list[HookCount] = field(default_factory=list)
    dispatches: list[Dispatch] = field(default_factory=list)  # to publish once committed
    pending: dict[tuple[str, str], StepMessage | None] = field(default_factory=dict)  # None: finished
    retries: list[tuple[float, tuple[str, str]]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.rows or self.counts)


class HookRunner:
    """Turns events into hook executions and keeps their books; never affects a run."""

    def __init__(self, store: HookStore, *, clock: Callable[[], float]) -> None:
        self.store = store
        self.clock = clock
        self.global_hooks: list[HookDef] = []
        self._by_workflow: dict[int, list[HookDef]] = {}
        # Executions in flight or waiting for a retry, by (run id, step key): a hook's step key
        # `hook:ID:SEQ` is unique within its run only.
        self._pending: dict[tuple[str, str], StepMessage] = {}
        self._kinds: dict[int, str] = {}
        self._retries: list[tuple[float, tuple[str, str]]] = []
        self._batch = HookBatch()

    def refresh(self) -> None:
        self.global_hooks = self.store.global_hooks()
        self._kinds.update({h.hook_id: h.kind for h in self.global_hooks})

    def workflow_hooks(self, workflow: CompiledWorkflow) -> list[HookDef]:
        key = id(workflow)
        hooks = self._by_workflow.get(key)
        if hooks is None:
            hooks = []
            for index, spec in enumerate(workflow.hooks):
                draft = HookDef(
                    hook_id=0,
                    name=f"yaml:{workflow.name}:{spec.name or index}",
                    kind=spec.kind,
                    events=tuple(spec.on),
                    handler=spec.handler,
                    args=dict(spec.with_),
                    workflow=workflow.name,
                )
                hook_id = self.store.ensure(draft)
                hooks.append(
                    HookDef(hook_id, draft.name, draft.kind, draft.events, draft.handler, draft.args, draft.workflow)
                )
                self._kinds[hook_id] = spec.kind
            self._by_workflow[key] = hooks
        return hooks

    def pre_checks(self, workflow: CompiledWorkflow) -> tuple[PreCheck, ...]:
        """The `pre` hooks that check every step of this workflow before its first dispatch.

        The run engine runs them (they can veto), so `on_events` leaves them out.
        """
        hooks = [*self.workflow_hooks(workflow), *self.global_hooks]
        return tuple(
            PreCheck(h.hook_id, h.name, h.handler, h.args)
            for h in hooks
            if h.kind == "pre" and h.matches("step.dispatched", workflow.name)
        )

    def on_pre_check(self, result: ResultMessage) -> None:
        """Count one finished execution of a `pre` hook (the engine decides what it means)."""
        if result.status in ("started", "deferred"):
            return
        hook_id = StepKey.parse(result.step).hook_number
        ok = result.status == "succeeded"
        error = None if ok else (f"{result.error.type}: {result.error.message}" if result.error else result.status)
        self._batch.counts.append(HookCount(hook_id, ok, error))
        metrics.HOOKS.labels(kind="pre", status="succeeded" if ok else "failed").inc()
        log.info("pre_hook_finished", hook_id=hook_id, run_id=result.run, step=result.step, ok=ok, error=error)

    def on_events(
        self, *, run_id: str, partition: int, workflow: CompiledWorkflow, inputs: dict[str, Any], events: list[Event]
    ) -> None:
        """Stage the executions these (not yet committed) events trigger."""
        hooks = [*self.workflow_hooks(workflow), *self.global_hooks] if (workflow.hooks or self.global_hooks) else []
        if not hooks:
            return
        context = TemplateContext(inputs=inputs, run_id=run_id, workflow=workflow.name)
        for event in events:
            for hook in triggered(hooks, event.type, workflow.name):
                if hook.kind == "pre":
                    continue  # run by the engine before the dispatch, see `pre_checks`
                try:
                    args = resolve(hook.args, context)
                except TemplateError as e:
                    log.warning("hook_skipped", hook=hook.name, run_id=run_id, error=str(e))
                    metrics.HOOKS.labels(kind=hook.kind, status="failed").inc()
                    continue
                message = StepMessage(
                    run=run_id,
                    step=hook_step_key(hook.hook_id, event.seq),
                    attempt=1,
                    handler=hook.handler,
                    partition=partition,
                    args=args,
                    timeout=HOOK_TIMEOUT,
                    kind="hook",
                    workflow=workflow.name,
                    event={
                        "type": str(event.type),
                        "run_id": run_id,
                        "workflow": workflow.name,
                        "step": event.step,
                        "attempt": event.attempt,
                        "seq": event.seq,
                        "data": event.data,
                    },
                )
                self._stage(message, HOOK_PENDING, publish=True)

    def on_result(self, result: ResultMessage) -> None:
        """Stage the outcome of a hook attempt: a retry to schedule, or a finished execution."""
        key = (result.run, result.step)
        message = self._batch.pending[key] if key in self._batch.pending else self._pending.get(key)
        if message is None or message.attempt != result.attempt or result.status in ("started", "deferred"):
            return
        hook_id = hook_id_of(result.step)
        kind = self._kinds.get(hook_id, "post")
        ok = result.status == "succeeded"
        error = None if ok else (f"{result.error.type}: {result.error.message}" if result.error else result.status)
        retryable = result.error is None or result.error.retryable
        if not ok and retryable and result.attempt < HOOK_RETRY.max_attempts and result.status == "failed":
            due = self.clock() + compute_backoff(result.attempt, HOOK_RETRY)
            self._stage(replace(message, attempt=message.attempt + 1), HOOK_PENDING, due_at=due, error=error)
            log.info("hook_retry_scheduled", hook_id=hook_id, run_id=result.run, attempt=result.attempt, error=error)
            return
        self._stage(message, "succeeded" if ok else "failed", error=error)
        self._batch.counts.append(HookCount(hook_id, ok, error))
        metrics.HOOKS.labels(kind=kind, status="succeeded" if ok else "failed").inc()
        if ok:
            log.info("hook_succeeded", hook_id=hook_id, run_id=result.run, handler=message.handler)
        else:
            log.warning("hook_failed", hook_id=hook_id, run_id=result.run, handler=message.handler, error=error)

    def _stage(
        self,
        message: StepMessage,
        status: str,
        *,
        publish: bool = False,
        due_at: float | None = None,
        error: str | None = None,
    ) -> None:
        key = (message.run, message.step)
        batch = self._batch
        batch.rows.append(
            HookExecutionRow(
                run_id=message.run,
                step_key=message.step,
                hook_id=hook_id_of(message.step),
                partition=message.partition,
                attempt=message.attempt,
                status=status,
                message=encode(replace(message, attempt=1)),
                due_at=due_at,
                error=error,
            )
        )
        batch.pending[key] = message if status == HOOK_PENDING else None
        if publish:
            batch.dispatches.append(Dispatch(HOOKS_QUEUE, "low", message))
        if due_at is not None:
            batch.retries.append((due_at, key))

    def take_batch(self) -> HookBatch:
        """The staged changes for the coordinator's next commit (then `committed` or `abort`)."""
        return self._batch

    def committed(self) -> list[Dispatch]:
        """The staged batch is durable: track it; returns the executions to publish now."""
        batch, self._batch = self._batch, HookBatch()
        for key, message in batch.pending.items():
            if message is None:
                self._pending.pop(key, None)
            else:
                self._pending[key] = message
        for retry in batch.retries:
            heapq.heappush(self._retries, retry)
        return batch.dispatches

    def abort(self) -> None:
        """The commit failed: drop what was staged (the events and results are read again)."""
        self._batch = HookBatch()

    def forget(self, partitions: set[int] | None = None) -> None:
        """Stop tracking the executions of `partitions` (all when None): they changed hands, or
        in-memory state was dropped; `reload` reads them back from PostgreSQL."""
        self.abort()
        if partitions is None:
            self._pending.clear()
            self._retries.clear()
            return
        self._pending = {k: m for k, m in self._pending.items() if m.partition not in partitions}
        self._retries = [r for r in self._retries if r[1] in self._pending]
        heapq.heapify(self._retries)

    def reload(self, partitions: list[int]) -> list[Dispatch]:
        """Track the pending executions of `partitions` not tracked yet (after a start, a takeover
        or `forget`); returns those due now (publish the ones Redis does not hold) and schedules
        the others."""
        due: list[Dispatch] = []
        now = self.clock()
        for row in self.store.pending_executions(partitions, skip=set(self._pending)):
            key = (row.run_id, row.step_key)
            message = replace(decode_step(row.message), attempt=row.attempt)
            self._pending[key] = message
            if row.due_at is not None and row.due_at > now:
                heapq.heappush(self._retries, (row.due_at, key))
            else:
                due.append(Dispatch(HOOKS_QUEUE, "low", message))
        return due

    def in_flight(self) -> list[Dispatch]:
        """Pending executions whose attempt is due (published, or to publish)."""
        waiting = {key for _, key in self._retries}
        return [Dispatch(HOOKS_QUEUE, "low", m) for key, m in self._pending.items() if key not in waiting]

    def due(self, now: float) -> list[Dispatch]:
        """Retries whose time has come (their rows already say which attempt is due)."""
        out = []
        while self._retries and self._retries[0][0] <= now:
            _, key = heapq.heappop(self._retries)
            message = self._pending.get(key)
            if message is not None:
                out.append(Dispatch(HOOKS_QUEUE, "low", message))
        return out
