"""The coordinator's side of hooks: match committed events, publish executions, count results."""

from __future__ import annotations

import heapq
import time
from typing import Any

import structlog

from orchestrator import metrics
from orchestrator.engine import Dispatch, PreCheck
from orchestrator.errors import TemplateError
from orchestrator.state import Event, pre_check_hook_id
from orchestrator.store.hooks import HookStore
from orchestrator.templates import TemplateContext, resolve
from orchestrator.wire import ResultMessage, StepMessage
from orchestrator.workflow import CompiledWorkflow
from patterns.hooks import HOOKS_QUEUE, HookDef, hook_id_of, hook_step_key, triggered
from patterns.retry import RetryPolicy, compute_backoff

log = structlog.get_logger(__name__)

HOOK_RETRY = RetryPolicy(max_attempts=3, initial_delay=1.0, max_delay=10.0)
HOOK_TIMEOUT = 60.0


class HookRunner:
    """Turns events into hook executions and keeps their books; never affects a run."""

    def __init__(self, store: HookStore) -> None:
        self.store = store
        self.global_hooks: list[HookDef] = []
        self._by_workflow: dict[int, list[HookDef]] = {}
        self._pending: dict[str, StepMessage] = {}
        self._kinds: dict[int, str] = {}
        self._retries: list[tuple[float, str]] = []

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
        hook_id = pre_check_hook_id(result.step)
        ok = result.status == "succeeded"
        error = None if ok else (f"{result.error.type}: {result.error.message}" if result.error else result.status)
        self.store.record([(hook_id, ok, error)])
        metrics.HOOKS.labels(kind="pre", status="succeeded" if ok else "failed").inc()
        log.info("pre_hook_finished", hook_id=hook_id, run_id=result.run, step=result.step, ok=ok, error=error)

    def on_events(
        self, *, run_id: str, partition: int, workflow: CompiledWorkflow, inputs: dict[str, Any], events: list[Event]
    ) -> list[Dispatch]:
        hooks = [*self.workflow_hooks(workflow), *self.global_hooks] if (workflow.hooks or self.global_hooks) else []
        if not hooks:
            return []
        out: list[Dispatch] = []
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
                    inputs=inputs,
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
                self._pending[message.step] = message
                out.append(Dispatch(HOOKS_QUEUE, "low", message))
        return out

    def on_result(self, result: ResultMessage) -> list[Dispatch]:
        """Record a hook execution; returns nothing (retries are scheduled, see `due`)."""
        message = self._pending.get(result.step)
        if message is None or message.attempt != result.attempt or result.status == "started":
            return []
        hook_id = hook_id_of(result.step)
        kind = self._kinds.get(hook_id, "post")
        ok = result.status == "succeeded"
        error = None if ok else (f"{result.error.type}: {result.error.message}" if result.error else result.status)
        retryable = result.error is None or result.error.retryable
        if not ok and retryable and result.attempt < HOOK_RETRY.max_attempts and result.status == "failed":
            delay = compute_backoff(result.attempt, HOOK_RETRY)
            heapq.heappush(self._retries, (time.time() + delay, result.step))
            log.info("hook_retry_scheduled", hook_id=hook_id, run_id=result.run, attempt=result.attempt, error=error)
            return []
        self._pending.pop(result.step, None)
        self.store.record([(hook_id, ok, error)])
        metrics.HOOKS.labels(kind=kind, status="succeeded" if ok else "failed").inc()
        if ok:
            log.info("hook_succeeded", hook_id=hook_id, run_id=result.run, handler=message.handler)
        else:
            log.warning("hook_failed", hook_id=hook_id, run_id=result.run, handler=message.handler, error=error)
        return []

    def due(self, now: float) -> list[Dispatch]:
        out = []
        while self._retries and self._retries[0][0] <= now:
            _, key = heapq.heappop(self._retries)
            message = self._pending.get(key)
            if message is None:
                continue
            retry = StepMessage(
                **{**{f: getattr(message, f) for f in message.__struct_fields__}, "attempt": message.attempt + 1}
            )
            self._pending[key] = retry
            out.append(Dispatch(HOOKS_QUEUE, "low", retry))
        return out
