"""Durable waits under coordinator faults (docs/spec.md §12.1, docs/reliability.md I1-I5).

A coordinator is SIGKILLed while 50 runs wait (for a signal, or in a sleep whose timer may come due
while no coordinator lives), signals are accepted while it is dead and while its successor starts, and
the successor takes the partitions over; a coordinator dies at the SIGNAL_BEFORE_APPLY crash point
(orchestrator/fault_points.py) with an accepted signal loaded and not applied; a 5 s sleep crosses a
clean restart, and a takeover by a second live coordinator. Every signal is applied once (one event
carrying its `signal_id`), every timer fires once and not before it is due, no run is stuck.
"""

from __future__ import annotations

import datetime as dt
import math
import signal
import statistics
import time
from collections import Counter

import pytest

from orchestrator.signals import Signaller
from orchestrator.store.leases import partition_of
from tests.faults.harness import FaultEnv
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

SIGNALLED = """
name: fault-signalled
steps:
  - {id: s0, handler: test.witness}
  - {id: paid, needs: [s0], wait: {signal: go}}
  - {id: s1, needs: [paid], handler: test.witness, with: {value: "${{ steps.paid.output.n }}"}}
"""
SLEEPING = """
name: fault-sleeping
steps:
  - {id: s0, handler: test.witness}
  - {id: nap, needs: [s0], sleep: 4s}
  - {id: s1, needs: [nap], handler: test.witness}
"""


def waiting(faults: FaultEnv, run_id: str, step: str) -> bool:
    record = faults.run(run_id)["steps"].get(step)
    return record is not None and record["status"] == "waiting"


def signal_applications(faults: FaultEnv, run_ids: list[str]) -> dict[int, int]:
    """signal id -> how many events of its run's log carry it (the event that ended a wait with it)."""
    with faults.store.connection() as conn:
        rows = conn.execute(
            "SELECT s.signal_id, count(e.seq) AS n FROM run_signals s LEFT JOIN workflow_events e"
            " ON e.run_id = s.run_id AND e.data ? 'signal_id' AND (e.data->>'signal_id')::bigint = s.signal_id"
            " WHERE s.run_id = ANY(%s) GROUP BY s.signal_id",
            (run_ids,),
        ).fetchall()
    return {int(r["signal_id"]): int(r["n"]) for r in rows}


def check_signals_applied_once(faults: FaultEnv, run_ids: list[str]) -> int:
    """Each stored signal of these runs was applied exactly once: one event of its run's log carries it,
    and its row is consumed. Returns the number of signals."""
    applied = signal_applications(faults, run_ids)
    assert applied, "no signal stored"
    assert set(applied.values()) == {1}, {k: n for k, n in applied.items() if n != 1}
    with faults.store.connection() as conn:
        unconsumed = conn.execute(
            "SELECT signal_id FROM run_signals WHERE run_id = ANY(%s) AND consumed_by IS NULL", (run_ids,)
        ).fetchall()
    assert not unconsumed, unconsumed
    return len(applied)


def ended_once(faults: FaultEnv, run_ids: list[str], step: str) -> None:
    """The wait step `step` of each run has exactly one step.succeeded in its log."""
    ended = Counter(
        r for r in run_ids for e in faults.queries.events(r) if e["step_key"] == step and e["type"] == "step.succeeded"
    )
    assert ended == dict.fromkeys(run_ids, 1), ended


def check_invariants(faults: FaultEnv, runs: list[str]) -> None:
    """I1-I5 for runs of two effect steps (s0, s1) and no injected duplicate: each effect once (s1
    ran once per run), each result applied once, gapless logs folding to the stored state,
    nothing stranded, no dead letter."""
    keys = [f"{r}/s{i}" for r in runs for i in range(2)]
    check_effectively_once(faults, keys, injected=0)
    check_applied_once(faults, runs)
    check_event_logs(faults, runs)
    check_nothing_stranded(faults)
    check_dead_letters(faults, [])


