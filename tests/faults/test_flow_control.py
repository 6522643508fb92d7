"""Flow control under faults (docs/spec.md §12.2): SIGKILL of a coordinator and of a worker while
steps hold concurrency slots. After the takeover no slot has leaked, the limit was never exceeded
(in PostgreSQL's terms: from an attempt's step.dispatched to its next event that ends the attempt),
and I1-I5 hold."""

from __future__ import annotations

import signal
import time
from typing import Any

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

LIMIT, ITEMS = 3, 24
WORKFLOW = f"""
name: paid
steps:
  - id: pay
    handler: test.witness
    for_each: {list(range(ITEMS))}
    with: {{seconds: 0.4}}
    concurrency: {{key: provider, limit: {LIMIT}}}
"""
_ENDS = ("step.succeeded", "step.failed", "step.retry_scheduled", "step.cancelled", "step.dead_lettered")


def in_flight_intervals(env: FaultEnv, run_ids: list[str]) -> list[tuple[float, float]]:
    """[dispatched, ended] of every attempt, on the database clock (event created_at)."""
    spans: list[tuple[float, float]] = []
    with env.store.connection() as conn:
        rows = conn.execute(
            "SELECT run_id, step_key, type, extract(epoch FROM created_at) AS t FROM workflow_events"
            " WHERE run_id = ANY(%s) AND step_key LIKE 'pay[%%' ORDER BY run_id, seq",
            (run_ids,),
        ).fetchall()
    open_at: dict[tuple[str, str], float] = {}
    for r in rows:
        key = (r["run_id"], r["step_key"])
        if r["type"] == "step.dispatched":
            open_at[key] = float(r["t"])
        elif r["type"] in _ENDS and key in open_at:
            spans.append((open_at.pop(key), float(r["t"])))
    assert not open_at, f"attempts never ended: {open_at}"
    return spans


def max_overlap(spans: list[tuple[float, float]]) -> int:
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    current = best = 0
    for _, delta in edges:
        current += delta
        best = max(best, current)
    return best


def slot_rows(env: FaultEnv) -> list[dict[str, Any]]:
    with env.store.connection() as conn:
        return conn.execute("SELECT kind, key, run_id, step_key, granted_at FROM limit_slots").fetchall()


def test_coordinator_and_worker_sigkill_while_holding_slots_leak_nothing(faults: FaultEnv) -> None:
    victim = faults.start_coordinator()
    doomed = faults.start_worker(concurrency=8)
    faults.start_worker(concurrency=8)
    faults.wait_for_workers(2)
    runs = [faults.submit(WORKFLOW) for _ in range(3)]  # 72 steps through 3 slots
    assert_eventually(lambda: len(faults.witness("effects")) >= 6, timeout=30)
    held = [r for r in slot_rows(faults) if r["granted_at"] is not None]
    assert len(held) == LIMIT  # the victims hold every slot
    victim.send_signal(signal.SIGKILL)
    doomed.send_signal(signal.SIGKILL)
    victim.wait()
    doomed.wait()
    killed = time.monotonic()
    faults.start_coordinator()
    faults.start_worker(concurrency=8)
    wait_terminal(faults, runs, deadline=90)
    done_s = time.monotonic() - killed

    assert {faults.run(r)["status"] for r in runs} == {"succeeded"}
    assert slot_rows(faults) == []  # no slot outlived its step, through both deaths
    overlap = max_overlap(in_flight_intervals(faults, runs))
    assert overlap <= LIMIT, f"{overlap} attempts in flight at once for a limit of {LIMIT}"
    keys = [f"{r}/pay[{i}]" for r in runs for i in range(ITEMS)]
    once = check_effectively_once(faults, keys, injected=LIMIT)  # the killed worker's executions rerun
    check_applied_once(faults, runs)
    check_event_logs(faults, runs)
    check_nothing_stranded(faults)
    check_dead_letters(faults, [])
    report(
        "flow-control-sigkill",
        steps=len(keys),
        limit=LIMIT,
        max_in_flight=overlap,
        all_done_after_kill_s=done_s,
        duplicate_calls=once.duplicates,
    )
