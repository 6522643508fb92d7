"""Redis faults (docs/reliability.md 7, 8, 9, 16): crash with AOF, data loss, unreachable, trimming and deletion.

Every test here runs on a Redis of its own (`own_redis`); the witness handlers record into the
session Redis, so their records survive what these tests do to the cluster's Redis.
"""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest

from orchestrator.dev import RedisServer
from orchestrator.keys import WORKER_GROUP
from tests.faults.harness import FaultEnv, cpu_seconds, ledger_chain
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


def in_flight_steps(env: FaultEnv) -> int:
    with env.store.connection() as conn:
        row = conn.execute(
            "SELECT count(*) AS n FROM workflow_steps WHERE status IN ('dispatched', 'running', 'retry_scheduled')"
        ).fetchone()
    return int(row["n"]) if row else 0


def pel_snapshot(env: FaultEnv, queue: str = "default") -> dict[str, Any]:
    """Consumer group state of a queue's streams: group info and every pending entry."""
    snap: dict[str, Any] = {}
    for stream in env.keys.queue_streams(queue):
        if not env.redis.exists(stream):
            continue
        groups = {g["name"]: (g["pending"], g["last-delivered-id"]) for g in env.redis.xinfo_groups(stream)}
        pending = [
            (r["message_id"], r["consumer"], r["times_delivered"])
            for r in env.redis.xpending_range(stream, WORKER_GROUP, "-", "+", 10_000)
        ]
        snap[stream] = {"groups": groups, "pending": pending}
    return snap


def workers_alive_and_registered(env: FaultEnv) -> bool:
    live = {p.pid for p in env.live_workers()}
    registered = set()
    for raw in env.redis.zrange(env.keys.workers, 0, -1):
        if env.redis.exists(env.keys.worker(raw.decode())):
            registered.add(int(raw.decode().rsplit("-", 2)[-2]))
    return live <= registered


def test_7_redis_sigkill_and_aof_restart_restores_groups_and_pending(
    faults_own_redis: FaultEnv, own_redis: RedisServer
) -> None:
    env = faults_own_redis
    env.start(workers=2, concurrency=4)
    runs = [env.submit(ledger_chain("aof", 4, 0.3)) for _ in range(12)]
    assert_eventually(lambda: len(env.witness("effects")) >= 6, timeout=15)

    # Phase 1: crash while everything is moving.
    in_flight_1 = in_flight_steps(env)
    own_redis.kill()
    killed = time.monotonic()
    time.sleep(1.0)
    own_redis.restart()
    down_s = time.monotonic() - killed
    effects = sum(env.witness("effects").values())
    assert_eventually(lambda: sum(env.witness("effects").values()) > effects + 2, timeout=20, message=env.log_text)
    resumed_s = time.monotonic() - killed

    # Phase 2: freeze the workers, crash, and compare the consumer groups before and after.
    assert_eventually(lambda: pel_snapshot(env)[env.keys.queue_stream("default")]["pending"], timeout=15)
    for proc in env.live_workers():
        proc.send_signal(signal.SIGSTOP)
    time.sleep(0.3)  # let in-flight writes of the frozen workers settle
    before = pel_snapshot(env)
    in_flight_2 = in_flight_steps(env)
    own_redis.kill()
    own_redis.restart()
    after = pel_snapshot(env)
    for proc in env.live_workers():
        proc.send_signal(signal.SIGCONT)
    assert after == before, "consumer groups or pending lists differ after the AOF restart"

    wait_terminal(env, runs, deadline=45)
    assert {env.run(r)["status"] for r in runs} == {"succeeded"}
    keys = [f"{r}/s{i}" for r in runs for i in range(4)]
    once = check_effectively_once(env, keys, injected=in_flight_1 + in_flight_2, per_key=2)
    check_applied_once(env, runs)
    check_event_logs(env, runs)
    check_nothing_stranded(env)
    check_dead_letters(env, [])
    assert not env.log_events("redis_data_loss_detected"), "the AOF kept the epoch: no data loss"
    report(
        "7-redis-sigkill-aof",
        pending_restored=sum(len(s["pending"]) for s in before.values()),
        redis_down_s=down_s,
        progress_resumed_s=resumed_s,
        in_flight_at_faults=in_flight_1 + in_flight_2,
        duplicate_calls=once.duplicates,
        effects=sum(env.witness("effects").values()),
    )


