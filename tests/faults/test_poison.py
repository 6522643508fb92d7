"""Poison messages (docs/reliability.md 12): a handler that kills its worker, and undecodable payloads."""

from __future__ import annotations

import statistics
import time

import pytest

from orchestrator.wire import FIELD, decode_step
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

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.slow]

POISON = """
name: poison
on_failure: compensate
steps:
  - id: reserve
    handler: test.ledger
    compensate: {handler: test.record}
  - id: explode
    handler: test.crash
    needs: [reserve]
"""

NORMAL = """
name: normal
steps:
  - {id: a, handler: test.ledger, with: {seconds: 0.2}}
  - {id: b, handler: test.ledger, with: {seconds: 0.2}, needs: [a]}
"""


def test_12_poison_messages_are_dead_lettered_and_other_runs_keep_flowing(faults: FaultEnv) -> None:
    faults.start(workers=2, concurrency=4)
    supervisor = faults.supervise(concurrency=4)
    stream = faults.keys.queue_stream("default")
    max_deliveries = int(faults.env["STEPPE_WORKER__MAX_DELIVERIES"])

    garbage_id = faults.redis.xadd(stream, {FIELD: b"\x80\x81 not json"}).decode()
    wrong_schema_id = faults.redis.xadd(stream, {FIELD: b'{"run": 7, "step": ["x"]}'}).decode()
    submitted = time.monotonic()
    poison = faults.submit(POISON)
    normal: list[str] = []
    latencies: list[float] = []
    poison_entry: str | None = None
    while faults.queries.run_status(poison) not in ("compensated", "compensation_failed", "failed"):
        assert time.monotonic() - submitted < 45, f"poison run not finished; log:\n{faults.log_text()[-4000:]}"
        started = time.monotonic()
        run_id = faults.submit(NORMAL)
        normal.append(run_id)
        wait_terminal(faults, [run_id], deadline=20)
        latencies.append(time.monotonic() - started)
        if poison_entry is None:
            for entry_id, fields in faults.redis.xrange(stream):
                if fields and b'"step":"explode"' in fields[FIELD]:
                    poison_entry = entry_id.decode()
    dead_lettered_s = time.monotonic() - submitted
    docs = wait_terminal(faults, [poison, *normal], deadline=20)
    supervisor.stop()

    doc = docs[poison]
    assert doc["status"] == "compensated", doc
    assert doc["steps"]["explode"]["status"] == "dead_lettered"
    assert doc["steps"]["explode"]["error"]["type"] == "MaxDeliveriesExceeded"
    assert doc["steps"]["reserve"]["status"] == "compensated"
    assert {docs[r]["status"] for r in normal} == {"succeeded"}
    crashes = [code for _, code in supervisor.exits]
    assert crashes == [17] * max_deliveries, f"worker exits: {supervisor.exits}"
    assert poison_entry is not None
    dlq = check_dead_letters(
        faults,
        [
            {"id": poison_entry, "reason": "MaxDeliveriesExceeded", "deliveries": max_deliveries + 1},
            {"id": garbage_id, "reason": "UndecodableMessage", "deliveries": 1},
            {"id": wrong_schema_id, "reason": "UndecodableMessage", "deliveries": 1},
        ],
    )
    poisoned = next(e for e in dlq if e["id"] == poison_entry)
    assert decode_step(poisoned["m"]).step == "explode"  # the original payload, for replay

    # The coordinator merges the stream into PostgreSQL (`steppe dlq`): one row per dead letter.
    def table() -> set[tuple[str | None, str, int, str]]:
        with faults.store.connection() as conn:
            rows = conn.execute("SELECT step_key, stream_id, delivery_count, reason FROM dead_letters").fetchall()
        return {(r["step_key"], r["stream_id"], r["delivery_count"], r["reason"]) for r in rows}

    expected_rows = {
        ("explode", poison_entry, max_deliveries + 1, "MaxDeliveriesExceeded"),
        (None, garbage_id, 1, "UndecodableMessage"),
        (None, wrong_schema_id, 1, "UndecodableMessage"),
    }
    assert_eventually(lambda: table() == expected_rows, timeout=10, message=lambda: f"dead_letters: {table()}")
    keys = [f"{r}/{s}" for r in normal for s in ("a", "b")] + [f"{poison}/reserve", f"{poison}/reserve:compensate"]
    once = check_effectively_once(faults, keys, injected=max_deliveries * 4, per_key=max_deliveries)
    assert faults.witness("effects").get(f"{poison}/reserve") == 1
    assert faults.witness_list("order") == [f"{poison}/reserve:compensate"]
    check_applied_once(faults, [poison, *normal])
    check_event_logs(faults, [poison, *normal])
    check_nothing_stranded(faults)
    assert not [e for e in faults.log_events("result_duplicate_ignored") if not e.get("run_id")]
    report(
        "12-poison",
        worker_crashes=len(crashes),
        dead_lettered_after_s=dead_lettered_s,
        dlq_entries=len(dlq),
        normal_runs_during=len(normal),
        normal_run_latency_p50_s=statistics.median(latencies),
        normal_run_latency_max_s=max(latencies),
        duplicate_calls=once.duplicates,
    )
