"""The scheduler inside each coordinator: fires the due ticks of the schedules of its partitions.

The coordinator loop calls `tick(partitions)` every iteration; it queries PostgreSQL at most once
per `poll_interval`, or at the next known fire time when that is sooner (`next_due`, which also
bounds how long the loop blocks on Redis), so a tick starts within milliseconds of its time.

Exactly one run per tick, whatever the number of coordinators and crashes:

* a schedule belongs to the partition of its id; only the coordinator leasing it fires it, and the
  pass locks the rows it handles (FOR UPDATE SKIP LOCKED), so two coordinators that both believe
  they hold a partition for a moment (a lease changing hands) never handle one row at once;
* each tick's run is submitted with the idempotency key `schedule:ID:TICK` through the ordinary
  submit path, and the row is advanced in the transaction that holds the lock: dying between the
  two leaves the row unadvanced, and whoever passes next submits the same key (the existing run).

What each pass decides (catch-up, overlap, jitter) is computed by orchestrator/schedule_times.py.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
import structlog

from orchestrator import fault_points, metrics
from orchestrator.deployed import submit_ref
from orchestrator.errors import SpecError, SubmitError, TemplateError
from orchestrator.schedule_times import Overlap, due_ticks, fire_time, overlap_action, tick_key
from orchestrator.state import TERMINAL_RUN_STATUSES
from orchestrator.store.schedules import policy_of, timing_of
from orchestrator.store.workflows import format_ref
from orchestrator.submit import Submitter

log = structlog.get_logger(__name__)

POLL_INTERVAL = 1.0  # seconds between looks for schedules added, resumed or changed elsewhere
MAX_ROWS = 100  # schedules one pass handles at most (the rest wait for the next pass)


@dataclass(slots=True)
class Outcome:
    fired: int = 0
    skipped: int = 0
    last_run_id: str | None = None
    last_tick: dt.datetime | None = None
    error: str | None = None


class Scheduler:
    def __init__(
        self,
        *,
        submitter: Submitter,
        clock: Callable[[], float] = time.time,
        poll_interval: float = POLL_INTERVAL,
    ) -> None:
        self.submitter = submitter
        self.store = submitter.store
        self.clock = clock
        self.poll_interval = poll_interval
        self._next_poll = 0.0
        self._exported: set[str] = set()

    def next_due(self) -> float | None:
        """Unix time of the next pass (the loop blocks no longer than this)."""
        return self._next_poll

    def forget(self) -> None:
        """Look again at the next iteration (partitions changed, a write failed)."""
        self._next_poll = 0.0

    def tick(self, partitions: Sequence[int]) -> int:
        """Fire what is due in `partitions`; returns the runs started."""
        now = self.clock()
        if not partitions or now < self._next_poll:
            return 0
        self._next_poll = now + self.poll_interval
        started = 0
        when = dt.datetime.fromtimestamp(now, dt.UTC)
        with self.store.connection() as conn, conn.transaction():
            rows = conn.execute(
                "SELECT * FROM schedules WHERE partition = ANY(%s) AND NOT paused AND next_fire_at <= %s"
                " ORDER BY next_fire_at LIMIT %s FOR UPDATE SKIP LOCKED",
                (list(partitions), when, MAX_ROWS),
            ).fetchall()
            for row in rows:
                started += self._handle(conn, row, when)
            upcoming = conn.execute(
                "SELECT schedule_id, next_fire_at FROM schedules WHERE partition = ANY(%s) AND NOT paused",
                (list(partitions),),
            ).fetchall()
        self._export_next_fire(upcoming)
        if upcoming and len(rows) < MAX_ROWS:
            soonest = min(r["next_fire_at"] for r in upcoming).timestamp()
            self._next_poll = min(self._next_poll, max(soonest, now + 0.001))
        elif len(rows) >= MAX_ROWS:
            self._next_poll = now  # more are due: carry on at the next iteration
        return started

    def _handle(self, conn: psycopg.Connection[dict[str, Any]], row: dict[str, Any], now: dt.datetime) -> int:
        schedule_id = row["schedule_id"]
        policy = policy_of(row)
        due = due_ticks(schedule_id, timing_of(row), policy, next_tick=row["next_tick_at"], now=now)
        outcome = Outcome(last_run_id=row["last_run_id"])
        for tick in due.fire:
            self._fire(conn, row, tick, now, outcome)
        if due.dropped:
            metrics.SCHEDULE_TICKS_SKIPPED.labels(schedule=schedule_id, reason="catchup").inc(due.dropped)
            log.info("schedule_ticks_dropped", schedule=schedule_id, ticks=due.dropped, catchup=str(policy.catchup))
        conn.execute(
            """
            UPDATE schedules SET next_tick_at = %s, next_fire_at = %s, last_tick_at = coalesce(%s, last_tick_at),
                last_run_id = %s, last_error = %s, fired_count = fired_count + %s,
                skipped_count = skipped_count + %s, updated_at = now()
            WHERE schedule_id = %s
            """,
            (
                due.next_tick,
                due.next_fire_at,
                outcome.last_tick,
                outcome.last_run_id,
                outcome.error if outcome.error is not None else (None if outcome.fired else row["last_error"]),
                outcome.fired,
                outcome.skipped + due.dropped,
                schedule_id,
            ),
        )
        return outcome.fired

    def _fire(
        self,
        conn: psycopg.Connection[dict[str, Any]],
        row: dict[str, Any],
        tick: dt.datetime,
        now: dt.datetime,
        outcome: Outcome,
    ) -> None:
        schedule_id = row["schedule_id"]
        outcome.last_tick = tick
        previous = outcome.last_run_id
        active = previous is not None and _is_active(conn, previous)
        fire, cancel = overlap_action(Overlap(row["overlap"]), previous_active=active)
        if not fire:
            outcome.skipped += 1
            metrics.SCHEDULE_TICKS_SKIPPED.labels(schedule=schedule_id, reason="overlap").inc()
            log.info("schedule_tick_skipped", schedule=schedule_id, tick=tick.isoformat(), previous_run=previous)
            return
        if cancel and previous is not None:
            self.submitter.request(previous, "cancel")
            log.info("schedule_previous_cancelled", schedule=schedule_id, run_id=previous)
        ref = format_ref(row["workflow"], row["workflow_version"])
        try:
            submitted = submit_ref(
                self.submitter,
                ref,
                inputs=row["inputs"],
                idempotency_key=tick_key(schedule_id, tick),
                check_handlers=False,
            )
        except (SubmitError, SpecError, TemplateError) as e:
            # A schedule that cannot start (its workflow removed, its inputs no longer valid) records
            # why and keeps ticking; infrastructure errors propagate and the row stays where it was.
            outcome.error = str(e)
            metrics.SCHEDULE_TICKS.labels(schedule=schedule_id, outcome="failed").inc()
            log.warning("schedule_tick_failed", schedule=schedule_id, tick=tick.isoformat(), error=str(e))
            return
        # TEST-ONLY (tests/faults/test_schedules.py): die with the run committed and the row not yet advanced.
        fault_points.crash_point("SCHEDULE_AFTER_SUBMIT", 1)
        outcome.fired += 1
        outcome.last_run_id = submitted.run_id
        lag = (now - fire_time(schedule_id, tick, policy_of(row).jitter)).total_seconds()
        if submitted.created:
            metrics.SCHEDULE_LAG.labels(schedule=schedule_id).observe(max(0.0, lag))
        metrics.SCHEDULE_TICKS.labels(schedule=schedule_id, outcome="started").inc()
        log.info(
            "schedule_tick_fired",
            schedule=schedule_id,
            tick=tick.isoformat(),
            run_id=submitted.run_id,
            created=submitted.created,
            lag=round(lag, 4),
        )

    def _export_next_fire(self, upcoming: list[dict[str, Any]]) -> None:
        """`steppe_schedule_next_fire_timestamp_seconds` per schedule this coordinator fires: the
        alert `time() - it > 60` holds even when this loop stalls (the value stops moving)."""
        seen = set()
        for r in upcoming:
            seen.add(r["schedule_id"])
            metrics.SCHEDULE_NEXT_FIRE.labels(schedule=r["schedule_id"]).set(r["next_fire_at"].timestamp())
        for gone in self._exported - seen:
            metrics.SCHEDULE_NEXT_FIRE.remove(gone)
        self._exported = seen


def _is_active(conn: psycopg.Connection[dict[str, Any]], run_id: str) -> bool:
    row = conn.execute("SELECT status FROM workflow_runs WHERE run_id = %s", (run_id,)).fetchone()
    return row is not None and row["status"] not in TERMINAL_RUN_STATUSES
