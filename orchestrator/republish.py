"""What a coordinator's reconciler publishes again: dispatched attempts that Redis does not hold.

PostgreSQL is the source of truth: a step is dispatched once its `step.dispatched` event
committed, and its message is published after. Two checks find the messages that never got there
or vanished (`Republisher.due`, at each reconcile):

- after a crash between commit and publish, the in-flight dispatches of the runs just loaded
  that no stream holds; after Redis lost its data, every in-flight dispatch of every run (and
  every in-flight hook), without looking;
- otherwise, attempts absent from Redis at two reconciles in a row (`streams.LostMessages`): a
  single message lost while Redis kept the rest (a failover to a replica that missed the write).

Attempt fencing makes a needless re-publish harmless.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import structlog

from orchestrator.batch import Tracked
from orchestrator.coordinator_bus import CoordinatorBus
from orchestrator.engine import Dispatch
from orchestrator.hook_runner import HookRunner
from orchestrator.state import RunStatus
from orchestrator.streams import LostMessages

__all__ = ["Republisher"]

log = structlog.get_logger(__name__)


class Republisher:
    """Finds the dispatches to publish again, through the coordinator's bus and hooks."""

    def __init__(self, bus: CoordinatorBus, hooks: HookRunner) -> None:
        self.bus = bus
        self.hooks = hooks
        self._lost = LostMessages()

    def due(
        self,
        runs: Mapping[str, Tracked],
        check: set[str],
        partitions: Sequence[int],
        *,
        hooks_due: list[Dispatch],
        redis_lost_data: bool,
    ) -> list[Dispatch]:
        """The in-flight dispatches of the `check` runs (and hooks) absent from Redis. Runs not started
        yet are left out: their first dispatches are not published yet."""
        candidates = [
            d
            for run_id in check
            if runs[run_id].engine.run.status is not RunStatus.PENDING
            for d in runs[run_id].engine.in_flight_dispatches()
        ]
        candidates += self.hooks.in_flight() if redis_lost_data else hooks_due
        if not candidates:
            return [] if redis_lost_data else self._lost_messages(runs, partitions)
        present = set() if redis_lost_data else self.bus.attempts_in_redis({d.queue for d in candidates}, partitions)
        missing = [d for d in candidates if (d.message.run, d.message.step, d.message.attempt) not in present]
        if missing:
            log.warning("steps_republished", count=len(missing), reason="absent from Redis")
        return missing

    def _lost_messages(self, runs: Mapping[str, Tracked], partitions: Sequence[int]) -> list[Dispatch]:
        """Dispatched attempts absent from Redis at two reconciles in a row (`streams.LostMessages`)."""
        candidates = [d for t in runs.values() for d in t.engine.in_flight_dispatches(started=False)]
        candidates += self.hooks.in_flight()
        lost = self._lost.check(candidates, lambda queues: self.bus.attempts_in_redis(queues, partitions))
        if lost:
            log.warning("steps_republished", count=len(lost), reason="message missing from Redis")
        return lost
