"""The message of each attempt of a run: what a worker (or a child run) receives.

`StepMessages` reads the compiled workflow and the run's projection and builds, for any
step key (step, for_each item, swarm replica, compensation, gate, pre check), the message
of one attempt, with templates resolved. It is deterministic, so the coordinator can
rebuild the message of an in-flight attempt to re-publish what Redis lost.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from orchestrator import tracing
from orchestrator.errors import SteppeError, TemplateError
from orchestrator.run_inputs import RunInputs
from orchestrator.spec import WorkflowSpec, validate_inputs
from orchestrator.state import IN_FLIGHT_STEP_STATUSES, RunProjection, StepStatus
from orchestrator.step_keys import StepKey, StepRole
from orchestrator.templates import TemplateContext, resolve
from orchestrator.wire import StepMessage
from orchestrator.workflow import CompiledWorkflow, StepDef
from patterns.hierarchical import ChildStart, child_run_id
from patterns.retry import RetryPolicy


def check_child_inputs(definition: dict[str, Any], args: Any) -> dict[str, Any]:
    """The child run's inputs: the step's `with:`, validated against the child's declared inputs."""
    if not isinstance(args, dict):
        raise ValueError(f"a child workflow's `with:` must be a mapping of its inputs, got {type(args).__name__}")
    try:
        return validate_inputs(WorkflowSpec.model_validate(definition), args)
    except SteppeError as e:
        raise ValueError(f"inputs of child workflow {definition.get('name')!r}: {e}") from e


class _OutputsView(Mapping[str, Any]):
    """Step id → output of succeeded steps, read from the projection without copying it."""

    def __init__(self, run: RunProjection) -> None:
        self._run = run

    def __getitem__(self, step_id: str) -> Any:
        record = self._run.steps.get(step_id)
        if record is None or record.status not in (StepStatus.SUCCEEDED, StepStatus.COMPENSATED):
            raise KeyError(step_id)
        return record.output

    def __iter__(self) -> Iterator[str]:
        return (k for k in self._run.steps if k in self)

    def __len__(self) -> int:
        return sum(1 for _ in self)


@dataclass(frozen=True, slots=True)
class Dispatch:
    """A step message to publish once the events that announce it are committed.

    `inputs` (the run's, by reference) is written to Redis with it when the message names
    them (`orchestrator.run_inputs`); it is not part of the message."""

    queue: str
    priority: str
    message: StepMessage
    inputs: RunInputs | None = None


@dataclass(frozen=True, slots=True)
class PreCheck:
    """A `pre` hook: runs before each step is first dispatched and may veto or annotate it."""

    hook_id: int
    name: str
    handler: str
    args: dict[str, Any]


PRE_CHECK_QUEUE = "hooks"
PRE_CHECK_TIMEOUT = 60.0
PRE_CHECK_RETRY = RetryPolicy(max_attempts=3, initial_delay=1.0, max_delay=10.0)


