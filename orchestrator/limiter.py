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
from orchestrator.state import StepStatus
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

    def committed(self, batch: Batch) -> None:
        """Note the keys a committed batch made worth admitting: new waiters and released slots."""
        for write in batch.writes:
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
        """Run the admissions due; dispatch what was granted to our runs. Returns the runs changed."""
        now = self.clock()
        for limit_key, when in list(self.due.items()):
            if when <= now:
                self.dirty.add(limit_key)
                del self.due[limit_key]
        touched: set[str] = set()
        remote: set[int] = set()
        mine = set(partitions)
        while self.dirty:
            kind, name = self.dirty.pop()
            admission = self.store.admit(kind, name)
            observe(admission)
            self._schedule(admission, now)
            for grant in admission.grants:
                if not grant.last:
                    if grant.next_key is not None:
                        self.dirty.add(grant.next_key)
                elif grant.partition in mine and grant.run_id in runs:
                    if runs[grant.run_id].engine.throttle.admit(grant.step, grant.attempt):
                        touched.add(grant.run_id)
                else:
                    remote.add(grant.partition)
        if self.check_admitted:
            self.check_admitted = False
            for run_id, step, attempt in self.store.admitted(partitions):
                tracked = runs.get(run_id)
                if tracked is not None and tracked.engine.throttle.admit(step, attempt):
                    touched.add(run_id)
        self._wake(remote - mine)
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
