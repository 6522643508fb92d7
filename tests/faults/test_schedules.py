"""Schedule faults (docs/spec.md §12.3): a coordinator SIGKILLed mid-tick (its run committed, the schedule
row not advanced) is taken over with no tick fired twice or lost; a version deployed while runs of the
old one are in flight leaves them on the old definition."""

from __future__ import annotations

import datetime as dt
import itertools
import time
from collections import Counter

import pytest

from orchestrator import deployed, schedule_ops
from orchestrator.store.schedules import ScheduleStore
from tests.faults.harness import FaultEnv
from tests.faults.invariants import check_event_logs, check_nothing_stranded, report, wait_terminal
from tests.helpers import assert_eventually

pytestmark = [pytest.mark.faults, pytest.mark.integration]

FLOW = """\
name: ticker
steps:
  - id: work
    handler: builtin.sleep
    with: {{seconds: 1}}
  - id: tag
    needs: [work]
    handler: builtin.echo
    with: {{version: {v}}}
"""


def tick_of(key: str) -> dt.datetime:
    return dt.datetime.fromisoformat(key.split(":", 2)[2])


def test_coordinator_sigkill_mid_tick_fires_each_tick_once_and_old_runs_keep_their_version(faults: FaultEnv) -> None:
    # The victim dies at its 2nd fired tick, right after that tick's run committed (os._exit, as SIGKILL).
    victim = faults.start_coordinator(STEPPE_FAULT_CRASH_SCHEDULE_AFTER_SUBMIT="2")
    faults.start_worker(concurrency=8)
    faults.wait_for_workers(1)
    deployed.deploy(faults.submitter, FLOW.format(v=1), filename="ticker.yaml", base_dir=None)
    request = schedule_ops.ScheduleRequest(
        schedule_id="ticker", workflow="ticker", every="2s", overlap="allow", catchup="all"
    )
    schedule_ops.add(faults.submitter, request, now=dt.datetime.now(dt.UTC))
    store = ScheduleStore(faults.store)

    assert victim.wait(timeout=30) == 137, "the crash point was never reached"
    crashed = time.monotonic()
    at_crash = store.recent_runs("ticker", limit=100)
    row = store.get("ticker")
    assert len(at_crash) == 2
    newest = max(at_crash, key=lambda r: r["created_at"])
    assert tick_of(newest["idempotency_key"]) == row["next_tick_at"]  # committed run, row not advanced
    faults.start_coordinator()  # takes the partitions over once the victim's leases expire
    deployed.deploy(faults.submitter, FLOW.format(v=2), filename="ticker.yaml", base_dir=None)

    def enough() -> bool:
        return len(store.recent_runs("ticker", limit=100)) >= 7

    assert_eventually(enough, timeout=40, message="ticks after the takeover")
    resumed_s = time.monotonic() - crashed
    store.pause("ticker")
    runs = store.recent_runs("ticker", limit=100)
    docs = wait_terminal(faults, [r["run_id"] for r in runs], deadline=45)  # I1

    ticks = sorted(tick_of(r["idempotency_key"]) for r in runs)
    assert not [t for t, n in Counter(ticks).items() if n > 1], "a tick fired twice"
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(ticks)]
    assert gaps == [2.0] * (len(ticks) - 1), f"a tick was lost: {ticks}"  # catchup all: none missing
    assert {d["status"] for d in docs.values()} == {"succeeded"}
    versions = {r["run_id"]: faults.run(r["run_id"])["steps"]["tag"]["output"]["version"] for r in runs}
    before = {r["run_id"] for r in at_crash}
    assert {versions[r] for r in before} == {1}  # in flight (or done) when v2 came: finished on v1
    assert versions[max(runs, key=lambda r: r["created_at"])["run_id"]] == 2
    resubmitted = [e for e in faults.log_events("schedule_tick_fired") if e.get("created") is False]
    assert [e["run_id"] for e in resubmitted] == [newest["run_id"]]  # the takeover found the committed run
    check_event_logs(faults, [r["run_id"] for r in runs])  # I3
    check_nothing_stranded(faults)  # I4
    report(
        "schedule-coordinator-sigkill-mid-tick",
        ticks=len(ticks),
        resumed_s=resumed_s,
        caught_up=sum(1 for e in faults.log_events("schedule_tick_fired") if e.get("lag", 0) > 1),
    )


@pytest.mark.parametrize("catchup", ["none", "latest", "all"])
def test_ticks_missed_while_every_coordinator_was_down_follow_catchup(faults: FaultEnv, catchup: str) -> None:
    coordinator = faults.start_coordinator()
    faults.start_worker(concurrency=4)
    faults.wait_for_workers(1)
    deployed.deploy(faults.submitter, FLOW.format(v=1), filename="ticker.yaml", base_dir=None)
    request = schedule_ops.ScheduleRequest(
        schedule_id="down", workflow="ticker", every="2s", overlap="allow", catchup=catchup
    )
    schedule_ops.add(faults.submitter, request, now=dt.datetime.now(dt.UTC))
    store = ScheduleStore(faults.store)
    assert_eventually(lambda: len(store.recent_runs("down")) >= 1, timeout=20, message="a first tick")
    coordinator.terminate()  # SIGTERM: its leases are released, so the next one starts at once
    assert coordinator.wait(timeout=30) == 0
    last_before = max(tick_of(r["idempotency_key"]) for r in store.recent_runs("down", limit=100))
    down_until = last_before.timestamp() + 7.2  # the ticks at +2, +4 and +6 s pass with no coordinator
    assert_eventually(lambda: time.time() >= down_until, timeout=15, interval=0.05)
    faults.start_coordinator()

    def after_restart() -> list[dict[str, object]]:
        runs = store.recent_runs("down", limit=100)
        on_time = [r for r in runs if tick_of(str(r["idempotency_key"])).timestamp() > down_until + 2]
        return runs if on_time else []

    runs = assert_eventually(
        after_restart, timeout=60, message=lambda: f"no tick after the restart:\n{faults.log_text()[-3000:]}"
    )
    ticks = {tick_of(str(r["idempotency_key"])): r for r in runs}
    assert len(ticks) == len(runs)  # one run per tick
    # The restarted coordinator's first pass, and every tick due by then since the last one fired.
    first_pass = min(r["created_at"] for t, r in ticks.items() if t > last_before)
    due_then = list(
        itertools.takewhile(
            lambda t: t <= first_pass, (last_before + dt.timedelta(seconds=2 * k) for k in itertools.count(1))
        )
    )
    fired_then = [t for t in due_then if t in ticks]
    missed = [t for t in due_then if t.timestamp() <= down_until]
    assert len(missed) == 3
    if catchup == "none":  # at most the tick that was due as it came back, none of the missed ones
        assert not set(fired_then) & set(missed), fired_then
    elif catchup == "latest":
        assert fired_then == [due_then[-1]], (fired_then, due_then)
    else:
        assert fired_then == due_then, (fired_then, due_then)
    caught_up = len(set(fired_then) & set(missed))
    report(
        f"schedule-down-3-ticks-{catchup}", due_at_restart=len(due_then), fired=len(fired_then), missed_fired=caught_up
    )
