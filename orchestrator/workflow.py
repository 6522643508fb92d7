"""A validated workflow compiled into the plain structures the engine runs on."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from orchestrator.templates import find_references
from patterns.retry import RetryPolicy

DEFAULT_QUEUE = "default"
DEFAULT_TIMEOUT = 300.0


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
    for_each: Any = None
    compensate: CompensateDef | None = None
    breaker: str | None = None
    breaker_config: dict[str, Any] | None = None
    dependents: tuple[str, ...] = ()
    workflow: str | None = None  # hierarchical: the child workflow this step runs
    gate: GateDef | None = None
    swarm: SwarmDef | None = None


@dataclass(frozen=True, slots=True)
class CompiledWorkflow:
    name: str
    on_failure: str
    steps: dict[str, StepDef]
    order: tuple[str, ...]  # a topological order
    leaves: tuple[str, ...]
    queues: frozenset[str] = field(default_factory=frozenset)
    hooks: tuple[Any, ...] = ()  # the `hooks:` entries of the document (HookSpec)
    children: dict[str, Any] = field(default_factory=dict)  # child workflow name → definition

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


def _policy(raw: Any, default: RetryPolicy) -> RetryPolicy:
    if raw is None:
        return default
    return RetryPolicy(
        max_attempts=raw.max_attempts if raw.max_attempts is not None else default.max_attempts,
        backoff=raw.backoff or default.backoff,
        initial_delay=raw.initial_delay if raw.initial_delay is not None else default.initial_delay,
        max_delay=raw.max_delay if raw.max_delay is not None else default.max_delay,
        jitter=raw.jitter if raw.jitter is not None else default.jitter,
    )


def compile_workflow(spec: Any) -> CompiledWorkflow:
    """Turn a validated `WorkflowSpec` into a `CompiledWorkflow` (defaults merged, edges indexed)."""
    defaults = spec.defaults
    default_retry = _policy(getattr(defaults, "retry", None), RetryPolicy())
    default_queue = getattr(defaults, "queue", None) or DEFAULT_QUEUE
    default_timeout = getattr(defaults, "timeout", None) or DEFAULT_TIMEOUT
    default_priority = getattr(defaults, "priority", None) or "normal"
    default_breaker = getattr(defaults, "circuit_breaker", None)
    dependents: dict[str, list[str]] = {s.id: [] for s in spec.steps}
    for s in spec.steps:
        for need in s.needs:
            dependents[need].append(s.id)
    steps: dict[str, StepDef] = {}
    for s in spec.steps:
        queue = s.queue or default_queue
        timeout = s.timeout or default_timeout
        comp = None
        if s.compensate is not None:
            c = s.compensate
            comp = CompensateDef(
                handler=c.handler,
                args=c.with_,
                queue=c.queue or queue,
                timeout=c.timeout or timeout,
                retry=_policy(c.retry, default_retry),
                templated=bool(find_references(c.with_)),
            )
        steps[s.id] = StepDef(
            id=s.id,
            handler=s.handler,
            args=s.with_,
            needs=tuple(s.needs),
            queue=queue,
            timeout=float(timeout),
            retry=_policy(s.retry, default_retry),
            priority=str(s.priority or default_priority),
            templated=bool(find_references(s.with_)),
            when=s.when,
            for_each=s.for_each,
            compensate=comp,
            breaker=(breaker := s.circuit_breaker or default_breaker),
            breaker_config=_breaker_config(spec, breaker),
            dependents=tuple(dependents[s.id]),
            workflow=s.workflow,
            gate=_gate(s.gate),
            swarm=_swarm(s.swarm),
        )
    order = _topological(steps)
    leaves = tuple(sid for sid in order if not steps[sid].dependents)
    return CompiledWorkflow(
        name=spec.name,
        on_failure=str(spec.on_failure),
        steps=steps,
        order=order,
        leaves=leaves,
        hooks=tuple(getattr(spec, "hooks", ()) or ()),
        children=dict(getattr(spec, "workflows", None) or {}),
        queues=frozenset(
            {s.queue for s in steps.values()} | {s.compensate.queue for s in steps.values() if s.compensate}
        ),
    )


def _gate(raw: Any) -> GateDef | None:
    if raw is None:
        return None
    return GateDef(raw.handler, raw.with_, raw.max_attempts, bool(find_references(raw.with_)))


def _swarm(raw: Any) -> SwarmDef | None:
    if raw is None:
        return None
    return SwarmDef(raw.replicas, raw.effective_quorum, raw.vote)


def _breaker_config(spec: Any, name: str | None) -> dict[str, Any] | None:
    """Settings of a named breaker: its `breakers:` entry, else the defaults."""
    if name is None:
        return None
    entry = (getattr(spec, "breakers", None) or {}).get(name)
    if entry is None:
        return {"fail_max": 5, "reset_timeout": 30.0, "exclude": []}
    return {"fail_max": entry.fail_max, "reset_timeout": float(entry.reset_timeout), "exclude": list(entry.exclude)}


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
