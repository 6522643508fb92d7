"""A validated workflow compiled into the plain structures the engine runs on.

`compile_workflow` is the one place that resolves a step's settings against the document's
`defaults:` and then the built-in values (`orchestrator.spec.model.DEFAULT_*`, `RetryPolicy()`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from orchestrator.spec.limits import LimitDef, RunConcurrencySpec, step_limits
from orchestrator.spec.model import (
    DEFAULT_PRIORITY,
    DEFAULT_TIMEOUT,
    BreakerSpec,
    CompensateSpec,
    GateSpec,
    HookSpec,
    RetrySpec,
    StepSpec,
    SwarmSpec,
    WorkflowSpec,
)
from orchestrator.templates import find_references
from patterns.retry import RetryPolicy


@dataclass(frozen=True, slots=True)
class CompensateDef:
    handler: str
    args: Any
    queue: str
    timeout: float
    retry: RetryPolicy
    templated: bool


@dataclass(frozen=True, slots=True)
class GateDef:
    """Handoff: `handler` checks the step's output before its dependents start."""

    handler: str
    args: Any
    max_attempts: int
    templated: bool


@dataclass(frozen=True, slots=True)
class SwarmDef:
    """Swarm: `replicas` copies of the step; `quorum` agreeing outputs make the consensus."""

    replicas: int
    quorum: int
    vote: str


@dataclass(frozen=True, slots=True)
class WaitDef:
    """A step no worker runs (docs/spec.md §12.1): `kind` is `signal`, `approval` or `sleep`."""

    kind: str
    signal: str | None = None  # kind signal: the name it waits for
    timeout: float | None = None  # signal and approval: fail with a timeout after this many seconds
    approvers: tuple[str, ...] | None = None  # approval: who may decide (None: anyone)
    duration: float | None = None  # sleep: seconds
    until: str | None = None  # sleep: an ISO-8601 time, or a ${{ }} reference to one


@dataclass(frozen=True, slots=True)
class StepDef:
    """One step with every default applied."""

    id: str
    handler: str | None
    args: Any
    needs: tuple[str, ...]
    queue: str
    timeout: float
    retry: RetryPolicy
    priority: str
    templated: bool  # whether `args` holds any `${{ … }}` reference (skip resolution when not)
    when: Any = None
    limits: tuple[LimitDef, ...] = ()  # concurrency, then rate (docs/spec.md §12.2)
    for_each: Any = None
    compensate: CompensateDef | None = None
    breaker: str | None = None
    breaker_config: dict[str, Any] | None = None
    dependents: tuple[str, ...] = ()
    workflow: str | None = None  # hierarchical: the child workflow this step runs
    gate: GateDef | None = None
    swarm: SwarmDef | None = None
    wait: WaitDef | None = None  # signal, approval or sleep: no worker runs the step


@dataclass(frozen=True, slots=True)
class CompiledWorkflow:
    name: str
    on_failure: str
    steps: dict[str, StepDef]
    order: tuple[str, ...]  # a topological order
    leaves: tuple[str, ...]
    queues: frozenset[str] = field(default_factory=frozenset)
    hooks: tuple[HookSpec, ...] = ()  # the `hooks:` entries of the document
    children: dict[str, dict[str, Any]] = field(default_factory=dict)  # child workflow name → definition
    concurrency: RunConcurrencySpec | None = None  # run-level flow control (docs/spec.md §12.2)
    has_waits: bool = False  # a step waits for a signal, an approval or a time (docs/spec.md §12.1)

    def handlers(self) -> set[str]:
        names: set[str] = set()
        for step in self.steps.values():
            if step.handler:
                names.add(step.handler)
            if step.compensate:
                names.add(step.compensate.handler)
            if step.gate:
                names.add(step.gate.handler)
        return names


BUILT_IN_RETRY = RetryPolicy()


def retry_policy(written: RetrySpec | None, base: RetryPolicy = BUILT_IN_RETRY) -> RetryPolicy:
    """The runtime policy of a `retry:` block as written: `base` with each field the block sets.

    The one conversion from the YAML shape (`RetrySpec`, every field optional) to the complete
    `RetryPolicy` the coordinator schedules retries with; `base` is what an unset field inherits.
    """
    if written is None:
        return base
    return replace(base, **written.model_dump(exclude_none=True))


