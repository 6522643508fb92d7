"""Schedules (`schedules`): what the CLI and the HTTP API change, and what the scheduler locks and advances.

Rows are keyed by the user's schedule id and belong to the partition `partition_of(id)`: the
coordinator leasing that partition fires them (orchestrator/scheduler.py). Durations are stored
in whole milliseconds. The row's `next_tick_at` is the first tick not yet handled; a pass locks
the due rows (FOR UPDATE SKIP LOCKED), submits each tick's run under the tick's idempotency key
and advances the row in the same transaction, so a coordinator that dies in between leaves the
row where it was and the next pass submits the same key again (one run).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from orchestrator.errors import SubmitError
from orchestrator.schedule_times import Catchup, Overlap, Policy, Timing
from orchestrator.store.runs import RunStore

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


@dataclass(frozen=True, slots=True)
class NewSchedule:
    schedule_id: str
    partition: int
    workflow: str
    workflow_version: int | None
    timing: Timing
    inputs: dict[str, Any] = field(default_factory=dict)
    overlap: Overlap = Overlap.SKIP
    policy: Policy = field(default_factory=Policy)


def timing_of(row: dict[str, Any]) -> Timing:
    every = row["every_ms"] / 1000 if row["every_ms"] is not None else None
    return Timing(cron=row["cron"], timezone=row["timezone"], every=every)


def policy_of(row: dict[str, Any]) -> Policy:
    return Policy(
        catchup=Catchup(row["catchup"]),
        catchup_window=row["catchup_window_ms"] / 1000,
        jitter=row["jitter_ms"] / 1000,
    )


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


class ScheduleNotFoundError(SubmitError):
    """No schedule with that id."""

    exit_code = 2


class ScheduleStore:
    def __init__(self, store: RunStore) -> None:
        self.store = store

    def add(self, new: NewSchedule, *, next_tick: dt.datetime, next_fire_at: dt.datetime) -> None:
        t, p = new.timing, new.policy
        with self.store.connection() as conn, conn.transaction():
            try:
                conn.execute(
                    """
                    INSERT INTO schedules (schedule_id, partition, workflow, workflow_version, inputs, cron, timezone,
                        every_ms, overlap, catchup, catchup_window_ms, jitter_ms, next_tick_at, next_fire_at)
                    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
                    """,
                    (
                        new.schedule_id,
                        new.partition,
                        new.workflow,
                        new.workflow_version,
                        Jsonb(new.inputs),
                        t.cron,
                        t.timezone,
                        _ms(t.every) if t.every is not None else None,
                        str(new.overlap),
                        str(p.catchup),
                        _ms(p.catchup_window),
                        _ms(p.jitter),
                        next_tick,
                        next_fire_at,
                    ),
                )
            except psycopg.errors.UniqueViolation:
                raise SubmitError(
                    f"schedule {new.schedule_id!r} exists already: remove it first "
                    f"(`steppe schedules remove {new.schedule_id}`) or pick another id"
                ) from None

    def get(self, schedule_id: str) -> dict[str, Any]:
        with self.store.connection() as conn:
            row = conn.execute("SELECT * FROM schedules WHERE schedule_id = %s", (schedule_id,)).fetchone()
        if row is None:
            raise ScheduleNotFoundError(f"no schedule {schedule_id!r}; `steppe schedules list` shows them")
        return dict(row)

    def all(self) -> list[dict[str, Any]]:
        with self.store.connection() as conn:
            return conn.execute("SELECT * FROM schedules ORDER BY schedule_id").fetchall()

    def remove(self, schedule_id: str) -> None:
        with self.store.connection() as conn, conn.transaction():
            done = conn.execute("DELETE FROM schedules WHERE schedule_id = %s", (schedule_id,)).rowcount
        if not done:
            raise ScheduleNotFoundError(f"no schedule {schedule_id!r}; `steppe schedules list` shows them")

    def pause(self, schedule_id: str) -> None:
        self._update(schedule_id, "paused = true")

    def resume(self, schedule_id: str, *, next_tick: dt.datetime, next_fire_at: dt.datetime) -> None:
        """Unpause; ticks that passed while paused are not caught up (the next one is after now)."""
        self._update(schedule_id, "paused = false, next_tick_at = %s, next_fire_at = %s", (next_tick, next_fire_at))

    def record_trigger(self, schedule_id: str, run_id: str) -> None:
        self._update(schedule_id, "last_run_id = %s, fired_count = fired_count + 1, last_error = NULL", (run_id,))

    def _update(self, schedule_id: str, assignments: str, params: Sequence[Any] = ()) -> None:
        with self.store.connection() as conn, conn.transaction():
            done = conn.execute(
                f"UPDATE schedules SET {assignments}, updated_at = now() WHERE schedule_id = %s",  # noqa: S608
                (*params, schedule_id),
            ).rowcount
        if not done:
            raise ScheduleNotFoundError(f"no schedule {schedule_id!r}; `steppe schedules list` shows them")

    def recent_runs(self, schedule_id: str, limit: int = 10) -> list[dict[str, Any]]:
        """The schedule's latest runs (their idempotency keys start with `schedule:ID:`)."""
        prefix = f"schedule:{schedule_id}:"
        with self.store.connection() as conn:
            return conn.execute(
                "SELECT run_id, status, idempotency_key, created_at, finished_at FROM workflow_runs"
                " WHERE starts_with(idempotency_key, %s) ORDER BY created_at DESC LIMIT %s",
                (prefix, limit),
            ).fetchall()
