"""What a run engine hands the coordinator: the `EngineOutput` of a drain, and the `Timer`s in it."""

from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator.engine.limits import LimitRequest
from orchestrator.messages import Dispatch
from orchestrator.state import Event
from patterns.dead_letter import DeadLetter
from patterns.hierarchical import ChildStart


@dataclass(frozen=True, slots=True)
class Timer:
    """Something the coordinator must call back at `due` (unix seconds)."""

    due: float
    run_id: str
    step: str
    attempt: int
    kind: str  # "retry" | "timeout"


@dataclass(slots=True)
class EngineOutput:
    """What one run decided since the last `RunEngine.drain()`, for the coordinator to act on.

    `events` are committed (with the run's projection); only once they are, `dispatches` are
    published, `timers` scheduled, `child_starts` created and `child_cancels` requested.
    `dead_letters` are rows committed with the events (compensations that failed for good).
    """

    events: list[Event] = field(default_factory=list)
    dispatches: list[Dispatch] = field(default_factory=list)
    timers: list[Timer] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    child_starts: list[ChildStart] = field(default_factory=list)
    child_cancels: list[str] = field(default_factory=list)
    limit_requests: list[LimitRequest] = field(default_factory=list)  # throttled attempts (engine.limits)
