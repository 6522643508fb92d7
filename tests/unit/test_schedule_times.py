"""Schedule maths without I/O: cron ticks in time zones across DST, intervals, jitter, catch-up, overlap."""

from __future__ import annotations

import datetime as dt
import itertools

import pytest

from orchestrator.errors import SubmitError
from orchestrator.schedule_times import (
    MAX_SKIP_COUNT,
    Catchup,
    Overlap,
    Policy,
    Timing,
    due_ticks,
    fire_time,
    jitter_offset,
    overlap_action,
    tick_key,
)

UTC = dt.UTC


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, us: int = 0) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, second, us, tzinfo=UTC)


def first(timing: Timing, after: dt.datetime, n: int) -> list[dt.datetime]:
    return list(itertools.islice(timing.ticks_after(after), n))


def test_cron_in_a_time_zone_is_local_wall_time() -> None:
    timing = Timing(cron="0 2 * * *", timezone="Europe/Berlin")
    # Winter: Berlin is UTC+1, so 02:00 local is 01:00 UTC; summer (UTC+2): 00:00 UTC.
    assert first(timing, utc(2026, 1, 10, 12), 1) == [utc(2026, 1, 11, 1)]
    assert first(timing, utc(2026, 7, 10, 12), 1) == [utc(2026, 7, 11, 0)]


def test_spring_forward_gap_fires_once_at_the_first_valid_time() -> None:
    # 2026-03-29 02:00 Europe/Berlin does not exist (clocks jump 02:00 -> 03:00 CEST = 01:00 UTC).
    timing = Timing(cron="30 2 * * *", timezone="Europe/Berlin")
    ticks = first(timing, utc(2026, 3, 27, 12), 4)
    assert ticks == [utc(2026, 3, 28, 1, 30), utc(2026, 3, 29, 1, 0), utc(2026, 3, 30, 0, 30), utc(2026, 3, 31, 0, 30)]
    hourly = first(Timing(cron="0 * * * *", timezone="Europe/Berlin"), utc(2026, 3, 28, 23, 30), 3)
    assert hourly == [utc(2026, 3, 29, 0), utc(2026, 3, 29, 1), utc(2026, 3, 29, 2)]  # 01:00, 03:00, 04:00 local


def test_fall_back_repeat_fires_a_fixed_time_once_and_each_real_hour_of_a_wildcard() -> None:
    # 2026-10-25 03:00 CEST -> 02:00 CET: 02:00..02:59 happens twice (00:00-01:00 UTC and 01:00-02:00 UTC).
    daily = first(Timing(cron="30 2 * * *", timezone="Europe/Berlin"), utc(2026, 10, 24, 12), 2)
    assert daily == [utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)]
    hourly = first(Timing(cron="0 * * * *", timezone="Europe/Berlin"), utc(2026, 10, 24, 23, 30), 4)
    assert hourly == [utc(2026, 10, 25, 0), utc(2026, 10, 25, 1), utc(2026, 10, 25, 2), utc(2026, 10, 25, 3)]
    # Continuing from the first 02:00 (fold 0) reaches the repeated 02:00 (fold 1), not 03:00.
    assert first(Timing(cron="0 * * * *", timezone="Europe/Berlin"), utc(2026, 10, 25, 0), 1) == [utc(2026, 10, 25, 1)]


def test_every_is_anchored_at_the_epoch() -> None:
    timing = Timing(every=10)
    assert first(timing, utc(2026, 1, 1, 0, 0, 3), 3) == [
        utc(2026, 1, 1, 0, 0, 10),
        utc(2026, 1, 1, 0, 0, 20),
        utc(2026, 1, 1, 0, 0, 30),
    ]
    assert first(timing, utc(2026, 1, 1, 0, 0, 10), 1) == [utc(2026, 1, 1, 0, 0, 20)]  # strictly after


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({}, "exactly one of"),
        ({"cron": "* * * * *", "every": 5}, "exactly one of"),
        ({"cron": "61 * * * *"}, "invalid cron expression"),
        ({"cron": "* * * *"}, "five fields"),
        ({"cron": "@daily"}, "five fields"),
        ({"cron": "0 2 * * *", "timezone": "Mars/Olympus"}, "unknown time zone"),
        ({"every": 0.5}, "at least 1s"),
    ],
)
def test_bad_timings_say_what_to_write(kwargs: dict[str, object], needle: str) -> None:
    with pytest.raises(SubmitError, match=needle):
        Timing(**kwargs)  # type: ignore[arg-type]


def test_tick_key_and_jitter_are_stable_and_bounded() -> None:
    tick = utc(2026, 5, 1, 2)
    assert tick_key("nightly", tick) == "schedule:nightly:2026-05-01T02:00:00Z"
    offsets = {jitter_offset("nightly", tick + dt.timedelta(minutes=i), 30) for i in range(50)}
    assert all(0 <= o < 30 for o in offsets)
    assert len(offsets) == 50
    assert jitter_offset("nightly", tick, 30) == jitter_offset("nightly", tick, 30)
    assert jitter_offset("nightly", tick, 0) == 0.0


