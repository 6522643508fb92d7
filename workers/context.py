"""The `StepContext` passed to every handler."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

import structlog

from orchestrator.errors import NonRetryableStepError

INPUTS_NOT_SENT = (
    "ctx.inputs is not sent to workers: a step message carries only the step's own arguments, so that "
    "a for_each over 10,000 items does not copy the run's inputs 10,000 times; pass what the handler "
    'needs in the step\'s `with:`, e.g. `with: {order_id: "${{ inputs.order_id }}"}`'
)


class InputsNotSent(Mapping[str, Any]):
    """`ctx.inputs`: fails every access with a message saying to use `with:` instead.

    It is not an empty mapping on purpose: `ctx.inputs.get("x")` returning None would hide the change.
    """

    def _fail(self) -> NoReturn:
        raise NonRetryableStepError(INPUTS_NOT_SENT)

    def __getitem__(self, key: str) -> Any:
        self._fail()

    def __iter__(self) -> Iterator[str]:
        self._fail()

    def __len__(self) -> int:  # noqa: PLE0303 - it never returns: every access fails with the message
        self._fail()

    def __contains__(self, key: object) -> bool:
        self._fail()

    def get(self, key: str, default: Any = None) -> Any:
        self._fail()

    def __repr__(self) -> str:
        return "<ctx.inputs not sent: use the step's `with:`>"


@dataclass
class StepContext:
    """What a handler knows about the attempt it is running."""

    run_id: str
    step_id: str
    step_key: str
    attempt: int
    workflow: str
    kind: str = "step"
    event: dict[str, Any] | None = None  # hooks: the run or step event that triggered this execution
    feedback: Any = None  # handoff: the gate's feedback on the previous attempt's output (None at first)
    annotations: dict[str, Any] | None = None  # what `pre` hooks added to this step
    log: Any = field(default_factory=lambda: structlog.get_logger("steppe.handler"))
    _on_heartbeat: Callable[[], None] | None = field(default=None, repr=False)
    _cancelled: asyncio.Event | None = field(default=None, repr=False)
    # Not sent since step-message schema version 2 (see `InputsNotSent`); kept so old handlers fail clearly.
    inputs: Mapping[str, Any] = field(default_factory=InputsNotSent, repr=False)

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
