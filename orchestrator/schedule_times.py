"""Schedule maths, pure: tick times (cron in a time zone, or a fixed interval), jitter, catch-up and overlap.

A *tick* is a nominal fire time of a schedule, in UTC. Its run's idempotency key is
`schedule:ID:TICK` (`tick_key`), so however many coordinators fire it, it starts one run.

- cron: five-field expressions through `cronsim`, evaluated in the schedule's IANA time zone.
  Across DST the library's (Debian cron's) rules apply: in a spring-forward gap a fixed-time job
  (`30 2 * * *` in Europe/Berlin) fires once at the first valid time after the gap (03:00); in a
  fall-back repeat it fires once, at the first occurrence; jobs with a wildcard hour fire every
  hour that exists (twice at a repeated hour).
- every: ticks at whole multiples of the interval since the Unix epoch (UTC), so that
  `--every 10s` fires at :00, :10, :20… whatever the moment the schedule was added.
- jitter: each tick fires `jitter_offset` seconds late, a fraction of `--jitter` derived from the
  schedule id and the tick (stable across coordinators and restarts, so a retried tick keeps its time).
- catch-up: a tick whose fire time is more than `on_time_grace` behind `now` was *missed* (no
  coordinator ran then); missed ticks older than the catch-up window are dropped, and of the
  others `none` fires none, `latest` the newest, `all` every one (at most MAX_CATCHUP).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from orchestrator.errors import SubmitError

UTC = dt.UTC
ON_TIME_GRACE = 5.0  # seconds a tick may fire late and still count as on time (never over half its gap)
MAX_CATCHUP = 1000  # ticks one pass fires at most under `--catchup all`
MIN_EVERY = 1.0  # seconds: the shortest `--every`
MAX_SKIP_COUNT = 10_000  # missed cron ticks counted one by one at most (metrics); beyond, they are jumped


class Overlap(StrEnum):
    SKIP = "skip"  # do not start a tick while the schedule's previous run is active
    ALLOW = "allow"  # start it anyway
    CANCEL_PREVIOUS = "cancel_previous"  # ask the previous run to cancel, then start


class Catchup(StrEnum):
    NONE = "none"
    LATEST = "latest"
    ALL = "all"


@dataclass(frozen=True, slots=True)
class Timing:
    """When a schedule ticks: a cron expression in a time zone, or every `every` seconds."""

    cron: str | None = None
    timezone: str = "UTC"
    every: float | None = None

    def __post_init__(self) -> None:
        if (self.cron is None) == (self.every is None):
            raise SubmitError("a schedule needs exactly one of --cron EXPR or --every DURATION")
        if self.every is not None and self.every < MIN_EVERY:
            raise SubmitError(f"--every must be at least {MIN_EVERY:g}s, not {self.every:g}s")
        zone(self.timezone)
        if self.cron is not None:
            try:
                CronSim(self.cron, dt.datetime(2000, 1, 1, tzinfo=UTC))
            except CronSimError as e:
                raise SubmitError(
                    f"invalid cron expression {self.cron!r}: {e}; write five fields "
                    "(minute hour day-of-month month day-of-week), e.g. '0 2 * * *'"
                ) from e
            if self.cron.strip().startswith("@") or len(self.cron.split()) != 5:
                raise SubmitError(
                    f"invalid cron expression {self.cron!r}: write the standard five fields "
                    "(minute hour day-of-month month day-of-week), e.g. '0 2 * * *'"
                )

    def ticks_after(self, after: dt.datetime) -> Iterator[dt.datetime]:
        """Ticks strictly after `after` (aware), in UTC, ascending."""
        if self.every is not None:
            step = self.every
            n = int(after.timestamp() // step) + 1
            while True:
                yield dt.datetime.fromtimestamp(n * step, UTC)
                n += 1
        assert self.cron is not None
        local = after.astimezone(zone(self.timezone))
        for tick in CronSim(self.cron, local):
            yield tick.astimezone(UTC)

    def next_after(self, after: dt.datetime) -> dt.datetime:
        return next(self.ticks_after(after))

    def describe(self) -> str:
        if self.every is not None:
            return f"every {self.every:g}s"
        return f"cron {self.cron} ({self.timezone})"


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise SubmitError(
            f"unknown time zone {name!r}: give an IANA name such as Europe/Berlin, America/New_York or UTC"
        ) from e


def tick_key(schedule_id: str, tick: dt.datetime) -> str:
    """The idempotency key of a tick's run (docs/spec.md §12.3)."""
    return f"schedule:{schedule_id}:{tick.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}"


