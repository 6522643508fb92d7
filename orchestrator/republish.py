"""What a coordinator's reconciler publishes again: dispatched attempts that Redis does not hold.

PostgreSQL is the source of truth: a step is dispatched once its `step.dispatched` event
committed, and its message is published after. Two checks find the messages that never got there
or vanished (`Republisher.due`, at each reconcile):

- after a crash between commit and publish, the in-flight dispatches of the runs just loaded
  that no stream holds; after Redis lost its data, every in-flight dispatch of every run (and
  every in-flight hook), without looking;
- otherwise, attempts absent from Redis at two reconciles in a row (`LostAttempts`): a single
  message lost while Redis kept the rest (a failover to a replica that missed the write). Only
  the attempts' keys are gathered for this check; a message is built for the lost ones alone.

Attempt fencing makes a needless re-publish harmless.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import structlog

from orchestrator.batch import Tracked
from orchestrator.coordinator_bus import CoordinatorBus
from orchestrator.engine import Dispatch, RunEngine
from orchestrator.hook_runner import HookRunner
from orchestrator.state import RunStatus

__all__ = ["LostAttempts", "Republisher"]

Attempt = tuple[str, str, int]  # (run, step key, attempt)

log = structlog.get_logger(__name__)


class Republisher:
    """Finds the dispatches to publish again, through the coordinator's bus and hooks."""

    def __init__(self, bus: CoordinatorBus, hooks: HookRunner) -> None:
        self.bus = bus
        self.hooks = hooks
        self._lost = LostAttempts()

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
        """Dispatched attempts absent from Redis at two reconciles in a row (`LostAttempts`)."""
        queues: dict[Attempt, str] = {}
        engines: dict[str, RunEngine] = {}
        for tracked in runs.values():
            engine = tracked.engine
            for key, attempt, queue in engine.dispatched_attempts():
                queues[(engine.run.run_id, key, attempt)] = queue
            engines[engine.run.run_id] = engine
        hooks = {(d.message.run, d.message.step, d.message.attempt): d for d in self.hooks.in_flight()}
        queues.update({k: d.queue for k, d in hooks.items()})
        lost = []
        for run_id, key, attempt in self._lost.check(queues, lambda q: self.bus.attempts_in_redis(q, partitions)):
            dispatch = hooks.get((run_id, key, attempt)) or engines[run_id].dispatch_of(key, attempt)
            if dispatch is not None:
                lost.append(dispatch)
        if lost:
            log.warning("steps_republished", count=len(lost), reason="message missing from Redis")
        return lost


class LostAttempts:
    """Finds attempts that PostgreSQL says are dispatched but Redis holds nowhere.

    A single message can vanish while Redis keeps the rest (failover to a replica that missed
    the write, an operator's XDEL). Only attempts absent at two checks in a row count as lost,
    which leaves time for entries in transit; attempt fencing makes a needless re-publish
    harmless. Above `limit` dispatched attempts the check is skipped: scanning every queue
    stream each time would cost too much.
    """

    def __init__(self, limit: int = 20_000) -> None:
        self.limit = limit
        self._absent_before: set[Attempt] = set()

    def check(self, dispatched: Mapping[Attempt, str], present_in: Callable[[set[str]], set[Attempt]]) -> list[Attempt]:
        """The attempts (each with its queue) to publish again, sorted; `present_in(queues)` lists
        the attempts Redis holds."""
        if not dispatched or len(dispatched) > self.limit:
            self._absent_before = set()
            return []
        absent = set(dispatched) - present_in(set(dispatched.values()))
        lost = absent & self._absent_before
        self._absent_before = absent - lost
        return sorted(lost)
