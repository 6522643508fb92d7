"""Pydantic models of a workflow document (docs/spec.md §3): its shape as written.

`orchestrator.workflow.compile_workflow` resolves each step's settings against `defaults`.
The models round-trip through JSON (`model_dump(mode="json", by_alias=True)` then
`WorkflowSpec.model_validate`): durations are stored as seconds, and settings a step does
not set stay `None` so that they keep following `defaults` after a round trip.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, ValidationInfo, model_validator

from orchestrator.durations import parse_duration
from orchestrator.spec.limits import ConcurrencySpec, RateLimitSpec, RunConcurrencySpec
from orchestrator.templates import whole_reference

ID_PATTERN = r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$"
NAME_PATTERN = r"^[A-Za-z0-9._-]{1,128}$"
HANDLER_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$"
EVENT_PATTERN = r"^(\*|[a-z_]+(\.([a-z_]+|\*))*)$"
ERROR_TYPE_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.]{0,255}$"
SIGNAL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"

# What each pattern means, for error messages (keyed by the pattern pydantic reports).
PATTERN_HINTS = {
    ID_PATTERN: "must start with a letter or _ and contain only ASCII letters, digits, _ and - (at most 64)",
    NAME_PATTERN: "may contain only ASCII letters, digits, '.', '_' and '-' (1 to 128 characters)",
    HANDLER_PATTERN: (
        "must be a registered handler name such as payments.charge (ASCII letters, digits, '.', '_', '-'), "
        "never an import path"
    ),
    EVENT_PATTERN: "must be an event name or pattern such as step.failed, run.* or *",
    ERROR_TYPE_PATTERN: "must be an exception type name such as TimeoutError or httpx.ConnectError",
    SIGNAL_PATTERN: (
        "must be a signal name such as payment-webhook: ASCII letters, digits, '.', '_' and '-', "
        "starting with a letter or digit (1 to 128 characters)"
    ),
}

DEFAULT_QUEUE = "default"
DEFAULT_TIMEOUT = 300.0


def _duration(value: object, info: ValidationInfo) -> object:
    """Seconds, bounded (orchestrator.durations.MAX_DURATION); the message names a delay, timeout, …"""
    if value is None:
        return None
    name = info.field_name or ""
    what = "delay" if name.endswith("delay") else "timeout" if name.endswith("timeout") else name or "duration"
    return parse_duration(value, what=what)


def _listify(value: object) -> object:
    """`needs: a` means `needs: [a]`; an empty `needs:` (null) means none."""
    if value is None:
        return []
    return [value] if isinstance(value, str) else value


def _mapping(value: object) -> object:
    """An empty `with:` (null, e.g. every entry commented out) means no arguments."""
    return {} if value is None else value


def _check_when(value: object) -> object:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str) and whole_reference(value) is not None:
        return value
    raise ValueError(
        f'must be true, false or one ${{{{ … }}}} reference such as "${{{{ inputs.express }}}}", '
        f"not {value!r}; templates are references, not expressions"
    )


def _check_for_each(value: object) -> object:
    if value is None or isinstance(value, list):
        return value
    if isinstance(value, str) and whole_reference(value) is not None:
        return value
    raise ValueError(
        f"must be a list or one ${{{{ … }}}} reference to a list, such as "
        f'"${{{{ steps.reserve.output.items }}}}", not {value!r}'
    )


StepId = Annotated[str, Field(pattern=ID_PATTERN)]
Name = Annotated[str, Field(pattern=NAME_PATTERN)]
HandlerName = Annotated[str, Field(pattern=HANDLER_PATTERN)]
Duration = Annotated[float, BeforeValidator(_duration)]
Priority = Literal["high", "normal", "low"]
Backoff = Literal["exponential", "fixed", "linear"]
InputType = Literal["string", "integer", "number", "boolean", "object", "array", "any"]
Arguments = Annotated[dict[str, Any], BeforeValidator(_mapping)]
DEFAULT_PRIORITY: Priority = "normal"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_TYPE_CHECKS: dict[str, Callable[[Any], bool]] = {
    "any": lambda value: True,
    "string": lambda value: isinstance(value, str),
    "boolean": lambda value: isinstance(value, bool),
    "integer": lambda value: isinstance(value, int) and not isinstance(value, bool),
    "number": lambda value: isinstance(value, int | float) and not isinstance(value, bool),
    "object": lambda value: isinstance(value, dict),
    "array": lambda value: isinstance(value, list),
}


def matches_type(value: Any, type_: InputType) -> bool:
    """Whether a JSON value has the declared input type (booleans are not numbers)."""
    return _TYPE_CHECKS[type_](value)


class InputSpec(_Model):
    """A declared input; submit-time values are checked against it."""

    type: InputType = "any"
    required: bool = False
    default: Any = None
    description: str | None = None

    @model_validator(mode="after")
    def _check_default(self) -> InputSpec:
        if self.default is not None and self.required:
            raise ValueError("a required input cannot have a default: remove `default` or `required: true`")
        if self.default is not None and not matches_type(self.default, self.type):
            raise ValueError(f"the default {self.default!r} is not of type {self.type}: fix the default or the type")
        return self


class RetrySpec(_Model):
    """A `retry:` block as written; unset fields follow `defaults.retry`, then `patterns.retry.RetryPolicy()`."""

    max_attempts: int | None = Field(default=None, ge=1)
    backoff: Backoff | None = None
    initial_delay: Duration | None = None
    max_delay: Duration | None = None
    jitter: bool | None = None

    @model_validator(mode="after")
    def _check_delays(self) -> RetrySpec:
        if self.initial_delay is not None and self.max_delay is not None and self.initial_delay > self.max_delay:
            raise ValueError("initial_delay is longer than max_delay: raise max_delay or lower initial_delay")
        return self


class StepDefaults(_Model):
    """Settings applied to every step that does not set its own."""

    queue: Name | None = None
    timeout: Duration | None = None
    retry: RetrySpec | None = None
    priority: Priority | None = None
    circuit_breaker: Name | None = None


class CompensateSpec(_Model):
    """The step that undoes a succeeded step when the run compensates (saga)."""

    handler: HandlerName
    with_: Arguments = Field(default_factory=dict, alias="with")
    retry: RetrySpec | None = None
    queue: Name | None = None
    timeout: Duration | None = None


class GateSpec(_Model):
    """Handoff: a handler that checks a step's output before its dependents start."""

    handler: HandlerName
    with_: Arguments = Field(default_factory=dict, alias="with")
    max_attempts: int = Field(default=3, ge=1)


