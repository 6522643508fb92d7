"""The coordinator's delivery of signals and approval decisions to waiting steps (docs/spec.md §12.1).

A signal is accepted into PostgreSQL with a `signal` command (orchestrator/store/signals.py) and a
wake-up on the partition's control stream. The owning coordinator, processing its commands, asks
`deliver` to offer the runs' unconsumed signals to their engines; a run it loads (start, takeover,
a result of a run it did not track) gets its unconsumed signals too (`on_loaded`), which is how
early signals survive a coordinator's death. The engine consumes each once (engine.waits); the
consumption commits with the event. Also the waits' metrics. No Redis here.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping

from prometheus_client import Counter, Gauge, Histogram

from orchestrator import fault_points
from orchestrator.batch import Tracked
from orchestrator.state import StepStatus
from orchestrator.store.runs import RunStore
from orchestrator.store.signals import SignalStore

__all__ = ["SIGNALS_CONSUMED", "SIGNAL_LATENCY", "WAITING_STEPS", "SignalDelivery"]

WAITING_STEPS = Gauge(
    "steppe_waiting_steps", "Steps waiting for a signal, an approval or a timer, of this coordinator's runs", ["kind"]
)
SIGNALS_CONSUMED = Counter(
    "steppe_signals_consumed_total", "Signals and approval decisions that ended a wait", ["kind"]
)
SIGNAL_LATENCY = Histogram(
    "steppe_signal_latency_seconds",
    "From a signal's acceptance to the coordinator applying it to a waiting step",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
_KINDS = ("signal", "approval", "sleep")


class SignalDelivery:
    """Offers stored signals to the engines of the runs a coordinator tracks."""

    def __init__(self, store: RunStore) -> None:
        self.signals = SignalStore(store)

    def deliver(self, runs: Mapping[str, Tracked], run_ids: Collection[str]) -> set[str]:
        """Offer the unconsumed signals of these tracked runs; returns the runs whose engine changed."""
        wanted = [r for r in run_ids if r in runs]
        if not wanted:
            return set()
        changed: set[str] = set()
        now = time.time()
        loaded = self.signals.unconsumed(wanted)
        # TEST-ONLY: die with accepted signals loaded, before any is applied and committed (tests/faults).
        fault_points.crash_point("SIGNAL_BEFORE_APPLY", sum(map(len, loaded.values())))
        for run_id, signals in loaded.items():
            waits = runs[run_id].engine.waits
            before = set(waits.consumed)
            if runs[run_id].engine.offer_signals(signals):
                changed.add(run_id)
            for signal in signals:
                if signal.signal_id in waits.consumed and signal.signal_id not in before:
                    SIGNALS_CONSUMED.labels(kind=signal.kind).inc()
                    SIGNAL_LATENCY.observe(max(0.0, now - signal.at))
        self.export(runs)
        return changed

    def on_loaded(self, runs: Mapping[str, Tracked], run_ids: Collection[str]) -> None:
        """Runs just loaded hold the signals accepted before, without a transition: a loaded engine must
        not decide anything the coordinator does not commit and publish in order (the reconciler
        compares what it holds with Redis). A step that starts waiting consumes them, and so does
        the `signal` command of one accepted while no coordinator ran (`deliver`)."""
        wanted = [r for r in run_ids if r in runs]
        if not wanted:
            return
        for run_id, signals in self.signals.unconsumed(wanted).items():
            runs[run_id].engine.waits.keep(signals)

    @staticmethod
    def export(runs: Mapping[str, Tracked]) -> None:
        counts = dict.fromkeys(_KINDS, 0)
        for tracked in runs.values():
            for record in tracked.engine.run.steps.values():
                if record.status is StepStatus.WAITING:
                    kind = str((record.detail.get("wait") or {}).get("kind", "signal"))
                    counts[kind] = counts.get(kind, 0) + 1
        for kind, count in counts.items():
            WAITING_STEPS.labels(kind=kind).set(count)
