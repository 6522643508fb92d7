"""The execution core against a real 3-master Redis Cluster: chain, fan-out, retries, saga, cancel, dead letters.

Every workflow runs through a real coordinator and real workers whose queues and run partitions
live on different masters, so each multi-key command, pipeline and blocking read must stay in one
slot (a cross-slot command is an error on a cluster, not a slowdown).
"""

from __future__ import annotations

import time

import pytest

from orchestrator import redis_clients
from tests.cluster.conftest import QUEUES
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

pytestmark = [pytest.mark.cluster, pytest.mark.integration]

CHAIN = """
name: chain
steps:
  - {id: a, handler: test.ledger}
  - {id: b, handler: test.ledger, needs: [a]}
  - {id: charge, handler: test.ledger, needs: [b], queue: payments, priority: high}
  - {id: c, handler: test.ledger, needs: [charge]}
"""

FAN_OUT = """
name: fan
inputs:
  items: {type: array, required: true}
steps:
  - id: each
    handler: test.add
    for_each: "${{ inputs.items }}"
    with: {a: "${{ item }}", b: 100}
  - id: pay
    handler: test.add
    queue: payments
    for_each: "${{ inputs.items }}"
    with: {a: "${{ item }}", b: 1}
  - id: total
    handler: builtin.echo
    needs: [each, pay]
    with: {each: "${{ steps.each.output }}", pay: "${{ steps.pay.output }}"}
"""

RETRY = """
name: retrying
steps:
  - id: flaky
    handler: builtin.fail
    queue: payments
    with: {times: 2, message: transient}
    retry: {max_attempts: 3, initial_delay: 100ms, backoff: fixed, jitter: false}
"""

SAGA = """
name: saga
on_failure: compensate
steps:
  - id: reserve
    handler: test.record
    compensate: {handler: test.record}
  - id: charge
    handler: test.record
    queue: payments
    needs: [reserve]
    compensate: {handler: test.record, queue: payments}
  - id: ship
    handler: builtin.fail
    needs: [charge]
    with: {retryable: false, message: no courier}
"""


def test_core_workflows_finish_with_queues_and_partitions_on_different_masters(on_cluster: FaultEnv) -> None:
    on_cluster.start(workers=2, queues=list(QUEUES), concurrency=8)
    started = time.monotonic()
    chains = [on_cluster.submit(CHAIN) for _ in range(12)]
    fan = on_cluster.submit(FAN_OUT, {"items": [5, 1, 4, 2, 3, 9, 7]})
    retry = on_cluster.submit(RETRY)
    saga = on_cluster.submit(SAGA)
    runs = [*chains, fan, retry, saga]
    docs = wait_terminal(on_cluster, runs, deadline=60)
    took_s = time.monotonic() - started

    assert {docs[r]["status"] for r in chains} == {"succeeded"}
    total = docs[fan]["steps"]["total"]["output"]
    assert [r["sum"] for r in total["each"]] == [105, 101, 104, 102, 103, 109, 107]
    assert [r["sum"] for r in total["pay"]] == [6, 2, 5, 3, 4, 10, 8]
    assert docs[retry]["status"] == "succeeded"
    assert docs[retry]["steps"]["flaky"]["attempts"] == 3
    assert docs[saga]["status"] == "compensated"
    assert on_cluster.witness_list("order") == [
        f"{saga}/reserve",
        f"{saga}/charge",
        f"{saga}/charge:compensate",
        f"{saga}/reserve:compensate",
    ]
    keys = [f"{r}/{s}" for r in chains for s in ("a", "b", "charge", "c")]
    check_effectively_once(on_cluster, keys, injected=0, effects="effects", exact=False)
    check_applied_once(on_cluster, runs)
    check_event_logs(on_cluster, runs)
    check_nothing_stranded(on_cluster, queues=QUEUES)
    check_dead_letters(on_cluster, [])
    # The work really was spread: every master holds streams of this namespace.
    per_master = [
        sum(1 for _ in node.scan_iter(match=f"{{{on_cluster.settings.namespace}*"))
        for node in redis_clients.masters(on_cluster.redis)
    ]
    assert len(per_master) == 3
    assert all(per_master), per_master
    report("cluster-core", runs=len(runs), seconds=took_s, keys_per_master=per_master)


def test_cancel_stops_a_running_workflow_on_the_cluster(on_cluster: FaultEnv) -> None:
    on_cluster.start(workers=1, queues=list(QUEUES))
    run_id = on_cluster.submit("""
name: long
steps:
  - {id: wait, handler: builtin.sleep, with: {seconds: 60}, queue: payments}
  - {id: after, handler: builtin.echo, needs: [wait]}
""")
    assert_eventually(lambda: on_cluster.run(run_id)["steps"].get("wait", {}).get("status") == "running", timeout=15)
    on_cluster.submitter.request(run_id, "cancel")
    doc = wait_terminal(on_cluster, [run_id], deadline=15)[run_id]
    assert doc["status"] == "cancelled"
    assert doc["steps"]["wait"]["status"] == "cancelled"
    assert doc["steps"]["after"]["status"] == "cancelled"
    check_event_logs(on_cluster, [run_id])
    check_nothing_stranded(on_cluster, queues=QUEUES)


POISON = """
name: poison
on_failure: compensate
steps:
  - id: reserve
    handler: test.ledger
    queue: payments
    compensate: {handler: test.record}
  - id: explode
    handler: test.crash
    needs: [reserve]
"""


def test_poison_message_is_dead_lettered_and_the_saga_compensates(on_cluster: FaultEnv) -> None:
    on_cluster.start(workers=2, queues=list(QUEUES), concurrency=4)
    on_cluster.supervise(queues=list(QUEUES), concurrency=4)
    max_deliveries = int(on_cluster.env["STEPPE_WORKER__MAX_DELIVERIES"])
    run_id = on_cluster.submit(POISON)
    doc = wait_terminal(on_cluster, [run_id], deadline=60)[run_id]

    assert doc["status"] == "compensated", doc
    assert doc["steps"]["explode"]["status"] == "dead_lettered"
    assert on_cluster.witness("effects") == {f"{run_id}/reserve": 1, f"{run_id}/reserve:compensate": 1}
    check_event_logs(on_cluster, [run_id])
    check_nothing_stranded(on_cluster, queues=QUEUES)
    entries = check_dead_letters(
        on_cluster, [{"reason": "MaxDeliveriesExceeded", "deliveries": max_deliveries + 1, "queue": "default"}]
    )
    assert run_id.encode() in entries[0]["m"]