def test_coordinator_sigkill_while_steps_wait_and_timers_come_due(faults: FaultEnv) -> None:
    victim = faults.start_coordinator()
    faults.start_worker(concurrency=8)
    faults.wait_for_workers(1)
    signalled = [faults.submit(SIGNALLED) for _ in range(40)]
    sleeping = [faults.submit(SLEEPING) for _ in range(10)]
    runs = signalled + sleeping  # 50 runs waiting at once
    assert_eventually(
        lambda: all(waiting(faults, r, "paid") for r in signalled) and all(waiting(faults, r, "nap") for r in sleeping),
        timeout=90,
        message=faults.log_text,
    )
    sender = Signaller(settings=faults.settings, store=faults.store, client=faults.redis)
    for n, run_id in enumerate(signalled[:10]):  # before the kill: some applied, some maybe not yet
        sender.signal(run_id, "go", {"n": n}, idempotency_key=f"go-{run_id}")
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed, killed_at = time.monotonic(), time.time()
    for n, run_id in enumerate(signalled[:25]):  # while no coordinator lives; the first ten again (same key)
        sender.signal(run_id, "go", {"n": n}, idempotency_key=f"go-{run_id}")
    # The sleeps come due while no coordinator lives: the successor starts once the last one is due.
    last_due = max(
        float(e["data"]["due_at"])
        for r in sleeping
        for e in faults.queries.events(r)
        if e["step_key"] == "nap" and e["type"] == "step.waiting"
    )
    assert killed_at < last_due, "the sleeps ended before the kill"
    assert_eventually(lambda: time.time() > last_due, timeout=30, interval=0.05)
    successor_at = time.time()
    successor = faults.start_coordinator()
    for n, run_id in enumerate(signalled[25:], start=25):  # while the successor starts and takes over
        sender.signal(run_id, "go", {"n": n}, idempotency_key=f"go-{run_id}")
    for n, run_id in enumerate(signalled[:5]):  # a webhook retried once more: stored once
        assert sender.signal(run_id, "go", {"n": n}, idempotency_key=f"go-{run_id}").duplicate
    wait_terminal(faults, runs, deadline=120)
    done_s = time.monotonic() - killed
    assert successor.poll() is None, "the successor coordinator died"

    docs = {r: faults.run(r) for r in runs}
    assert {d["status"] for d in docs.values()} == {"succeeded"}, {r: d["status"] for r, d in docs.items()}
    for n, run_id in enumerate(signalled):
        assert docs[run_id]["steps"]["paid"]["output"] == {"n": n}
        assert docs[run_id]["steps"]["s1"]["output"]["value"] == n
    with faults.store.connection() as conn:
        rows = conn.execute(
            "SELECT run_id, count(*) AS n, count(consumed_by) AS consumed FROM run_signals"
            " WHERE run_id = ANY(%s) GROUP BY run_id",
            (signalled,),
        ).fetchall()
    assert len(rows) == len(signalled), rows
    assert {(r["n"], r["consumed"]) for r in rows} == {(1, 1)}, rows  # one row per key, consumed once
    applied = check_signals_applied_once(faults, signalled)  # one signal-applied event per signal
    assert applied == len(signalled)
    ended_once(faults, signalled, "paid")
    ended_once(faults, sleeping, "nap")  # each timer fired once
    check_invariants(faults, runs)
    lateness = []
    due_while_dead = 0
    for run_id in sleeping:
        nap = docs[run_id]["steps"]["nap"]["output"]
        slept_until = dt.datetime.fromisoformat(nap["slept_until"])
        woke = dt.datetime.fromisoformat(nap["woke_at"]) - slept_until
        assert woke.total_seconds() >= 0, nap  # never before its due time
        lateness.append(woke.total_seconds())
        due_while_dead += killed_at < slept_until.timestamp() < successor_at
    lease_ttl = float(faults.env["STEPPE_COORDINATOR__LEASE_TTL"])
    assert max(lateness) < lease_ttl + 20, lateness  # woken within the lease TTL (plus start-up) of the due time
    report(
        "waits-coordinator-sigkill",
        runs_waiting=len(runs),
        signals=applied,
        lease_ttl_s=lease_ttl,
        all_done_s=round(done_s, 2),
        sleeps_due_while_no_coordinator=due_while_dead,
        sleep_lateness_max_s=round(max(lateness), 3),
        sleep_lateness_median_s=round(statistics.median(lateness), 3),
    )