class StepMessages:
    """Builds attempts' messages for one run."""

    def __init__(
        self,
        *,
        workflow: CompiledWorkflow,
        run: RunProjection,
        inputs: dict[str, Any],
        partition: int,
        pre_checks: tuple[PreCheck, ...],
        depth: int,
        max_depth: int,
    ) -> None:
        self.wf = workflow
        self.run = run
        self.inputs = inputs
        self.partition = partition
        self.pre_checks = pre_checks
        self.depth = depth
        self.max_depth = max_depth
        self.items: dict[str, list[Any]] = {}  # for_each step id → its resolved items
        # The run's inputs with their digest (None without inputs), named by each message.
        self.run_inputs = RunInputs.of(run.run_id, partition, inputs)
        # The run span's W3C trace context, "" unless this process traces (orchestrator/tracing.py).
        self.traceparent = tracing.run_traceparent(run.run_id)

    def child_start(self, key: StepKey, attempt: int) -> ChildStart:
        step = self.wf.steps[key.step]
        name = step.workflow
        assert name is not None
        if self.depth + 1 > self.max_depth:
            raise ValueError(
                f"child workflow {name!r} would nest {self.depth + 1} levels deep, over the limit of "
                f"{self.max_depth} (STEPPE_LIMITS__WORKFLOW_DEPTH); is the recursion missing a `when:` to stop it?"
            )
        definition = self.wf.children.get(name)
        if definition is None:
            raise ValueError(f"child workflow {name!r} is not in this run's definitions; submit it again")
        args = self.resolve(step.args, None) if step.templated else step.args
        inputs = check_child_inputs(definition, args)
        return ChildStart(
            run_id=child_run_id(self.run.run_id, str(key), attempt),
            workflow=name,
            definition={**definition, "workflows": {**self.wf.children, **(definition.get("workflows") or {})}},
            inputs=inputs,
            parent_run_id=self.run.run_id,
            parent_step=str(key),
            depth=self.depth + 1,
        )

    def message(self, key: StepKey, attempt: int) -> Dispatch:
        """The message of one attempt; templates are re-resolved, which is deterministic."""
        step = self.wf.steps[key.step]
        if key.role is StepRole.COMPENSATE:
            queue, priority, fields = self._compensation_fields(step)
        elif key.role is StepRole.GATE:
            queue, priority, fields = self._gate_fields(step)
        elif key.role is StepRole.PRE:
            queue, priority, fields = self._pre_check_fields(key, step)
        else:
            queue, priority, fields = self._step_fields(key, step)
        args = fields.pop("args")
        run_inputs = self.run_inputs
        message = StepMessage(
            run=self.run.run_id,
            step=str(key),
            attempt=attempt,
            partition=self.partition,
            args=args if isinstance(args, dict) else {"value": args},
            workflow=self.wf.name,
            inputs_digest=run_inputs.digest if run_inputs is not None else "",
            traceparent=self.traceparent,
            **fields,
        )
        return Dispatch(queue, priority, message, run_inputs)

    # Each returns (queue, priority, the message's fields of that kind of instance).

    def _compensation_fields(self, step: StepDef) -> tuple[str, str, dict[str, Any]]:
        comp = step.compensate
        assert comp is not None
        args = self.resolve(comp.args, None) if comp.templated else comp.args
        return (
            comp.queue,
            "high",
            {"args": args, "handler": comp.handler, "timeout": comp.timeout, "kind": "compensate"},
        )

    def _gate_fields(self, step: StepDef) -> tuple[str, str, dict[str, Any]]:
        gate = step.gate
        assert gate is not None
        args = self.resolve(gate.args, None) if gate.templated else dict(gate.args)
        args = {**args, "output": self.run.steps[step.id].output}
        return step.queue, "high", {"args": args, "handler": gate.handler, "timeout": step.timeout, "kind": "gate"}

    def _pre_check_fields(self, key: StepKey, step: StepDef) -> tuple[str, str, dict[str, Any]]:
        check = self.pre_check(key)
        event = {
            "type": "step.dispatching",
            "run_id": self.run.run_id,
            "workflow": self.wf.name,
            "step": step.id,
            "data": {"handler": step.handler or step.workflow, "hook": check.name},
        }
        args = self.resolve(check.args, None)
        fields = {"args": args, "handler": check.handler, "timeout": PRE_CHECK_TIMEOUT, "kind": "pre", "event": event}
        return PRE_CHECK_QUEUE, "high", fields

    def _step_fields(self, key: StepKey, step: StepDef) -> tuple[str, str, dict[str, Any]]:
        """A step's own attempt, or one of its for_each items or swarm replicas."""
        item = None
        if key.role is StepRole.ITEM and step.for_each is not None:
            if step.id not in self.items:
                self.items[step.id] = self.resolve(step.for_each, None)
            assert key.index is not None
            item = (step.id, key.index)
        record = self.run.steps.get(str(key))
        override = record.detail.get("args") if record is not None else None
        args = override if override is not None else self.resolve(step.args, item) if step.templated else step.args
        feedback = record.detail.get("feedback") if record is not None and key.role is StepRole.STEP else None
        fields = {
            "args": args,
            "handler": step.handler or "",
            "timeout": step.timeout,
            "breaker": step.breaker,
            "breaker_config": step.breaker_config,
            "feedback": feedback,
            "annotations": self.annotations(step.id),
        }
        return step.queue, step.priority, fields

    def pre_check(self, key: StepKey) -> PreCheck:
        hook_id = key.hook_number
        for check in self.pre_checks:
            if check.hook_id == hook_id:
                return check
        raise TemplateError(f"pre hook {hook_id} no longer exists; the step is checked again if resumed")

    def annotations(self, sid: str) -> dict[str, Any] | None:
        """What the step's `pre` hooks added with `{annotations: {…}}`, merged in hook order."""
        merged: dict[str, Any] = {}
        for check in self.pre_checks:
            record = self.run.steps.get(str(StepKey.pre_check(sid, check.hook_id)))
            if record is not None and isinstance(record.output, dict):
                extra = record.output.get("annotations")
                if isinstance(extra, dict):
                    merged.update(extra)
        return merged or None

    def resolve(self, value: Any, item: tuple[str, int] | None) -> Any:
        context = TemplateContext(
            inputs=self.inputs, outputs=_OutputsView(self.run), run_id=self.run.run_id, workflow=self.wf.name
        )
        if item is not None:
            step_id, index = item
            context = context.with_item(self.items[step_id][index])
        return resolve(value, context)

    def labels_of(self, key: str) -> tuple[str, str]:
        """(queue, handler) of a stored step key (an event's), for metrics."""
        return self._labels(StepKey.parse(key))

    def _labels(self, key: StepKey) -> tuple[str, str]:
        step, role = self.wf.steps[key.step], key.role
        if role is StepRole.COMPENSATE and step.compensate is not None:
            return step.compensate.queue, step.compensate.handler
        if role is StepRole.GATE and step.gate is not None:
            return step.queue, step.gate.handler
        if role is StepRole.PRE:
            return PRE_CHECK_QUEUE, "pre-hook"
        return step.queue, step.handler or f"workflow:{step.workflow}"

    def policy_of(self, key: StepKey) -> RetryPolicy:
        step, role = self.wf.steps[key.step], key.role
        if role is StepRole.COMPENSATE and step.compensate is not None:
            return step.compensate.retry
        return PRE_CHECK_RETRY if role is StepRole.PRE else step.retry

    def timeout_of(self, key: StepKey) -> float:
        step, role = self.wf.steps[key.step], key.role
        if role is StepRole.COMPENSATE and step.compensate is not None:
            return step.compensate.timeout
        return PRE_CHECK_TIMEOUT if role is StepRole.PRE else step.timeout

    def queue_of(self, key: StepKey) -> str:
        return self._labels(key)[0]

    def in_flight(self, *, started: bool = True) -> list[Dispatch]:
        """The messages of every dispatched (and, when `started`, running) attempt."""
        statuses = IN_FLIGHT_STEP_STATUSES if started else {StepStatus.DISPATCHED}
        out = []
        for key, record in self.run.steps.items():
            if record.status in statuses and record.detail.get("items") is None and "child_run" not in record.detail:
                try:
                    out.append(self.message(StepKey.parse(key), record.attempt))
                except TemplateError:
                    continue  # cannot happen for an attempt that was dispatched with the same inputs
        return out

    def in_flight_children(self) -> list[ChildStart]:
        """The child runs of every in-flight hierarchical step."""
        out = []
        for key, record in self.run.steps.items():
            if record.status in IN_FLIGHT_STEP_STATUSES and "child_run" in record.detail:
                try:
                    out.append(self.child_start(StepKey.parse(key), record.attempt))
                except (TemplateError, ValueError):
                    continue  # it was created with the same inputs; nothing to recreate
        return out
