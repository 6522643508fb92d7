"""Durable waits' series (docs/spec.md §12.1): waiting steps by kind, signal latency, signals consumed.

`steppe_waiting_steps{kind}` counts the waiting steps of the runs this coordinator tracks. The
steps a commit wrote are looked at again (`committed`: only those, so a for_each of many items
costs nothing more per result), a run a load brought in is counted whole (`recount`); the runs
the coordinator stopped tracking (finished, on a partition it lost, or dropped after a failed
write to be reloaded) are dropped by `sync`, so a coordinator that loses a partition stops
counting its waits and the new owner counts them: dashboards sum over coordinators. The three
kinds are always exported, 0 included (a fixed, bounded label set: nothing to remove).

`steppe_signal_latency_seconds{kind}` is observed once per signal or decision whose consumption
committed, from its acceptance (`run_signals.created_at`, as the coordinator read it) or, for a
signal sent before its step waited, from the step starting to wait, to the commit of the event
that ended the wait. A consumption is observed only once it committed: a batch that did not
commit is reloaded and applied again, and counts then. No Redis, no PostgreSQL here.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass

from orchestrator.batch import Tracked
from orchestrator.engine.waits import APPROVE, REJECT, SIGNAL, Signal
from orchestrator.metrics import SIGNAL_LATENCY, SIGNALS_CONSUMED, WAITING_STEPS
from orchestrator.state import EventType, StepRecord, StepStatus
from orchestrator.store.runs import RunWrite

__all__ = ["KINDS", "WaitMetrics"]

KINDS = ("signal", "approval", "sleep")  # the `kind` of a waiting step (its detail's `wait.kind`)


@dataclass(frozen=True, slots=True)
class _Offered:
    run_id: str
    kind: str  # SIGNAL, APPROVE or REJECT
    accepted: float  # unix seconds


class WaitMetrics:
    """The waits' series of one coordinator, kept from what it tracks and commits."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock  # the wall clock: acceptance times are PostgreSQL's
        self._of_run: dict[str, dict[str, str]] = {}  # run id → its waiting steps' keys → kind (runs with some)
        self._totals: Counter[str] = Counter()
        self._offered: dict[int, _Offered] = {}  # signal id → what was read of it, until consumed
        self._export()

    def offered(self, signals: Mapping[str, Iterable[Signal]]) -> None:
        """Signals and decisions read from PostgreSQL and offered (or kept) for these runs' engines."""
        for run_id, found in signals.items():
            for signal in found:
                self._offered[signal.signal_id] = _Offered(run_id, signal.kind, signal.at)

    def committed(self, writes: Iterable[RunWrite], runs: Mapping[str, Tracked]) -> None:
        """A batch committed: observe the signals its events consumed, look again at the steps it wrote."""
        now = self.clock()
        for write in writes:
            if write.run_id not in runs:  # finished (or dropped): none of its steps is this coordinator's
                self._drop(write.run_id)
            else:
                self._update(write.run_id, write.steps)
            for event in write.events:
                signal_id = event.data.get("signal_id")
                if signal_id is None or event.step is None:
                    continue
                record = write.steps.get(event.step)
                wait = (record.detail.get("wait") or {}) if record is not None else {}
                offered = self._offered.pop(int(signal_id), None)
                decision = offered.kind if offered is not None else _decision(event.type, wait.get("kind"))
                SIGNALS_CONSUMED.labels(kind=decision).inc()
                if offered is None:
                    continue  # not read by this coordinator (cannot happen: it offered it)
                since = wait.get("since")
                start = max(offered.accepted, float(since)) if isinstance(since, int | float) else offered.accepted
                kind = "signal" if decision == SIGNAL else "approval"
                SIGNAL_LATENCY.labels(kind=kind).observe(max(0.0, now - start))
        self._export()

    def recount(self, runs: Mapping[str, Tracked], run_ids: Collection[str]) -> None:
        """Count the waiting steps of these runs again (a run not tracked any more counts none)."""
        for run_id in run_ids:
            self._drop(run_id)
            tracked = runs.get(run_id)
            if tracked is not None:
                self._update(run_id, tracked.engine.run.steps)
        self._export()

    def sync(self, runs: Mapping[str, Tracked]) -> None:
        """Forget the runs this coordinator no longer tracks (lost partitions, state dropped)."""
        self.recount(runs, [run_id for run_id in self._of_run if run_id not in runs])
        for signal_id in [s for s, o in self._offered.items() if o.run_id not in runs]:
            del self._offered[signal_id]

    def _update(self, run_id: str, steps: Mapping[str, StepRecord]) -> None:
        waiting = self._of_run.setdefault(run_id, {})
        for key, record in steps.items():
            was = waiting.pop(key, None)
            if was is not None:
                self._totals[was] -= 1
            if record.status is StepStatus.WAITING:
                kind = waiting[key] = str((record.detail.get("wait") or {}).get("kind", "signal"))
                self._totals[kind] += 1
        if not waiting:
            del self._of_run[run_id]

    def _drop(self, run_id: str) -> None:
        for kind in self._of_run.pop(run_id, {}).values():
            self._totals[kind] -= 1

    def waiting(self) -> dict[str, int]:
        """Waiting steps by kind, as exported."""
        return {kind: max(0, self._totals.get(kind, 0)) for kind in (*KINDS, *sorted(set(self._totals) - set(KINDS)))}

    def _export(self) -> None:
        for kind, count in self.waiting().items():
            WAITING_STEPS.labels(kind=kind).set(count)


def _decision(event_type: EventType, wait_kind: object) -> str:
    if wait_kind == "approval":
        return APPROVE if event_type is EventType.STEP_SUCCEEDED else REJECT
    return SIGNAL