SIGNAL_CRASH = "SIGNAL_BEFORE_APPLY"


def test_signal_accepted_then_coordinator_killed_before_applying_it(faults: FaultEnv) -> None:
    # Armed at 1: the coordinator exits 137 at its first delivery that loads an accepted signal, before
    # the engine applies it and before the batch commits the event and the row's consumption.
    victim = faults.start_coordinator(**{f"STEPPE_FAULT_CRASH_{SIGNAL_CRASH}": "1"})
    faults.start_worker()
    faults.wait_for_workers(1)
    runs = [faults.submit(SIGNALLED) for _ in range(3)]
    assert_eventually(lambda: all(waiting(faults, r, "paid") for r in runs), timeout=60, message=faults.log_text)
    assert victim.poll() is None, "the crash point fired before any signal was sent"
    sender = Signaller(settings=faults.settings, store=faults.store, client=faults.redis)
    first = sender.signal(runs[0], "go", {"n": 0}, idempotency_key="go-0")
    assert victim.wait(timeout=60) == 137, "the crash point was never reached"
    crashed = time.monotonic()
    for n, run_id in enumerate(runs[1:], start=1):  # accepted while no coordinator lives
        sender.signal(run_id, "go", {"n": n}, idempotency_key=f"go-{n}")

    # Accepted and durable, not applied: the step still waits, the row is unconsumed, no event carries it.
    assert waiting(faults, runs[0], "paid")
    assert signal_applications(faults, [runs[0]]) == {first.signal_id: 0}
    assert faults.witness("effects").get(f"{runs[0]}/s1") is None
    faults.start_coordinator()
    docs = wait_terminal(faults, runs, deadline=60)
    recovery_s = time.monotonic() - crashed
    assert sender.signal(runs[0], "go", {"n": 99}, idempotency_key="go-0").duplicate  # the sender retries: once

    assert {d["status"] for d in docs.values()} == {"succeeded"}, {r: d["status"] for r, d in docs.items()}
    for n, run_id in enumerate(runs):
        assert docs[run_id]["steps"]["paid"]["output"] == {"n": n}
        assert docs[run_id]["steps"]["s1"]["output"]["value"] == n
    assert check_signals_applied_once(faults, runs) == len(runs)
    ended_once(faults, runs, "paid")
    check_invariants(faults, runs)
    report(
        "waits-signal-crash-before-apply",
        lease_ttl_s=float(faults.env["STEPPE_COORDINATOR__LEASE_TTL"]),
        recovery_s=round(recovery_s, 2),
        signals=len(runs),
    )


def test_a_sleep_across_a_coordinator_restart_fires_once(faults: FaultEnv) -> None:
    first = faults.start_coordinator()
    faults.start_worker()
    faults.wait_for_workers(1)
    run_id = faults.submit(SLEEPING)
    assert_eventually(lambda: waiting(faults, run_id, "nap"), timeout=30, message=faults.log_text)
    first.send_signal(signal.SIGTERM)  # a clean restart: the leases are released, the timer is in PostgreSQL
    assert first.wait(timeout=30) == 0
    faults.start_coordinator()
    doc = wait_terminal(faults, [run_id], deadline=30)[run_id]
    assert doc["status"] == "succeeded"
    check_applied_once(faults, [run_id])
    check_effectively_once(faults, [f"{run_id}/s0", f"{run_id}/s1"], injected=0)
    check_event_logs(faults, [run_id])
    check_nothing_stranded(faults)


SLEEP_5S = """
name: fault-sleep-takeover
steps:
  - {id: s0, handler: test.witness}
  - {id: nap, needs: [s0], sleep: 5s}
  - {id: s1, needs: [nap], handler: test.witness}
"""


def lease_owners(faults: FaultEnv) -> dict[int, str]:
    """partition -> the coordinator holding its unexpired lease."""
    with faults.store.connection() as conn:
        rows = conn.execute(
            "SELECT partition, owner FROM coordinator_leases WHERE expires_at > now() AND owner IS NOT NULL"
        ).fetchall()
    return {int(r["partition"]): str(r["owner"]) for r in rows}


