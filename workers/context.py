"""The `StepContext` passed to every handler."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import structlog


@dataclass
class StepContext:
    """What a handler knows about the attempt it is running."""

    run_id: str
    step_id: str
    step_key: str
    attempt: int
    workflow: str
    # The run's inputs, read-only: stored once per run in Redis and read by the worker before the
    # handler is called (`workers.inputs`); hooks get a mapping that says to use their `with:`.
    # Where it always was (sixth), so that positional construction keeps working.
    inputs: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), repr=False)
    kind: str = "step"
    event: dict[str, Any] | None = None  # hooks: the run or step event that triggered this execution
    feedback: Any = None  # handoff: the gate's feedback on the previous attempt's output (None at first)
    annotations: dict[str, Any] | None = None  # what `pre` hooks added to this step
    log: Any = field(default_factory=lambda: structlog.get_logger("steppe.handler"))
    _on_heartbeat: Callable[[], None] | None = field(default=None, repr=False)
    _cancelled: asyncio.Event | None = field(default=None, repr=False)

    @property
    def idempotency_key(self) -> str:
        """Stable across retries and redeliveries: use it to make side effects idempotent."""
        return f"{self.run_id}/{self.step_key}"

    def heartbeat(self) -> None:
        """Extend this step's visibility timeout now (workers also do it periodically)."""
        if self._on_heartbeat is not None:
            self._on_heartbeat()

    @property
    def cancelled(self) -> bool:
        """True once the run was cancelled; long sync handlers should check it and return."""
        return self._cancelled is not None and self._cancelled.is_set()
