"""The coordinator's side of hierarchical workflows: create, cancel and hear back from child runs.

A parent's `step.dispatched` event for a `workflow:` step is committed first; only then is
the child run inserted (idempotently: its id derives from the parent, step and attempt)
and its partition woken. When the child finishes, its coordinator reports the outcome on
the parent's results stream, like a worker would. Either message can be lost in a crash;
the parent's reconciler (`reconcile`) recreates missing children and reads finished ones
from PostgreSQL, and attempt fencing drops whatever arrives twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import redis
import structlog

from orchestrator import bus, run_limits
from orchestrator.engine import RunEngine
from orchestrator.keys import Keys
from orchestrator.planner import plan as make_plan
from orchestrator.settings import LimitSettings
from orchestrator.spec import WorkflowSpec
from orchestrator.state import TERMINAL_RUN_STATUSES, RunStatus
from orchestrator.store.descendants import count_descendants, existing_runs
from orchestrator.store.leases import partition_of
from orchestrator.store.runs import NewRun, RunStore
from orchestrator.wire import ControlMessage, ResultMessage, StepErrorInfo
from patterns.hierarchical import ChildStart, outcome, parent_of, root_of

log = structlog.get_logger(__name__)


class ChildRuns:
    """Creates child runs once their parent's dispatch is committed, and reports their ends."""

    def __init__(
        self, *, store: RunStore, client: redis.Redis, keys: Keys, partitions: int, limits: LimitSettings | None = None
    ) -> None:
        self.store = store
        self.redis = client
        self.keys = keys
        self.partitions = partitions
        self.limits = limits or LimitSettings()

    def start(self, starts: Iterable[ChildStart]) -> None:
        """Create these child runs, except those over the descendants limit: their steps fail instead."""
        allowed = self._within_limit(list(starts))
        rows = [self._row(s) for s in allowed]
        if not rows:
            return
        created = self.store.create_child_runs(rows)
        for row in rows:
            if row.run_id in created:
                log.info("child_run_created", run_id=row.run_id, parent=row.parent_run_id, workflow=row.workflow)
        self._wake([(r.partition, ControlMessage(kind="submitted", run=r.run_id)) for r in rows])

    def _within_limit(self, starts: list[ChildStart]) -> list[ChildStart]:
        """The starts that keep every top-level run within `descendants_per_run`; the parent step of
        each other one is failed (non-retryable) through its results stream, like a child's outcome."""
        if not starts:
            return []
        limit = self.limits.descendants_per_run
        existing = existing_runs(self.store, [s.run_id for s in starts])
        counts: dict[str, int] = {}
        allowed: list[ChildStart] = []
        refused: list[tuple[ChildStart, str]] = []
        for start in starts:
            if start.run_id in existing:
                allowed.append(start)  # created before a crash: creating it again changes nothing
                continue
            root = root_of(start.parent_run_id)
            if root not in counts:
                counts[root] = count_descendants(self.store, root, cap=limit + 1)
            if counts[root] >= limit:
                refused.append((start, run_limits.too_many_descendants(root, counts[root], self.limits)))
                continue
            counts[root] += 1
            allowed.append(start)
        for start, message in refused:
            log.warning("child_run_refused", run_id=start.run_id, parent=start.parent_run_id, reason=message)
            self._refuse(start, message)
        return allowed

    def _refuse(self, start: ChildStart, message: str) -> None:
        link = parent_of(start.run_id)
        assert link is not None  # child run ids derive from their parent's
        result = ResultMessage(
            run=start.parent_run_id,
            step=start.parent_step,
            attempt=link[2],
            status="failed",
            error=StepErrorInfo(type="RunLimitError", message=message, retryable=False),
        )
        stream = self.keys.results_stream(partition_of(start.parent_run_id, self.partitions))
        self._send([(stream, result)], "child_refusal_unsent", "the parent's reconciler", run_id=start.run_id)

    def cancel(self, run_ids: Iterable[str]) -> None:
        wakes = []
        for run_id in run_ids:
            self.store.add_command(run_id, "cancel")
            wakes.append((partition_of(run_id, self.partitions), ControlMessage(kind="cancel", run=run_id)))
            log.info("child_run_cancel_requested", run_id=run_id)
        self._wake(wakes)

    def report(self, run_id: str, status: RunStatus, state: dict[str, Any]) -> None:
        """A child run finished: tell its parent's coordinator (best effort; see `reconcile`)."""
        result = outcome(run_id, status, state)
        if result is None:
            return
        stream = self.keys.results_stream(partition_of(result.run, self.partitions))
        self._send([(stream, result)], "child_outcome_unsent", "the parent's reconciler", run_id=run_id)

    def reconcile(self, engines: Iterable[RunEngine]) -> list[ResultMessage]:
        """Recreate missing children of in-flight steps; return the outcomes of finished ones."""
        wanted = {
            start.run_id: start
            for engine in engines
            if engine.run.status not in TERMINAL_RUN_STATUSES
            for start in engine.child_starts()
        }
        if not wanted:
            return []
        found = self.store.run_outcomes(list(wanted))
        missing = [start for run_id, start in wanted.items() if run_id not in found]
        if missing:
            log.warning("child_runs_recreated", count=len(missing), reason="absent from PostgreSQL")
            self.start(missing)
        results = []
        for run_id, (status, state) in found.items():
            if RunStatus(status) in TERMINAL_RUN_STATUSES and parent_of(run_id) is not None:
                result = outcome(run_id, RunStatus(status), state)
                if result is not None:
                    results.append(result)
        return results

    def _row(self, start: ChildStart) -> NewRun:
        spec = WorkflowSpec.model_validate(start.definition)
        return NewRun(
            run_id=start.run_id,
            workflow=start.workflow,
            partition=partition_of(start.run_id, self.partitions),
            definition=start.definition,
            inputs=start.inputs,
            plan=make_plan(spec).to_json(),
            parent_run_id=start.parent_run_id,
            parent_step=start.parent_step,
            depth=start.depth,
        )

    def _wake(self, wakes: list[tuple[int, ControlMessage]]) -> None:
        entries = [(self.keys.control_stream(partition), message) for partition, message in wakes]
        self._send(entries, "child_wake_unsent", "the owning coordinator's reconciler")

    def _send(self, entries: Sequence[tuple[str, bus.Message]], event: str, recovery: str, **fields: Any) -> None:
        """Best effort: a message lost here is recovered by `recovery` (logged as `event`)."""
        try:
            bus.send(self.redis, entries)
        except bus.RETRYABLE as e:
            log.warning(event, error=str(e), recovery=recovery, **fields)