def test_a_5s_sleep_across_a_takeover_by_a_second_live_coordinator(faults: FaultEnv) -> None:
    coordinators = [faults.start_coordinator(), faults.start_coordinator()]
    faults.start_worker()
    faults.wait_for_workers(1)
    partitions = faults.settings.coordinator.partitions

    def split() -> bool:  # both live, each holding its fair share (the rebalance is over)
        held = Counter(
            next((c.pid for c in coordinators if f"-{c.pid}-" in o), 0) for o in lease_owners(faults).values()
        )
        return set(held) == {c.pid for c in coordinators} and set(held.values()) == {math.ceil(partitions / 2)}

    assert_eventually(split, timeout=60, message=faults.log_text)
    victim, survivor = coordinators
    # Runs on both coordinators' partitions: the victim's are under test, the survivor's a control.
    owned_by: dict[str, int] = {}  # run id -> pid of the coordinator owning its partition
    deadline = time.monotonic() + 60
    while set(owned_by.values()) != {c.pid for c in coordinators} or len(owned_by) < 4:
        assert time.monotonic() < deadline, f"no run landed on both coordinators' partitions: {owned_by}"
        run_id = faults.submit(SLEEP_5S)
        owner = lease_owners(faults).get(partition_of(run_id, partitions), "")
        owned_by[run_id] = next((c.pid for c in coordinators if f"-{c.pid}-" in owner), 0)
        assert owned_by[run_id], f"partition of {run_id} without a live lease: {lease_owners(faults)}"
    runs = list(owned_by)
    assert_eventually(lambda: all(waiting(faults, r, "nap") for r in runs), timeout=30, message=faults.log_text)
    owners = lease_owners(faults)
    assert all(f"-{owned_by[r]}-" in owners.get(partition_of(r, partitions), "") for r in runs), "partitions moved"
    taken_runs = [r for r in runs if owned_by[r] == victim.pid]
    victim_partitions = {partition_of(r, partitions) for r in taken_runs}
    due: dict[str, float] = {}
    for run_id in runs:
        waited = next(
            e for e in faults.queries.events(run_id) if e["step_key"] == "nap" and e["type"] == "step.waiting"
        )
        due[run_id] = float(waited["data"]["due_at"])
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed, killed_at = time.monotonic(), time.time()
    first_due = min(due[r] for r in taken_runs)
    assert killed_at < first_due, "a sleep came due before its coordinator was killed: nothing left to take over"
    taken: list[float] = []

    def taken_over() -> bool:
        owners = lease_owners(faults)
        if all(f"-{survivor.pid}-" in owners.get(p, "") for p in victim_partitions):
            taken.append(time.monotonic() - killed)
            return True
        return False

    assert_eventually(taken_over, timeout=60, interval=0.1, message=faults.log_text)
    docs = wait_terminal(faults, runs, deadline=60)
    done_s = time.monotonic() - killed
    assert survivor.poll() is None, "the survivor died"
    assert {f"-{survivor.pid}-" in o for o in lease_owners(faults).values()} == {True}

    assert {d["status"] for d in docs.values()} == {"succeeded"}, {r: d["status"] for r, d in docs.items()}
    ended_once(faults, runs, "nap")  # each timer fired once (the victim's runs' by the survivor)
    lateness: list[float] = []
    for run_id in runs:
        nap = docs[run_id]["steps"]["nap"]["output"]
        slept_until = dt.datetime.fromisoformat(nap["slept_until"]).timestamp()
        woke_at = dt.datetime.fromisoformat(nap["woke_at"]).timestamp()
        assert slept_until == pytest.approx(due[run_id], abs=1e-3), (nap, due[run_id])
        assert woke_at >= slept_until, nap  # not before its due time
        events = faults.queries.events(run_id)
        fired = next(e for e in events if e["step_key"] == "nap" and e["type"] == "step.succeeded")
        assert fired["created_at"].timestamp() >= due[run_id], (fired, due[run_id])  # committed after it, too
        s1 = next(e for e in events if e["step_key"] == "s1" and e["type"] == "step.dispatched")
        assert s1["created_at"].timestamp() >= due[run_id], (s1, due[run_id])
        if run_id in taken_runs:
            lateness.append(woke_at - due[run_id])
    lease_ttl = float(faults.env["STEPPE_COORDINATOR__LEASE_TTL"])
    assert max(lateness) < lease_ttl + 20, lateness  # within the lease TTL (plus start-up), generous on 2 cores
    check_invariants(faults, runs)
    report(
        "waits-sleep-live-takeover",
        lease_ttl_s=lease_ttl,
        runs=len(runs),
        taken_over_runs=len(taken_runs),
        killed_before_due_s=round(first_due - killed_at, 2),
        partitions_taken_over_s=round(taken[0], 2),
        sleep_lateness_max_s=round(max(lateness), 3),
        all_done_s=round(done_s, 2),
    )