def test_8_redis_restarted_empty_reconciler_redispatches_from_postgres(
    faults_own_redis: FaultEnv, own_redis: RedisServer
) -> None:
    env = faults_own_redis
    env.start(workers=2, concurrency=4)
    runs = [env.submit(ledger_chain("lost", 3, 1.0)) for _ in range(6)]
    assert_eventually(lambda: len(env.witness("calls")) >= 4, timeout=15)
    in_flight = in_flight_steps(env)
    own_redis.restart(empty=True)
    restarted = time.monotonic()
    wait_terminal(env, runs, deadline=45)
    done_s = time.monotonic() - restarted

    assert {env.run(r)["status"] for r in runs} == {"succeeded"}
    keys = [f"{r}/s{i}" for r in runs for i in range(3)]
    once = check_effectively_once(env, keys, injected=in_flight, per_key=1)
    check_applied_once(env, runs)
    check_event_logs(env, runs)
    check_nothing_stranded(env)
    check_dead_letters(env, [])
    assert env.log_events("redis_data_loss_detected")
    # Every worker outlived the loss of its consumer groups with its liveness loop intact.
    time.sleep(2 * float(env.env["STEPPE_WORKER__HEARTBEAT_INTERVAL"]) + 1)
    assert workers_alive_and_registered(env), "a worker stopped heartbeating after Redis lost its data"
    assert "Traceback" not in env.log_text()
    report(
        "8-redis-restarted-empty",
        in_flight_at_loss=in_flight,
        republished=sum(e.get("count", 0) for e in env.log_events("steps_republished")),
        all_done_s=done_s,
        duplicate_calls=once.duplicates,
        duplicate_results_fenced=once.duplicate_logs,
    )


def test_9_redis_unreachable_bounded_retries_low_cpu_then_recovery(
    faults_own_redis: FaultEnv, own_redis: RedisServer
) -> None:
    env = faults_own_redis
    env.cluster.env["STEPPE_REDIS__SOCKET_TIMEOUT"] = "1"  # blocked calls give up after block + 5 s
    env.start(workers=2, concurrency=4)
    runs = [env.submit(ledger_chain("paused", 4, 0.4)) for _ in range(8)]
    assert_eventually(lambda: len(env.witness("effects")) >= 4, timeout=15)
    procs = env.cluster.coordinators + env.live_workers()
    in_flight = in_flight_steps(env)
    cpu_before = {p.pid: cpu_seconds(p.pid) for p in procs}
    own_redis.pause()
    paused = time.monotonic()
    time.sleep(8)
    cpu = {p.pid: cpu_seconds(p.pid) - cpu_before[p.pid] for p in procs}
    pause_s = time.monotonic() - paused
    own_redis.resume()
    resumed = time.monotonic()
    wait_terminal(env, runs, deadline=45)
    recovery_s = time.monotonic() - resumed

    assert {env.run(r)["status"] for r in runs} == {"succeeded"}
    keys = [f"{r}/s{i}" for r in runs for i in range(4)]
    # Every pending entry looked idle when Redis came back; the workers, which saw their own
    # heartbeats stall, waited for the owners to extend their leases instead of reclaiming.
    once = check_effectively_once(env, keys, injected=0)
    assert env.log_events("worker_reclaim_deferred")
    check_applied_once(env, runs)
    check_event_logs(env, runs)
    check_nothing_stranded(env)
    check_dead_letters(env, [])
    busiest = max(cpu.values()) / pause_s
    retries = env.log_events("worker_redis_unavailable") + env.log_events("coordinator_infrastructure_error")
    report(
        "9-redis-sigstop",
        paused_s=pause_s,
        max_cpu_while_paused_pct=100 * busiest,
        cpu_s={
            ("coordinator" if p in {c.pid for c in env.cluster.coordinators} else "worker"): round(c, 3)
            for p, c in cpu.items()
        },
        retry_logs=len(retries),
        recovery_s=recovery_s,
        in_flight_at_pause=in_flight,
        duplicate_calls=once.duplicates,
    )
    assert busiest < 0.05, f"a process burned {100 * busiest:.1f}% CPU while Redis was unreachable: {cpu}"
    assert retries, "nobody noticed that Redis was unreachable"


