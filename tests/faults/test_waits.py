"""Durable waits under coordinator faults (docs/spec.md §12.1, docs/reliability.md I1-I5).

A coordinator is SIGKILLed while 30 runs wait (for a signal, or in a sleep whose timer comes due
while no coordinator lives), signals are accepted while it is dead, and a second coordinator takes
the partitions over: every signal is applied once, every timer fires once, no run is stuck.
"""

from __future__ import annotations

import datetime as dt
import signal
import statistics
import time
from collections import Counter

import pytest

from orchestrator.signals import Signaller
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


def test_coordinator_sigkill_while_steps_wait_and_timers_come_due(faults: FaultEnv) -> None:
    victim = faults.start_coordinator()
    faults.start_worker(concurrency=8)
    faults.wait_for_workers(1)
    signalled = [faults.submit(SIGNALLED) for _ in range(20)]
    sleeping = [faults.submit(SLEEPING) for _ in range(10)]
    assert_eventually(
        lambda: all(waiting(faults, r, "paid") for r in signalled) and all(waiting(faults, r, "nap") for r in sleeping),
        timeout=30,
        message=faults.log_text,
    )
    sender = Signaller(settings=faults.settings, store=faults.store, client=faults.redis)
    for n, run_id in enumerate(signalled[:10]):  # before the kill: some applied, some maybe not yet
        sender.signal(run_id, "go", {"n": n}, idempotency_key=f"go-{run_id}")
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed = time.monotonic()
    for n, run_id in enumerate(signalled):  # while no coordinator lives; the first ten again (same key)
        sender.signal(run_id, "go", {"n": n}, idempotency_key=f"go-{run_id}")
    faults.start_coordinator()
    runs = signalled + sleeping
    wait_terminal(faults, runs, deadline=60)
    done_s = time.monotonic() - killed

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
    assert {(r["n"], r["consumed"]) for r in rows} == {(1, 1)}, rows  # one row per key, consumed once
    keys = [f"{r}/s{i}" for r in runs for i in range(2)]
    check_effectively_once(faults, keys, injected=0)
    check_applied_once(faults, runs)  # no wait ended twice: one step.succeeded per paid and nap
    ended = Counter(e["step_key"] for r in sleeping for e in faults.queries.events(r) if e["type"] == "step.succeeded")
    assert ended == {"s0": len(sleeping), "nap": len(sleeping), "s1": len(sleeping)}  # each timer fired once
    check_event_logs(faults, runs)
    check_nothing_stranded(faults)
    check_dead_letters(faults, [])
    lateness = []
    for run_id in sleeping:
        nap = docs[run_id]["steps"]["nap"]["output"]
        woke = dt.datetime.fromisoformat(nap["woke_at"]) - dt.datetime.fromisoformat(nap["slept_until"])
        lateness.append(woke.total_seconds())
    lease_ttl = float(faults.env["STEPPE_COORDINATOR__LEASE_TTL"])
    assert max(lateness) < lease_ttl + 10, lateness  # woken within the lease TTL (plus start-up) of the due time
    report(
        "waits-coordinator-sigkill",
        lease_ttl_s=lease_ttl,
        all_done_s=round(done_s, 2),
        sleep_lateness_max_s=round(max(lateness), 3),
        sleep_lateness_median_s=round(statistics.median(lateness), 3),
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
