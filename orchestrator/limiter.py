"""The coordinator's flow-control collaborator: when to admit which key, and whom to tell.

The truth is in PostgreSQL (`orchestrator.store.limits`: waiter and slot rows derived from step rows
by a trigger, grants serialised per key). This object only decides when to run an admission:

* after each commit, for the keys whose waiters appeared (steps throttled by the batch) or whose
  slots were released (limited steps of the batch that left dispatched/running) — so a freed slot
  admits its next waiter within the same loop iteration, without polling;
* when a rate window lets the next start in (`next_due`, woken through the coordinator's timers);
* on reconcile (after a crash, a takeover or a lost wake-up), for every key with waiters on the
  coordinator's partitions.

A grant for a run this coordinator drives dispatches it at once (`Throttle.admit`); a grant for a
run of another coordinator's partition is announced on that partition's control stream (a `limits`
wake-up); the owner then reads its admitted attempts from PostgreSQL (`LimitStore.admitted`). A lost
wake-up only delays that run until the owner's next reconcile.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import redis
import structlog

from orchestrator import bus
from orchestrator.batch import Batch, Tracked
from orchestrator.engine.output import Timer
from orchestrator.keys import Keys
from orchestrator.limit_metrics import observe
from orchestrator.state import EventType, StepStatus
from orchestrator.store.limits import Admission, LimitStore
from orchestrator.wire import ControlMessage

log = structlog.get_logger(__name__)

_HOLDING = (StepStatus.THROTTLED, StepStatus.DISPATCHED, StepStatus.RUNNING)
LIMITS_TIMER = "limits"  # the kind of the wake-up timers this object asks the coordinator for

LimitKey = tuple[str, str]  # (kind, key)


class Limiter:
    def __init__(self, store: LimitStore, client: redis.Redis, keys: Keys, clock: Callable[[], float]) -> None:
        self.store = store
        self.client = client
        self.keys = keys
        self.clock = clock
        self.dirty: set[LimitKey] = set()  # keys to admit at the next `admit`
        self.due: dict[LimitKey, float] = {}  # rate keys whose window lets the next start in at this time
        self.check_admitted = True  # read admitted attempts of our partitions from PostgreSQL
        self._armed: float | None = None  # the due time of the last timer handed out
        self.new_runs: list[str] = []  # runs a committed batch held back (`run.throttled`): enqueue them

    def committed(self, batch: Batch) -> None:
        """Note the keys a committed batch made worth admitting: new waiters and released slots."""
        for write in batch.writes:
            limit = write.state.get("throttled")
            if limit:  # run level: a new waiter, or a run that ended and so released its slot
                queued = any(e.type is EventType.RUN_THROTTLED for e in write.events)
                if queued:
                    self.new_runs.append(write.run_id)
                if queued or write.finished:
                    self.dirty.add(("run", str(limit["key"])))
            for record in write.steps.values():
                limits = record.detail.get("limits")
                if not limits:
                    continue
                if record.status is StepStatus.THROTTLED:
                    self.dirty.add((limits[0]["kind"], limits[0]["key"]))
                elif record.status not in _HOLDING:
                    self.dirty.update((x["kind"], x["key"]) for x in limits if x["kind"] == "concurrency")

    def woken(self) -> None:
        """A `limits` wake-up: another coordinator granted attempts of our runs."""
        self.check_admitted = True

    def sweep(self, partitions: Sequence[int]) -> None:
        """Reconcile: every key with waiters on our partitions, and whatever was admitted for us."""
        self.store.ensure_run_waiters(partitions)
        self.dirty.update(self.store.waiting_keys(partitions))
        self.check_admitted = True

    def timer(self) -> Timer | None:
        """A timer for the coordinator's queue, so that its read wakes when the next window opens."""
        due = min(self.due.values(), default=None)
        if due is None or due == self._armed:
            return None
        self._armed = due
        return Timer(due, "", "", 0, LIMITS_TIMER)

    def admit(self, runs: Mapping[str, Tracked], partitions: Sequence[int]) -> set[str]:
        """Run the admissions due; act on what was decided for our runs. Returns the runs changed."""
        now = self.clock()
        for limit_key, when in list(self.due.items()):
            if when <= now:
                self.dirty.add(limit_key)
                del self.due[limit_key]
        if self.new_runs:
            self.store.ensure_run_waiters(partitions, self.new_runs)
            self.new_runs = []
        touched: set[str] = set()
        remote: set[int] = set()
        mine = set(partitions)
        while self.dirty:
            kind, name = self.dirty.pop()
            admission = self.store.admit(kind, name)
            observe(admission)
            self._schedule(admission, now)
            for run_id, partition, action, step, attempt in self._decisions(admission):
                if partition in mine and run_id in runs:
                    if _act(runs[run_id], action, step, attempt):
                        touched.add(run_id)
                else:
                    remote.add(partition)
        if self.check_admitted:
            self.check_admitted = False
            touched |= self._stored_decisions(runs, partitions)
        self._wake(remote - mine)
        return touched

    def _decisions(self, admission: Admission) -> list[tuple[str, int, str, str, int]]:
        """(run, partition, action, step, attempt) of an admission; grants of a first limit queue the next."""
        out = []
        for g in admission.grants:
            if g.last:
                out.append((g.run_id, g.partition, "admit", g.step, g.attempt))
            elif g.next_key is not None:
                self.dirty.add(g.next_key)
        out += [(r, p, "refuse", "", 0) for r, p in admission.refused]
        out += [(r, p, "evict", "", 0) for r, p in admission.evicted]
        return out

    def _stored_decisions(self, runs: Mapping[str, Tracked], partitions: Sequence[int]) -> set[str]:
        """What admissions (another coordinator's, or ours before a crash) decided for our runs."""
        touched = set()
        decided = [(r, "admit", s, a) for r, s, a in self.store.admitted(partitions)]
        decided += [(r, action, "", 0) for r, action in self.store.run_actions(partitions)]
        for run_id, action, step, attempt in decided:
            tracked = runs.get(run_id)
            if tracked is not None and _act(tracked, action, step, attempt):
                touched.add(run_id)
        return touched

    def _schedule(self, admission: Admission, now: float) -> None:
        if admission.retry_in is not None:
            key = (admission.kind, admission.key)
            due = now + admission.retry_in + 0.001
            self.due[key] = min(self.due.get(key, due), due)

    def _wake(self, partitions: set[int]) -> None:
        if not partitions:
            return
        entries: list[tuple[str, bus.Message]] = [
            (self.keys.control_stream(p), ControlMessage(kind="limits")) for p in sorted(partitions)
        ]
        try:
            bus.send(self.client, entries)
        except bus.RETRYABLE as e:  # the owners' reconcile finds the grants in PostgreSQL
            log.warning("limits_wakeup_failed", error=str(e), partitions=sorted(partitions))


def _act(tracked: Tracked, action: str, step: str, attempt: int) -> bool:
    """Apply one admission decision to a run this coordinator drives; True when it changed the run."""
    throttle = tracked.engine.throttle
    if action == "refuse":
        return throttle.refuse_run()
    if action == "evict":  # on_limit: cancel_oldest: cancelled (and compensated if the workflow says so)
        return tracked.engine.request_cancel()
    if step == "":
        return throttle.admit_run()
    return throttle.admit(step, attempt)