def test_a_tick_due_now_fires_and_the_next_one_is_computed() -> None:
    timing = Timing(every=60)
    due = due_ticks("s", timing, Policy(), next_tick=utc(2026, 1, 1, 0, 1), now=utc(2026, 1, 1, 0, 1, 2))
    assert due.fire == [utc(2026, 1, 1, 0, 1)]
    assert due.dropped == 0
    assert due.next_tick == due.next_fire_at == utc(2026, 1, 1, 0, 2)
    early = due_ticks("s", timing, Policy(), next_tick=utc(2026, 1, 1, 0, 1), now=utc(2026, 1, 1, 0, 0, 59))
    assert early.fire == []
    assert early.next_tick == utc(2026, 1, 1, 0, 1)


def test_jitter_delays_the_fire_time_but_not_the_tick() -> None:
    timing = Timing(every=60)
    tick = utc(2026, 1, 1, 0, 1)
    policy = Policy(jitter=20)
    at = fire_time("s", tick, 20)
    assert tick < at < tick + dt.timedelta(seconds=20)
    assert due_ticks("s", timing, policy, next_tick=tick, now=at - dt.timedelta(milliseconds=1)).fire == []
    assert due_ticks("s", timing, policy, next_tick=tick, now=at).fire == [tick]


@pytest.mark.parametrize(
    ("catchup", "fired"),
    [
        (Catchup.NONE, []),
        (Catchup.LATEST, [utc(2026, 1, 1, 0, 0, 6)]),
        (Catchup.ALL, [utc(2026, 1, 1, 0, 0, s) for s in (2, 4, 6)]),
    ],
)
def test_three_ticks_missed_while_down_follow_the_catchup_policy(catchup: Catchup, fired: list[dt.datetime]) -> None:
    # every 2s; coordinators down from 0:00:01 to 0:00:07.5: ticks at :02, :04, :06 were missed.
    due = due_ticks(
        "s",
        Timing(every=2),
        Policy(catchup=catchup),
        next_tick=utc(2026, 1, 1, 0, 0, 2),
        now=utc(2026, 1, 1, 0, 0, 7, 500000),
    )
    assert due.fire == fired
    assert due.dropped == 3 - len(fired)
    assert due.next_tick == utc(2026, 1, 1, 0, 0, 8)


def test_missed_ticks_outside_the_window_are_dropped() -> None:
    # hourly, down for 5 hours, window 2h: only the ticks of the last 2 hours may be caught up.
    timing = Timing(cron="0 * * * *")
    now = utc(2026, 1, 1, 5, 30)
    due = due_ticks(
        "s", timing, Policy(catchup=Catchup.ALL, catchup_window=7200), next_tick=utc(2026, 1, 1, 1), now=now
    )
    assert due.fire == [utc(2026, 1, 1, 4), utc(2026, 1, 1, 5)]
    assert due.dropped == 3
    latest = due_ticks("s", timing, Policy(catchup_window=7200), next_tick=utc(2026, 1, 1, 1), now=now)
    assert latest.fire == [utc(2026, 1, 1, 5)]
    assert latest.dropped == 4
    nothing = due_ticks("s", timing, Policy(catchup_window=600), next_tick=utc(2026, 1, 1, 1), now=now)
    assert nothing.fire == []
    assert nothing.dropped == 5
    assert nothing.next_tick == utc(2026, 1, 1, 6)


def test_an_on_time_tick_fires_with_latest_and_the_older_missed_ones_are_dropped() -> None:
    due = due_ticks("s", Timing(every=60), Policy(), next_tick=utc(2026, 1, 1, 0, 1), now=utc(2026, 1, 1, 0, 5, 1))
    assert due.fire == [utc(2026, 1, 1, 0, 5)]
    assert due.dropped == 4


def test_catchup_across_the_fall_back_repeat_counts_both_hours() -> None:
    timing = Timing(cron="0 * * * *", timezone="Europe/Berlin")
    due = due_ticks(
        "s",
        timing,
        Policy(catchup=Catchup.ALL, catchup_window=86400),
        next_tick=utc(2026, 10, 24, 23),
        now=utc(2026, 10, 25, 2, 0, 1),
    )
    assert due.fire == [utc(2026, 10, 24, 23), utc(2026, 10, 25, 0), utc(2026, 10, 25, 1), utc(2026, 10, 25, 2)]


@pytest.mark.parametrize(
    ("policy", "active", "expected"),
    [
        (Overlap.SKIP, False, (True, False)),
        (Overlap.SKIP, True, (False, False)),
        (Overlap.ALLOW, True, (True, False)),
        (Overlap.CANCEL_PREVIOUS, True, (True, True)),
        (Overlap.CANCEL_PREVIOUS, False, (True, False)),
    ],
)
def test_overlap_decisions(policy: Overlap, active: bool, expected: tuple[bool, bool]) -> None:
    assert overlap_action(policy, previous_active=active) == expected


def test_a_long_downtime_is_jumped_over_and_counted() -> None:
    start = utc(2026, 1, 1)
    now = start + dt.timedelta(days=30, seconds=1)
    due = due_ticks("s", Timing(every=2), Policy(catchup=Catchup.ALL, catchup_window=10), next_tick=start, now=now)
    assert [t.second for t in due.fire] == [52, 54, 56, 58, 0]
    assert due.dropped == 30 * 43200 - 5 + 1
    cron = due_ticks("s", Timing(cron="* * * * *"), Policy(), next_tick=start, now=now)
    assert cron.fire == [start + dt.timedelta(days=30)]
    assert cron.dropped == MAX_SKIP_COUNT + 59  # counted up to the bound, then the last hour (latest: 1 of 60)
