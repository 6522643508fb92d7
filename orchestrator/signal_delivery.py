"""The coordinator's delivery of signals and approval decisions to waiting steps (docs/spec.md §12.1).

A signal is accepted into PostgreSQL with a `signal` command (orchestrator/store/signals.py) and a
wake-up on the partition's control stream. The owning coordinator, processing its commands, asks
`deliver` to offer the runs' unconsumed signals to their engines; a run it loads (start, takeover,
a result of a run it did not track) gets its unconsumed signals too (`on_loaded`), which is how
early signals survive a coordinator's death. The engine consumes each once (engine.waits); the
consumption commits with the event. What it reads goes to the waits' metrics (orchestrator/wait_metrics.py).
No Redis here.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from orchestrator import fault_points
from orchestrator.batch import Tracked
from orchestrator.store.runs import RunStore
from orchestrator.store.signals import SignalStore
from orchestrator.wait_metrics import WaitMetrics

__all__ = ["SignalDelivery"]


class SignalDelivery:
    """Offers stored signals to the engines of the runs a coordinator tracks."""

    def __init__(self, store: RunStore, metrics: WaitMetrics | None = None) -> None:
        self.signals = SignalStore(store)
        self.metrics = metrics if metrics is not None else WaitMetrics()

    def deliver(self, runs: Mapping[str, Tracked], run_ids: Collection[str]) -> set[str]:
        """Offer the unconsumed signals of these tracked runs; returns the runs whose engine changed."""
        wanted = [r for r in run_ids if r in runs]
        if not wanted:
            return set()
        changed: set[str] = set()
        loaded = self.signals.unconsumed(wanted)
        # TEST-ONLY: die with accepted signals loaded, before any is applied and committed (tests/faults).
        fault_points.crash_point("SIGNAL_BEFORE_APPLY", sum(map(len, loaded.values())))
        self.metrics.offered(loaded)  # their acceptance times: the latency is observed once committed
        for run_id, signals in loaded.items():
            if runs[run_id].engine.offer_signals(signals):
                changed.add(run_id)
        return changed

    def on_loaded(self, runs: Mapping[str, Tracked], run_ids: Collection[str]) -> None:
        """Runs just loaded hold the signals accepted before, without a transition: a loaded engine must
        not decide anything the coordinator does not commit and publish in order (the reconciler
        compares what it holds with Redis). A step that starts waiting consumes them, and so does
        the `signal` command of one accepted while no coordinator ran (`deliver`). Runs of workflows
        without a wait step are not asked about: no step of theirs can consume a signal."""
        wanted = [r for r in run_ids if r in runs and runs[r].engine.wf.has_waits]
        if not wanted:
            return
        found = self.signals.unconsumed(wanted)
        self.metrics.offered(found)
        for run_id, signals in found.items():
            runs[run_id].engine.waits.keep(signals)