LATENCY = """
name: fault-latency
steps:
  - {id: hold, wait: {signal: go}}
  - {id: after, needs: [hold], handler: builtin.echo}
  - {id: nap, sleep: 2s}
  - {id: fin, needs: [nap], handler: builtin.echo}
"""


def _quantiles(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return ordered[len(ordered) // 2], ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def test_sleep_lateness_and_signal_to_dispatch_latency(faults: FaultEnv) -> None:
    """Measured figures (pytest -s): how late 200 sleeps wake, and how soon a signal's step is applied and
    the next step dispatched; generous bounds, the numbers are the point."""
    faults.start(workers=1, concurrency=16)
    runs = [faults.submit(LATENCY) for _ in range(200)]
    assert_eventually(lambda: all(waiting(faults, r, "hold") for r in runs), timeout=60, message=faults.log_text)
    sender = Signaller(settings=faults.settings, store=faults.store, client=faults.redis)
    for run_id in runs:
        sender.signal(run_id, "go", {"ok": True})
        time.sleep(0.005)  # one at a time, as webhooks arrive: the latency of each, not of a burst
    wait_terminal(faults, runs, deadline=90)
    lateness: list[float] = []
    applied: list[float] = []
    dispatched: list[float] = []
    with faults.store.connection() as conn:
        accepted = {
            r["run_id"]: r["created_at"]
            for r in conn.execute("SELECT run_id, created_at FROM run_signals WHERE run_id = ANY(%s)", (runs,))
        }
    for run_id in runs:
        doc = faults.run(run_id)
        assert doc["status"] == "succeeded"
        nap = doc["steps"]["nap"]["output"]
        woke = dt.datetime.fromisoformat(nap["woke_at"]) - dt.datetime.fromisoformat(nap["slept_until"])
        lateness.append(woke.total_seconds())
        events = faults.queries.events(run_id)
        ended = next(e for e in events if e["step_key"] == "hold" and e["type"] == "step.succeeded")
        applied.append((ended["created_at"] - accepted[run_id]).total_seconds())
        sent = next(e for e in events if e["step_key"] == "after" and e["type"] == "step.dispatched")
        dispatched.append((sent["created_at"] - accepted[run_id]).total_seconds())
    check_applied_once(faults, runs)
    check_event_logs(faults, runs)
    late_p50, late_p99 = _quantiles(lateness)
    applied_p50, applied_p99 = _quantiles(applied)
    dispatch_p50, dispatch_p99 = _quantiles(dispatched)
    report(
        "waits-latency",
        sleeps=len(lateness),
        sleep_lateness_p50_ms=round(late_p50 * 1000, 1),
        sleep_lateness_p99_ms=round(late_p99 * 1000, 1),
        signal_to_applied_p50_ms=round(applied_p50 * 1000, 1),
        signal_to_applied_p99_ms=round(applied_p99 * 1000, 1),
        signal_to_dispatch_p50_ms=round(dispatch_p50 * 1000, 1),
        signal_to_dispatch_p99_ms=round(dispatch_p99 * 1000, 1),
    )
    assert late_p99 < 2.0
    assert applied_p99 < 2.0
