"""Coordinator faults (docs/reliability.md 5, 6, and SIGKILL mid-run): crash points, two at once, takeover."""

from __future__ import annotations

import signal
import time
from collections import Counter

import pytest

from tests.faults.harness import FaultEnv, chain_yaml
from tests.faults.invariants import (
    check_applied_once,
    check_dead_letters,
    check_effectively_once,
    check_event_logs,
    check_nothing_stranded,
    report,
    wait_terminal,
)
from tests.helpers import assert_eventually

pytestmark = [pytest.mark.faults, pytest.mark.integration]


def dispatch_counts(env: FaultEnv, run_ids: list[str]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for run_id in run_ids:
        for row in env.queries.events(run_id):
            if row["type"] == "step.dispatched":
                counts[f"{run_id}/{row['step_key']}#{row['attempt']}"] += 1
    return counts


def lease_owners(env: FaultEnv) -> dict[int, str | None]:
    with env.store.connection() as conn:
        rows = conn.execute(
            "SELECT partition, owner FROM coordinator_leases WHERE expires_at > now() ORDER BY partition"
        ).fetchall()
    return {r["partition"]: r["owner"] for r in rows}


def test_6_two_coordinators_at_once_no_duplicate_dispatch_no_lost_run(faults: FaultEnv) -> None:
    faults.start(workers=2, concurrency=8)
    runs = [faults.submit(chain_yaml("pair", 3, 0.2)) for _ in range(15)]
    assert_eventually(lambda: len(faults.witness("effects")) >= 5, timeout=15)
    second_started = time.monotonic()
    faults.start_coordinator()  # joins mid-flight: partitions are handed over while runs move
    assert_eventually(lambda: len(set(lease_owners(faults).values())) == 2, timeout=15, message="no rebalance")
    rebalance_s = time.monotonic() - second_started
    runs += [faults.submit(chain_yaml("pair", 3, 0.2)) for _ in range(15)]
    wait_terminal(faults, runs, deadline=45)
    total_s = time.monotonic() - second_started

    assert {faults.run(r)["status"] for r in runs} == {"succeeded"}
    owners = lease_owners(faults)
    assert len(set(owners.values())) == 2, owners
    twice = {k: n for k, n in dispatch_counts(faults, runs).items() if n > 1}
    assert not twice, f"dispatched twice: {twice}"
    keys = [f"{r}/s{i}" for r in runs for i in range(3)]
    once = check_effectively_once(faults, keys, injected=0)
    check_applied_once(faults, runs)
    check_event_logs(faults, runs)
    check_nothing_stranded(faults)
    check_dead_letters(faults, [])
    conflicts = len(faults.log_events("batch_conflict"))
    report(
        "6-two-coordinators",
        runs=len(runs),
        steps=len(keys),
        rebalance_s=rebalance_s,
        all_done_s=total_s,
        duplicate_dispatches=len(twice),
        duplicate_calls=once.duplicates,
        batch_conflicts=conflicts,
        partitions={p: o.rsplit("-", 2)[-2] if o else None for p, o in owners.items()},
    )


def test_coordinator_sigkill_mid_run_partitions_taken_over(faults: FaultEnv) -> None:
    victim = faults.start_coordinator()
    faults.start_worker(concurrency=8)
    faults.start_worker(concurrency=8)
    faults.wait_for_workers(2)
    runs = [faults.submit(chain_yaml("takeover", 5, 0.3)) for _ in range(10)]
    assert_eventually(lambda: len(faults.witness("effects")) >= 15, timeout=20)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed = time.monotonic()
    effects_at_kill = sum(faults.witness("effects").values())
    faults.start_coordinator()

    def progressed() -> bool:
        return sum(faults.witness("effects").values()) > effects_at_kill + 10  # more than what was in flight

    assert_eventually(progressed, timeout=30, interval=0.05, message="no progress after the takeover")
    resumed_s = time.monotonic() - killed
    wait_terminal(faults, runs, deadline=45)
    done_s = time.monotonic() - killed

    assert {faults.run(r)["status"] for r in runs} == {"succeeded"}
    keys = [f"{r}/s{i}" for r in runs for i in range(5)]
    once = check_effectively_once(faults, keys, injected=0)
    check_applied_once(faults, runs)
    check_event_logs(faults, runs)
    check_nothing_stranded(faults)
    check_dead_letters(faults, [])
    lease_ttl = float(faults.env["STEPPE_COORDINATOR__LEASE_TTL"])
    assert resumed_s < lease_ttl + 10
    report(
        "coordinator-sigkill",
        lease_ttl_s=lease_ttl,
        progress_resumed_s=resumed_s,
        all_done_s=done_s,
        duplicate_calls=once.duplicates,
        republished=sum(e.get("count", 0) for e in faults.log_events("steps_republished")),
    )


@pytest.mark.parametrize(
    ("crash_point", "republished"),
    [
        # PostgreSQL says s1 is dispatched; Redis never got it: the reconciler must publish it.
        ("AFTER_COMMIT", True),
        # The reverse: Redis holds s0's result, PostgreSQL never applied it: it is read again.
        ("BEFORE_COMMIT", False),
    ],
)
def test_5_coordinator_dies_between_commit_and_publish(faults: FaultEnv, crash_point: str, republished: bool) -> None:
    # The 2nd dispatching batch is the one that applies s0's result and dispatches s1.
    victim = faults.start_coordinator(**{f"STEPPE_FAULT_CRASH_{crash_point}": "2"})
    faults.start_worker()
    faults.wait_for_workers(1)
    run_id = faults.submit(chain_yaml("crashpoint", 3, 0.2))
    assert victim.wait(timeout=20) == 137, "the crash point was never reached"
    crashed = time.monotonic()
    assert faults.witness("effects") == {f"{run_id}/s0": 1}
    faults.start_coordinator()
    doc = wait_terminal(faults, [run_id], deadline=30)[run_id]
    recovery_s = time.monotonic() - crashed

    assert doc["status"] == "succeeded"
    keys = [f"{run_id}/s{i}" for i in range(3)]
    once = check_effectively_once(faults, keys, injected=0)  # no second effect, no second call
    assert not {k: n for k, n in dispatch_counts(faults, [run_id]).items() if n > 1}
    republish_logs = faults.log_events("steps_republished")
    assert bool(republish_logs) is republished, republish_logs
    replayed = [e for e in faults.log_events("result_duplicate_ignored") if e["step"] == "s0"]
    assert bool(replayed) is republished  # after the commit, the unacknowledged s0 result is a duplicate
    check_applied_once(faults, [run_id])
    check_event_logs(faults, [run_id])
    check_nothing_stranded(faults)
    check_dead_letters(faults, [])
    report(
        f"5-coordinator-crash-{crash_point.lower()}",
        recovery_s=recovery_s,
        lease_ttl_s=float(faults.env["STEPPE_COORDINATOR__LEASE_TTL"]),
        republished=sum(e.get("count", 0) for e in republish_logs),
        replayed_results_fenced=len(replayed),
        duplicate_calls=once.duplicates,
    )


def test_dead_coordinators_partitions_are_all_taken_over_after_one_lease_ttl(faults: FaultEnv) -> None:
    victim = faults.start_coordinator()
    assert_eventually(lambda: len(lease_owners(faults)) == 4, timeout=15)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed = time.monotonic()
    survivor = faults.start_coordinator()
    held: dict[int, float] = {}

    def all_taken() -> bool:
        for p, owner in lease_owners(faults).items():
            if owner and f"-{survivor.pid}-" in owner:
                held.setdefault(p, round(time.monotonic() - killed, 2))
        return len(held) == 4

    assert_eventually(all_taken, timeout=20, interval=0.1)
    ttl = float(faults.env["STEPPE_COORDINATOR__LEASE_TTL"])
    report("coordinator-takeover", lease_ttl_s=ttl, partition_taken_over_s=held)
    assert max(held.values()) < ttl + ttl / 3 + 1.5, held