class SwarmSpec(_Model):
    """Run `replicas` copies of a step and return the consensus output."""

    replicas: int = Field(ge=1, le=1000)
    quorum: int | None = Field(default=None, ge=1)
    vote: Literal["majority", "unanimous", "first"] = "majority"

    @model_validator(mode="after")
    def _check_quorum(self) -> SwarmSpec:
        if self.quorum is not None and self.quorum > self.replicas:
            raise ValueError(f"quorum {self.quorum} is more than the {self.replicas} replicas: lower it")
        return self

    @property
    def effective_quorum(self) -> int:
        """Agreeing replicas needed: the given quorum, else a majority, all, or the first one."""
        if self.quorum is not None:
            return self.quorum
        return {"majority": self.replicas // 2 + 1, "unanimous": self.replicas, "first": 1}[self.vote]


class BreakerSpec(_Model):
    """Settings of a named circuit breaker shared by every worker."""

    fail_max: int = Field(default=5, ge=1)
    reset_timeout: Duration = 30.0
    exclude: list[Annotated[str, Field(pattern=ERROR_TYPE_PATTERN)]] = Field(default_factory=list)


class HookSpec(_Model):
    """A handler run on run/step events: `pre` may veto a step, `post` follows it, `session` brackets the run."""

    name: StepId | None = None
    on: Annotated[list[Annotated[str, Field(pattern=EVENT_PATTERN)]], BeforeValidator(_listify)] = Field(min_length=1)
    kind: Literal["pre", "post", "session"] = "post"
    handler: HandlerName
    with_: Arguments = Field(default_factory=dict, alias="with")


class WaitSpec(_Model):
    """`wait:` a step that waits for a named signal (docs/spec.md §12.1); its output is the payload."""

    signal: Annotated[str, Field(pattern=SIGNAL_PATTERN)]
    timeout: Duration | None = None


class ApprovalSpec(_Model):
    """`approval:` a person approves or rejects the step; no worker runs it."""

    timeout: Duration | None = None
    approvers: list[Name] | None = Field(default=None, min_length=1)


def _sleep_shorthand(value: object) -> object:
    """`sleep: 10m` means `sleep: {duration: 10m}`."""
    return value if value is None or isinstance(value, dict) else {"duration": value}


def _check_until(value: object) -> object:
    if value is None or (isinstance(value, str) and whole_reference(value) is not None):
        return value
    if isinstance(value, str):
        from orchestrator.instants import parse_instant

        parse_instant(value)  # raises ValueError with what to write
        return value
    raise ValueError(
        f'must be an ISO-8601 time such as "2026-12-24T18:00:00Z" or one ${{{{ … }}}} reference, not {value!r}'
    )


class SleepSpec(_Model):
    """`sleep:` a durable timer: a duration, or `until` an ISO-8601 time."""

    duration: Duration | None = None
    until: Annotated[str | None, BeforeValidator(_check_until)] = None

    @model_validator(mode="after")
    def _check_one(self) -> SleepSpec:
        if (self.duration is None) == (self.until is None):
            raise ValueError(
                'set exactly one of a duration (`sleep: 10m`) or `until` (`sleep: {until: "2026-12-24T18:00:00Z"}`)'
            )
        return self


# What a step that no worker runs may not set, and why.
_NOT_ON_WAITS = {
    "for_each": "`for_each`",
    "swarm": "`swarm`",
    "gate": "`gate`",
    "retry": "`retry` (a wait is not retried)",
    "circuit_breaker": "`circuit_breaker`",
    "queue": "`queue`",
    "priority": "`priority`",
    "timeout": "`timeout` (put it inside the `wait:` or `approval:` block)",
}


def _an(kind: str) -> str:
    return f"an `{kind}`" if kind[0] in "aeiou" else f"a `{kind}`"


class StepSpec(_Model):
    """One step as written. Unset settings are None; `orchestrator.workflow.compile_workflow` resolves them."""

    id: StepId
    description: str | None = None
    handler: HandlerName | None = None
    workflow: Name | None = None  # hierarchical: run this child workflow as the step
    with_: Arguments = Field(default_factory=dict, alias="with")
    needs: Annotated[list[StepId], BeforeValidator(_listify)] = Field(default_factory=list)
    queue: Name | None = None
    timeout: Duration | None = None
    retry: RetrySpec | None = None
    priority: Priority | None = None
    circuit_breaker: Name | None = None
    compensate: CompensateSpec | None = None
    when: Annotated[str | bool | None, BeforeValidator(_check_when)] = None
    for_each: Annotated[str | list[Any] | None, BeforeValidator(_check_for_each)] = None
    estimate: Duration | None = None
    gate: GateSpec | None = None
    swarm: SwarmSpec | None = None
    concurrency: ConcurrencySpec | None = None  # flow control (docs/spec.md §12.2)
    rate_limit: RateLimitSpec | None = None
    wait: WaitSpec | None = None  # durable waits (docs/spec.md §12.1): no worker runs these three
    approval: ApprovalSpec | None = None
    sleep: Annotated[SleepSpec | None, BeforeValidator(_sleep_shorthand)] = None

    @property
    def wait_kind(self) -> str | None:
        """`wait`, `approval` or `sleep` for a step that waits instead of running a handler; else None."""
        for kind in ("wait", "approval", "sleep"):
            if getattr(self, kind) is not None:
                return kind
        return None

    @model_validator(mode="after")
    def _check_kind(self) -> StepSpec:
        kinds = [k for k in ("handler", "workflow", "wait", "approval", "sleep") if getattr(self, k) is not None]
        if len(kinds) == 2 and self.wait_kind is not None:  # a wait kind and one more
            other = next(k for k in kinds if k != self.wait_kind)
            raise ValueError(
                f"{_an(self.wait_kind)} step waits; no worker runs it: remove `{other}` (or the `{self.wait_kind}:`"
                " block and make it a handler step)"
            )
        if len(kinds) != 1:
            raise ValueError(
                "set exactly one of `handler` (a registered handler name), `workflow` (a child workflow), "
                "`wait` (a signal), `approval` (a person) or `sleep` (a timer)"
            )
        if self.wait_kind is not None:
            written = [text for name, text in _NOT_ON_WAITS.items() if getattr(self, name) is not None]
            if self.with_:
                written.append("`with`")
            if written:
                listed = ", ".join(written)
                raise ValueError(f"{_an(self.wait_kind)} step runs no handler, so it cannot set {listed}: remove it")
        if self.swarm is not None and self.workflow is not None:
            raise ValueError("`swarm` runs replicas of a handler; it cannot run a child workflow")
        if self.swarm is not None and self.for_each is not None:
            raise ValueError("`swarm` and `for_each` cannot be combined: use one of them per step")
        if self.gate is not None and (self.for_each is not None or self.swarm is not None):
            raise ValueError("a `gate` checks one output: it cannot be combined with `for_each` or `swarm`")
        if self.workflow is not None and self.for_each is not None:
            raise ValueError("`for_each` over a child `workflow` is not supported: use a handler step")
        return self


class WorkflowSpec(_Model):
    """A whole workflow document."""

    name: Name
    description: str | None = None
    inputs: dict[StepId, InputSpec] = Field(default_factory=dict)
    defaults: StepDefaults = Field(default_factory=StepDefaults)
    on_failure: Literal["fail", "compensate"] = "fail"
    steps: list[StepSpec] = Field(min_length=1)
    hooks: list[HookSpec] = Field(default_factory=list)
    breakers: dict[Name, BreakerSpec] = Field(default_factory=dict)
    concurrency: RunConcurrencySpec | None = None  # runs of this workflow per key (docs/spec.md §12.2)
    # Hierarchical: child workflow documents by name. `steppe submit` fills it with the
    # `NAME.yaml` files found beside the parent, so that a stored run is self-contained.
    workflows: dict[Name, dict[str, Any]] = Field(default_factory=dict)

    _index: dict[str, StepSpec] | None = PrivateAttr(default=None)
    # The planner's analysis of this graph, kept by validation so that planning does not redo it.
    _analysis: Any = PrivateAttr(default=None)
    # The `uses:` steps that validation expanded (patterns.expansion.Expansion), for `steppe validate` / `plan`.
    _expansions: list[Any] = PrivateAttr(default_factory=list)

    def __eq__(self, other: object) -> bool:
        # Compare the document only: the private caches differ between equal specs.
        return type(other) is type(self) and self.__dict__ == other.__dict__

    __hash__ = None  # type: ignore[assignment]  # mutable containers inside; never hashed

    @property
    def step_ids(self) -> list[str]:
        return [step.id for step in self.steps]

    def step(self, step_id: str) -> StepSpec:
        """The step with this id (KeyError when there is none)."""
        if self._index is None:
            self._index = {step.id: step for step in self.steps}
        return self._index[step_id]

    def queue_of(self, step: StepSpec) -> str:
        """The step's queue: its own, else `defaults.queue`, else `default`.

        The compiler's rule (`orchestrator.workflow`), here so that the planner uses it without loading the runtime.
        """
        return step.queue or self.defaults.queue or DEFAULT_QUEUE

    def breaker(self, name: str) -> BreakerSpec:
        """Settings of a named breaker: its `breakers:` entry, else the defaults."""
        return self.breakers.get(name) or BreakerSpec()