def jitter_offset(schedule_id: str, tick: dt.datetime, jitter: float) -> float:
    """Seconds in [0, jitter) this tick fires late; the same for every coordinator."""
    if jitter <= 0:
        return 0.0
    digest = hashlib.sha256(tick_key(schedule_id, tick).encode()).digest()
    return jitter * int.from_bytes(digest[:8], "big") / 2**64


def fire_time(schedule_id: str, tick: dt.datetime, jitter: float) -> dt.datetime:
    return tick + dt.timedelta(seconds=jitter_offset(schedule_id, tick, jitter))


@dataclass(frozen=True, slots=True)
class Policy:
    catchup: Catchup = Catchup.LATEST
    catchup_window: float = 3600.0
    jitter: float = 0.0


@dataclass(slots=True)
class Due:
    """What one pass over a schedule decides: the ticks to fire now, how many missed ticks it
    dropped, and the next tick to wait for (with the time it fires, jitter included)."""

    fire: list[dt.datetime] = field(default_factory=list)
    dropped: int = 0
    next_tick: dt.datetime | None = None
    next_fire_at: dt.datetime | None = None


def due_ticks(schedule_id: str, timing: Timing, policy: Policy, *, next_tick: dt.datetime, now: dt.datetime) -> Due:
    """The ticks from `next_tick` (the first not yet handled) whose fire time is at or before `now`."""
    due = Due()
    missed: list[dt.datetime] = []
    on_time: list[dt.datetime] = []
    # Ticks older than both the window and the on-time bound can only be dropped: jump over them
    # (after a long downtime there may be millions) and count them, exactly for intervals.
    horizon = now - dt.timedelta(seconds=max(policy.catchup_window, ON_TIME_GRACE + policy.jitter))
    if next_tick < horizon:
        next_tick, due.dropped = _skip_to(timing, next_tick, horizon)
    tick = next_tick
    ticks = timing.ticks_after(next_tick)
    following = next(ticks)
    while fire_time(schedule_id, tick, policy.jitter) <= now:
        late = (now - fire_time(schedule_id, tick, policy.jitter)).total_seconds()
        grace = min(ON_TIME_GRACE, (following - tick).total_seconds() / 2)
        if late <= grace:
            on_time.append(tick)
        elif (now - tick).total_seconds() <= policy.catchup_window:
            missed.append(tick)
            if len(missed) > MAX_CATCHUP:
                missed.pop(0)
                due.dropped += 1
        else:
            due.dropped += 1
        tick, following = following, next(ticks)
    if policy.catchup is Catchup.ALL:
        due.fire = missed + on_time
    elif policy.catchup is Catchup.LATEST:
        due.fire = on_time or missed[-1:]
        due.dropped += len(missed) - (0 if on_time else len(missed[-1:]))
    else:
        due.fire = on_time
        due.dropped += len(missed)
    due.next_tick = tick
    due.next_fire_at = fire_time(schedule_id, tick, policy.jitter)
    return due


def _skip_to(timing: Timing, tick: dt.datetime, horizon: dt.datetime) -> tuple[dt.datetime, int]:
    """The first tick at or after `horizon`, and how many ticks from `tick` lie before it (for
    cron, counted up to MAX_SKIP_COUNT)."""
    first = timing.next_after(horizon - dt.timedelta(microseconds=1))
    if timing.every is not None:
        return first, round((first - tick).total_seconds() / timing.every)
    skipped = 0
    for t in timing.ticks_after(tick - dt.timedelta(microseconds=1)):
        if t >= horizon or skipped >= MAX_SKIP_COUNT:
            break
        skipped += 1
    return first, skipped


def overlap_action(policy: Overlap, *, previous_active: bool) -> tuple[bool, bool]:
    """(fire, cancel the previous run) for a tick, given whether the previous run is still active."""
    if not previous_active or policy is Overlap.ALLOW:
        return True, False
    if policy is Overlap.CANCEL_PREVIOUS:
        return True, True
    return False, False
