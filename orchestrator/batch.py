"""One coordinator batch: what the runs it touched decided, gathered for one PostgreSQL transaction.

Each touched run's `RunEngine.drain()` output is added to a `Batch`: its events and projection
rows become a `RunWrite` (fenced by the version the coordinator last committed, `Tracked`),
committed together with the batch's dead letters; only once that commit succeeded does the
coordinator publish the dispatches, schedule the timers, start and cancel child runs and
report finished runs. No I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator.engine import Dispatch, EngineOutput, RunEngine, Timer
from orchestrator.state import Event
from orchestrator.store.runs import RunWrite
from patterns.dead_letter import DeadLetter
from patterns.hierarchical import ChildStart

__all__ = ["Batch", "Tracked", "run_write"]


@dataclass(slots=True)
class Tracked:
    """A run a coordinator drives: its engine, the projection version last committed, its workflow."""

    engine: RunEngine
    version: int
    workflow: str


@dataclass(slots=True)
class Batch:
    """What the touched runs decided: `writes` and `dead_letters` to commit, the rest to act on after."""

    dead_letters: list[DeadLetter] = field(default_factory=list)
    writes: list[RunWrite] = field(default_factory=list)
    dispatches: list[Dispatch] = field(default_factory=list)
    timers: list[Timer] = field(default_factory=list)
    child_starts: list[ChildStart] = field(default_factory=list)
    child_cancels: list[str] = field(default_factory=list)
    finished: list[Tracked] = field(default_factory=list)

    def add(self, tracked: Tracked, out: EngineOutput) -> bool:
        """Add one run's output; False when it has no events (nothing of the run to commit)."""
        self.child_starts += out.child_starts
        self.child_cancels += out.child_cancels
        self.timers += out.timers
        if not out.events:
            return False
        self.writes.append(run_write(tracked, out.events))
        self.dispatches += out.dispatches
        self.dead_letters += out.dead_letters
        if tracked.engine.finished:
            self.finished.append(tracked)
        return True


def run_write(tracked: Tracked, events: list[Event]) -> RunWrite:
    """The run's new events and the projection rows of the steps they changed."""
    run = tracked.engine.run
    keys = {e.step for e in events if e.step is not None}
    return RunWrite(
        run_id=run.run_id,
        expected_version=tracked.version,
        status=run.status,
        state=run.state,
        last_seq=run.last_seq,
        events=events,
        steps={k: run.steps[k] for k in keys},
        finished=tracked.engine.finished,
    )
