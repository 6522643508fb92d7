"""The coordinator's retention pruner: deletes finished runs older than STEPPE_RETENTION__FINISHED_RUNS.

`Pruner.tick(now)` is called from every coordinator loop iteration and returns at once: when a
batch is due it hands it to one background thread, so the loop never waits for PostgreSQL's
deletes. Each batch is one call of `steppe_prune_finished_runs` (orchestrator/store/retention.py),
which takes a fleet-wide advisory transaction lock: whichever coordinator comes first prunes,
the others get `busy` and try again an interval later. A full batch means a backlog: the next
one follows after `BACKLOG_PAUSE` instead of a whole interval.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import structlog

from orchestrator import metrics
from orchestrator.settings import RetentionSettings
from orchestrator.store import retention as rows
from orchestrator.store.retention import PruneResult
from orchestrator.store.runs import RunStore

log = structlog.get_logger(__name__)

BACKLOG_PAUSE = 0.1  # seconds between batches while a backlog is being worked off


def record(result: PruneResult, store: RunStore) -> None:
    """Count what a batch deleted and refresh the oldest-finished-run gauge (now when none is kept)."""
    for table, count in result.counts().items():
        if count:
            metrics.RETENTION_PRUNED.labels(table=table).inc(count)
    oldest = rows.oldest_finished_at(store)
    metrics.RETENTION_OLDEST_FINISHED.set(oldest.timestamp() if oldest else time.time())


class Pruner:
    """Runs one retention batch at a time in a background thread, when due."""

    def __init__(self, *, store: RunStore, settings: RetentionSettings, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.cfg = settings
        self.clock = clock
        self._next = 0.0
        self._thread: threading.Thread | None = None
        self.last: PruneResult | None = None  # the last batch's result (tests, logs)
        for table in rows.PRUNED_TABLES:  # every series exists from the start, at 0
            metrics.RETENTION_PRUNED.labels(table=table)
        metrics.RETENTION_OLDEST_FINISHED.set(time.time())  # until the first batch has looked

    @property
    def enabled(self) -> bool:
        return self.cfg.finished_runs > 0

    def tick(self, now: float) -> None:
        """Start a batch in the background when one is due and none is running."""
        if not self.enabled or now < self._next or (self._thread is not None and self._thread.is_alive()):
            return
        self._next = now + self.cfg.interval  # shortened by `_batch` when the batch was full
        self._thread = threading.Thread(target=self._batch, name="steppe-retention", daemon=True)
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _batch(self) -> None:
        started = time.perf_counter()
        try:
            cutoff = rows.cutoff_before(self.store, self.cfg.finished_runs)
            result = rows.prune_batch(self.store, cutoff, max_runs=self.cfg.batch_runs)
            if not result.busy:
                record(result, self.store)
        except Exception as e:  # PostgreSQL away or refusing: the next interval tries again
            log.warning("retention_prune_failed", error=str(e), error_type=type(e).__name__)
            return
        self.last = result
        if result.busy:
            return
        if result.runs:
            log.info("retention_pruned", seconds=round(time.perf_counter() - started, 3), **result.counts())
        if result.runs >= self.cfg.batch_runs:
            self._next = min(self._next, self.clock() + BACKLOG_PAUSE)
