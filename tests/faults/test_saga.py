"""Saga faults (docs/reliability.md 15): a compensation that fails, and a worker killed mid-compensation."""

from __future__ import annotations

import signal
import time

import pytest

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


def dispatch_order(env: FaultEnv, run_id: str) -> list[str]:
    return [r["step_key"] for r in env.queries.events(run_id) if r["type"] == "step.dispatched"]


def test_15_failing_compensation_ends_compensation_failed_with_a_dead_letter(faults: FaultEnv) -> None:
    faults.start(workers=1)
    run_id = faults.submit("""
name: saga-broken-refund
on_failure: compensate
steps:
  - id: reserve
    handler: test.record
    compensate: {handler: test.record}
  - id: charge
    handler: test.record
    needs: [reserve]
    compensate:
      handler: builtin.fail
      with: {message: refund API is down}
      retry: {max_attempts: 2, initial_delay: 100ms, backoff: fixed, jitter: false}
  - id: ship
    handler: builtin.fail
    needs: [charge]
    with: {retryable: false, message: no courier}
""")
    started = time.monotonic()
    doc = wait_terminal(faults, [run_id], deadline=30)[run_id]
    took_s = time.monotonic() - started

    assert doc["status"] == "compensation_failed", doc["status"]
    assert doc["steps"]["ship"]["status"] == "failed"
    refund = doc["steps"]["charge:compensate"]
    assert refund["status"] == "failed"
    assert refund["attempts"] == 2
    assert refund["error"]["message"] == "refund API is down"
    assert doc["steps"]["reserve:compensate"]["status"] == "succeeded"
    # Reverse dependency order: charge's compensation (failed for good) before reserve's.
    order = dispatch_order(faults, run_id)
    comps = [k for k in order if k.endswith(":compensate")]
    assert comps == ["charge:compensate", "charge:compensate", "reserve:compensate"], order
    assert faults.witness_list("order") == [f"{run_id}/reserve", f"{run_id}/charge", f"{run_id}/reserve:compensate"]
    with faults.store.connection() as conn:
        rows = conn.execute("SELECT run_id, step_key, reason, error, attempt FROM dead_letters").fetchall()
    assert len(rows) == 1, rows
    assert rows[0]["step_key"] == "charge:compensate"
    assert rows[0]["reason"] == "compensation_failed"
    assert "refund API is down" in rows[0]["error"]
    check_effectively_once(faults, [f"{run_id}/{k}" for k in ("reserve", "charge", "reserve:compensate")], injected=0)
    check_applied_once(faults, [run_id])
    check_event_logs(faults, [run_id])
    check_nothing_stranded(faults)
    check_dead_letters(faults, [])  # the stream is for undeliverable messages; this one was delivered
    report("15-compensation-fails", run_s=took_s, dead_letter_rows=len(rows), compensation_attempts=2)


def test_15_worker_sigkill_mid_compensation_compensates_once_in_reverse_order(faults: FaultEnv) -> None:
    faults.start_coordinator()
    victim = faults.start_worker()
    faults.wait_for_workers(1)
    run_id = faults.submit("""
name: saga-killed
on_failure: compensate
steps:
  - id: reserve
    handler: test.record
    compensate: {handler: test.record, with: {seconds: 0.2}}
  - id: charge
    handler: test.record
    needs: [reserve]
    compensate: {handler: test.record, with: {seconds: 2}}
  - id: ship
    handler: builtin.fail
    needs: [charge]
    with: {retryable: false}
""")
    refund = f"{run_id}/charge:compensate"
    assert_eventually(lambda: faults.witness("calls").get(refund) == 1, timeout=20)
    time.sleep(0.7)  # the compensation is running
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed = time.monotonic()
    faults.start_worker()
    doc = wait_terminal(faults, [run_id], deadline=30)[run_id]
    recovery_s = time.monotonic() - killed

    assert doc["status"] == "compensated", doc["status"]
    assert doc["steps"]["reserve"]["status"] == "compensated"
    assert doc["steps"]["charge"]["status"] == "compensated"
    assert faults.witness_list("order") == [
        f"{run_id}/reserve",
        f"{run_id}/charge",
        f"{run_id}/charge:compensate",
        f"{run_id}/reserve:compensate",
    ]
    keys = [f"{run_id}/{k}" for k in ("reserve", "charge", "charge:compensate", "reserve:compensate")]
    once = check_effectively_once(faults, keys, injected=1, per_key=1)
    assert once.duplicated_keys == {refund: 1}
    check_applied_once(faults, [run_id])
    check_event_logs(faults, [run_id])
    check_nothing_stranded(faults)
    check_dead_letters(faults, [])
    with faults.store.connection() as conn:
        assert conn.execute("SELECT count(*) AS n FROM dead_letters").fetchone()["n"] == 0
    report("15-sigkill-mid-compensation", recovery_s=recovery_s, duplicate_calls=once.duplicates)