def compile_workflow(spec: WorkflowSpec) -> CompiledWorkflow:
    """Turn a validated `WorkflowSpec` into a `CompiledWorkflow` (settings resolved, edges indexed)."""
    dependents: dict[str, list[str]] = {s.id: [] for s in spec.steps}
    for s in spec.steps:
        for need in s.needs:
            dependents[need].append(s.id)
    default_retry = retry_policy(spec.defaults.retry)  # shared by every step without a `retry:` of its own
    steps = {s.id: _step(spec, s, default_retry, tuple(dependents[s.id])) for s in spec.steps}
    order = _topological(steps)
    return CompiledWorkflow(
        name=spec.name,
        on_failure=spec.on_failure,
        steps=steps,
        order=order,
        leaves=tuple(sid for sid in order if not steps[sid].dependents),
        queues=frozenset(
            {s.queue for s in steps.values() if s.wait is None}
            | {s.compensate.queue for s in steps.values() if s.compensate}
        ),
        hooks=tuple(spec.hooks),
        children=dict(spec.workflows),
        concurrency=spec.concurrency,
        has_waits=any(s.wait is not None for s in steps.values()),
    )


def _step(spec: WorkflowSpec, s: StepSpec, default_retry: RetryPolicy, dependents: tuple[str, ...]) -> StepDef:
    """One step with each setting resolved: its own, else `defaults:`, else the built-in value."""
    defaults = spec.defaults
    queue = spec.queue_of(s)
    # `or`: a timeout of 0 counts as unset (it always has at run time) and inherits the next one.
    timeout = s.timeout or defaults.timeout or DEFAULT_TIMEOUT
    breaker = s.circuit_breaker or defaults.circuit_breaker
    return StepDef(
        id=s.id,
        handler=s.handler,
        args=s.with_,
        needs=tuple(s.needs),
        queue=queue,
        timeout=timeout,
        retry=retry_policy(s.retry, default_retry),
        priority=s.priority or defaults.priority or DEFAULT_PRIORITY,
        templated=bool(find_references(s.with_)),
        when=s.when,
        limits=step_limits(s.concurrency, s.rate_limit),
        for_each=s.for_each,
        compensate=_compensate(s.compensate, queue, timeout, default_retry),
        breaker=breaker,
        breaker_config=None if breaker is None else _breaker_config(spec.breaker(breaker)),
        dependents=dependents,
        workflow=s.workflow,
        gate=_gate(s.gate),
        swarm=_swarm(s.swarm),
        wait=_wait(s),
    )


def _wait(s: StepSpec) -> WaitDef | None:
    if s.wait is not None:
        return WaitDef("signal", signal=s.wait.signal, timeout=s.wait.timeout)
    if s.approval is not None:
        approvers = tuple(s.approval.approvers) if s.approval.approvers is not None else None
        return WaitDef("approval", timeout=s.approval.timeout, approvers=approvers)
    if s.sleep is not None:
        return WaitDef("sleep", duration=s.sleep.duration, until=s.sleep.until)
    return None


def _compensate(
    c: CompensateSpec | None, queue: str, timeout: float, default_retry: RetryPolicy
) -> CompensateDef | None:
    """The undo step: its own settings, else the step's queue and timeout; its retry follows `defaults.retry`."""
    if c is None:
        return None
    return CompensateDef(
        handler=c.handler,
        args=c.with_,
        queue=c.queue or queue,
        timeout=c.timeout or timeout,
        retry=retry_policy(c.retry, default_retry),
        templated=bool(find_references(c.with_)),
    )


def _gate(gate: GateSpec | None) -> GateDef | None:
    if gate is None:
        return None
    return GateDef(gate.handler, gate.with_, gate.max_attempts, bool(find_references(gate.with_)))


def _swarm(swarm: SwarmSpec | None) -> SwarmDef | None:
    if swarm is None:
        return None
    return SwarmDef(swarm.replicas, swarm.effective_quorum, swarm.vote)


def _breaker_config(breaker: BreakerSpec) -> dict[str, Any]:
    """What workers need of a named breaker (`WorkflowSpec.breaker`: its entry, else the defaults)."""
    return {"fail_max": breaker.fail_max, "reset_timeout": breaker.reset_timeout, "exclude": list(breaker.exclude)}


def _topological(steps: dict[str, StepDef]) -> tuple[str, ...]:
    remaining = {sid: len(s.needs) for sid, s in steps.items()}
    ready = [sid for sid, n in remaining.items() if n == 0]
    order: list[str] = []
    while ready:
        sid = ready.pop()
        order.append(sid)
        for dep in steps[sid].dependents:
            remaining[dep] -= 1
            if remaining[dep] == 0:
                ready.append(dep)
    return tuple(order)
