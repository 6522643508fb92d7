"""What the run engine's collaborators may use of it, and nothing more.

`PatternTransitions` and `Unwinding` decide what a pattern's results mean; to act they call
the few operations of `EngineOps`, which `RunEngine` implements, read the run's workflow,
projection and messages, and update the `RunIndexes` they share with the engine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from orchestrator.engine.indexes import RunIndexes
    from orchestrator.messages import PreCheck, StepMessages
    from orchestrator.settings import LimitSettings
    from orchestrator.state import EventType, RunProjection
    from orchestrator.step_keys import StepKey
    from orchestrator.workflow import CompiledWorkflow


class EngineOps(Protocol):
    """The engine as its transitions see it."""

    wf: CompiledWorkflow
    run: RunProjection
    messages: StepMessages
    pre_checks: tuple[PreCheck, ...]
    limits: LimitSettings
    idx: RunIndexes

    def emit(self, kind: EventType, step: StepKey | str | None = None, attempt: int | None = None, **data: Any) -> None:
        """Append an event to the run's log and fold it into the projection."""

    def dispatch(self, key: StepKey) -> None:
        """Dispatch the next attempt of a step instance (or start its child run)."""

    def fail_now(self, key: StepKey, error: dict[str, Any], **data: Any) -> None:
        """Fail a step instance for good, without a retry (`data`: more fields of its event)."""

    def after_terminal(self, sid: str) -> None:
        """Step `sid` is terminal: close it and, if it succeeded, make ready the dependents it was the last need of."""
