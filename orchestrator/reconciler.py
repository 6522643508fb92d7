"""The coordinator's periodic recovery pass (`Reconciler.run`, every `reconcile_interval`).

It recovers what a crash or a Redis data loss left behind: consumer groups recreated after a data
loss, active runs of its partitions loaded from PostgreSQL (pending ones started: their wake-up
was lost), outcomes of finished child runs, dispatched attempts that Redis holds nowhere
re-published (`orchestrator/republish.py`), limit waiters swept, commands not yet processed
applied, dead letters synced and streams trimmed. A collaborator of `Coordinator`, acting
through its state and collaborators; the control flow of the loop stays in coordinator.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

from orchestrator import metrics
from orchestrator.state import RunStatus
from orchestrator.store.dead_letters import DeadLetterStore

if TYPE_CHECKING:
    from orchestrator.coordinator import Coordinator

log = structlog.get_logger("orchestrator.coordinator")


class Reconciler:
    """One coordinator's reconciliation."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.c = coordinator

    def run(self) -> None:
        """Recover what a crash or a Redis data loss left behind; see the module docstring."""
        c = self.c
        c._next_reconcile = c.clock() + c.cfg.reconcile_interval
        if not c.partitions:
            return
        redis_lost_data = c.bus.data_lost()
        if redis_lost_data:
            log.warning("redis_data_loss_detected", action="recreating groups and re-publishing in-flight steps")
            c.bus.restore(c.partitions)
        c.hooks.refresh()
        before = set(c.runs)
        c._load(set(c.store.active_run_ids(c.partitions)) - before)
        loaded = set(c.runs) - before
        c._child_results.extend(c.children.reconcile(t.engine for t in c.runs.values()))
        c.bus.ensure_queues(q for tracked in c.runs.values() for q in tracked.engine.wf.queues)
        # Re-publish dispatched attempts that Redis holds nowhere (lost, or never published because a
        # coordinator died between its commit and its XADD); see orchestrator/republish.py.
        hooks_due = c.hooks.reload(c.partitions)
        check = set(c.runs) if redis_lost_data else loaded
        c._unpublished += c.republisher.due(
            c.runs, check, c.partitions, hooks_due=hooks_due, redis_lost_data=redis_lost_data
        )
        self._start_loaded(loaded)
        c.limiter.sweep(c.partitions)
        if c.store.pending_commands(c.partitions):
            processed = c._apply_commands()
            c._commit({p[1] for p in processed}, [p[0] for p in processed], [])
        c.bus.sync_dead_letters(DeadLetterStore(c.store))
        c.bus.trim(c.partitions)
        c.bus.export_metrics(live_since=c.clock() - 3 * c.settings.worker.heartbeat_interval)
        metrics.ACTIVE_RUNS.set(len(c.runs))

    def _start_loaded(self, loaded: set[str]) -> None:
        """Start the runs just loaded that were still pending (their wake-up was lost) and commit."""
        touched = set()
        for run_id in loaded:
            engine = self.c.runs[run_id].engine
            if engine.run.status is RunStatus.PENDING:
                engine.start()
                touched.add(run_id)
        if touched:
            self.c._commit(touched, [], [])