def test_16_trimming_while_consumers_are_paused_keeps_pending_entries(faults_own_redis: FaultEnv) -> None:
    env = faults_own_redis
    env.start(workers=2, concurrency=2)
    warmup = [env.submit("name: warm\nsteps:\n  - {id: a, handler: test.ledger}\n") for _ in range(10)]
    wait_terminal(env, warmup, deadline=20)
    stream = env.keys.queue_stream("default")
    assert_eventually(lambda: env.redis.xlen(stream) == 0, timeout=10, message="acknowledged entries not trimmed")

    slow = [env.submit("name: slow\nsteps:\n  - {id: a, handler: test.ledger, with: {seconds: 2}}\n") for _ in range(4)]
    assert_eventually(lambda: len(env.witness("calls")) == 10 + 4, timeout=15)  # 2 workers x 2 slots busy
    for proc in env.live_workers():
        proc.send_signal(signal.SIGSTOP)
    paused = time.monotonic()
    queued = [env.submit("name: queued\nsteps:\n  - {id: a, handler: test.ledger}\n") for _ in range(5)]
    checks = 0
    pending_ids: set[bytes] = set()
    while time.monotonic() - paused < 2.4:  # three reconcile (trim) passes; under the visibility timeout
        pending_ids = {r["message_id"] for r in env.redis.xpending_range(stream, WORKER_GROUP, "-", "+", 100)}
        assert len(pending_ids) == 4
        for entry_id in pending_ids:
            [(_, fields)] = env.redis.xrange(stream, min=entry_id, max=entry_id)
            assert fields, f"pending entry {entry_id!r} lost its body"
        checks += 1
        time.sleep(0.1)
    length = env.redis.xlen(stream)
    assert length == 4 + 5, f"stream holds {length} entries; expected the 4 pending + 5 undelivered"
    assert min(i for i, _ in env.redis.xrange(stream, count=1)) == min(pending_ids)
    for proc in env.live_workers():
        proc.send_signal(signal.SIGCONT)

    runs = warmup + slow + queued
    wait_terminal(env, runs, deadline=30)
    assert {env.run(r)["status"] for r in runs} == {"succeeded"}
    once = check_effectively_once(env, [f"{r}/a" for r in runs], injected=0)
    check_event_logs(env, runs)
    check_nothing_stranded(env)
    check_dead_letters(env, [])
    assert_eventually(lambda: env.redis.xlen(stream) == 0, timeout=10, message="not trimmed after the drain")
    report(
        "16-trim-while-paused",
        pending_kept=len(pending_ids),
        integrity_checks=checks,
        stream_len_while_paused=length,
        duplicate_calls=once.duplicates,
    )


def test_16_deleted_pending_entry_is_dead_lettered_not_a_crash(faults_own_redis: FaultEnv) -> None:
    env = faults_own_redis
    env.start_coordinator()
    victim = env.start_worker()
    env.wait_for_workers(1)
    run_id = env.submit("""
name: deleted
steps:
  - {id: a, handler: test.witness, with: {seconds: 2}, timeout: 3s}
""")
    key = f"{run_id}/a"
    assert_eventually(lambda: env.run(run_id)["steps"].get("a", {}).get("status") == "running", timeout=15)
    stream = env.keys.queue_stream("default")
    [row] = env.redis.xpending_range(stream, WORKER_GROUP, "-", "+", 10)
    entry_id = row["message_id"]
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert env.redis.xdel(stream, entry_id) == 1  # as a trim past the pending entry would do
    killed = time.monotonic()
    survivor = env.start_worker()
    doc = wait_terminal(env, [run_id], deadline=30)[run_id]
    done_s = time.monotonic() - killed

    assert doc["status"] == "succeeded"
    assert doc["steps"]["a"]["attempts"] == 2  # the coordinator's timeout backstop retried the lost attempt
    check_dead_letters(env, [{"id": entry_id.decode(), "reason": "TrimmedEntry", "queue": "default"}])
    assert survivor.poll() is None, "the worker crashed on a deleted entry"
    env.assert_heartbeating(survivor)
    once = check_effectively_once(env, [key], injected=1)
    check_event_logs(env, [run_id])
    check_nothing_stranded(env)
    report(
        "16-deleted-pending-entry",
        dead_lettered=1,
        retried_by_timeout_backstop=True,
        all_done_s=done_s,
        duplicate_calls=once.duplicates,
    )


def test_8_loss_of_a_recent_write_alone_is_republished(faults_own_redis: FaultEnv) -> None:
    env = faults_own_redis
    env.start_coordinator()
    run_id = env.submit("name: lost-write\nsteps:\n  - {id: a, handler: test.ledger}\n", check_handlers=False)
    stream = env.keys.queue_stream("default")
    assert_eventually(lambda: env.redis.xlen(stream) == 1, timeout=15)
    [(entry_id, _)] = env.redis.xrange(stream)
    env.redis.xdel(stream, entry_id)  # what a failover to a replica that missed this XADD looks like
    env.start_worker()
    env.wait_for_workers(1)
    doc = wait_terminal(env, [run_id], deadline=15)[run_id]
    assert doc["status"] == "succeeded"
    check_nothing_stranded(env)
