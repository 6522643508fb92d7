"""Worker faults (docs/reliability.md 1-4, 11, 13): kill, drain, zombie, duplicate delivery, hung handlers."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time

import pytest
import redis
from structlog.testing import capture_logs

from orchestrator.keys import WORKER_GROUP, Keys
from orchestrator.settings import Settings
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
from workers.builtins import register_builtins
from workers.consumer import Worker
from workers.registry import HandlerRegistry

pytestmark = [pytest.mark.faults, pytest.mark.integration]

TWO_STEPS = """
name: two-steps
steps:
  - {id: s1, handler: test.witness, with: {seconds: 1.5}}
  - {id: s2, handler: test.witness, with: {seconds: 0.3}, needs: [s1]}
"""


def pending_of(env: FaultEnv, consumer: str, queue: str = "default") -> dict[bytes, str]:
    """Entry id → idempotency key of the entries `consumer` holds unacknowledged."""
    held: dict[bytes, str] = {}
    for stream in env.keys.queue_streams(queue):
        for row in env.redis.xpending_range(stream, WORKER_GROUP, "-", "+", 100, consumername=consumer):
            entries = env.redis.xrange(stream, min=row["message_id"], max=row["message_id"])
            if entries and entries[0][1]:
                held[row["message_id"]] = decode_step(entries[0][1][FIELD]).idempotency_key
    return held


def owners(env: FaultEnv, entry_ids: set[bytes], queue: str = "default") -> dict[bytes, str]:
    """Current consumer of each still-pending entry among `entry_ids`."""
    found: dict[bytes, str] = {}
    for stream in env.keys.queue_streams(queue):
        for row in env.redis.xpending_range(stream, WORKER_GROUP, "-", "+", 1000):
            if row["message_id"] in entry_ids:
                found[row["message_id"]] = row["consumer"].decode()
    return found


def test_1_worker_sigkill_mid_step_is_reclaimed_after_the_visibility_timeout(faults: FaultEnv) -> None:
    faults.start(workers=2)
    victim = faults.cluster.workers[0]
    victim_id = faults.consumer_of(victim)
    runs = [faults.submit(TWO_STEPS) for _ in range(6)]
    held = assert_eventually(lambda: pending_of(faults, victim_id), timeout=15, message="victim never got a step")
    time.sleep(0.7)  # past STARTED_AFTER: the attempt is recorded as running
    held = pending_of(faults, victim_id)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed = time.monotonic()
    faults.start_worker()

    def reclaimed() -> bool:
        return all(owner != victim_id for owner in owners(faults, set(held)).values())

    assert_eventually(reclaimed, timeout=20, interval=0.05, message="the victim's entries were never reclaimed")
    reclaim_s = time.monotonic() - killed
    wait_terminal(faults, runs, deadline=40)
    recovery_s = time.monotonic() - killed

    assert {faults.run(r)["status"] for r in runs} == {"succeeded"}
    keys = [f"{r}/{s}" for r in runs for s in ("s1", "s2")]
    once = check_effectively_once(faults, keys, injected=len(held), per_key=1)
    check_applied_once(faults, runs)
    check_event_logs(faults, runs)
    check_nothing_stranded(faults)
    check_dead_letters(faults, [])
    visibility = float(faults.env["STEPPE_WORKER__VISIBILITY_TIMEOUT"])
    heartbeat = float(faults.env["STEPPE_WORKER__HEARTBEAT_INTERVAL"])
    # Idle time counts from the victim's last lease extension (one heartbeat at most before the kill)
    # and a survivor looks for idle entries once per heartbeat.
    assert visibility - heartbeat - 0.2 <= reclaim_s < visibility + 2 * heartbeat + 1, reclaim_s
    report(
        "1-worker-sigkill",
        in_flight_killed=len(held),
        reclaim_s=reclaim_s,
        all_runs_done_s=recovery_s,
        duplicate_calls=once.duplicates,
        duplicate_logs=once.duplicate_logs,
        visibility_timeout_s=visibility,
    )


def test_2_sigterm_drains_in_flight_steps_acks_and_exits_0(faults: FaultEnv) -> None:
    faults.start_coordinator()
    worker = faults.start_worker(concurrency=4)
    faults.wait_for_workers(1)
    runs = [faults.submit(TWO_STEPS) for _ in range(3)]
    assert_eventually(lambda: len(faults.witness("calls")) == 3, timeout=15)
    worker_id = faults.consumer_of(worker)
    in_flight = len(pending_of(faults, worker_id))
    worker.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    assert worker.wait(timeout=20) == 0
    drain_s = time.monotonic() - signalled
    assert pending_of(faults, worker_id) == {}, "the drained worker left entries pending"
    faults.start_worker()
    wait_terminal(faults, runs, deadline=30)

    keys = [f"{r}/{s}" for r in runs for s in ("s1", "s2")]
    once = check_effectively_once(faults, keys, injected=0)
    assert not faults.log_events("step_reclaimed")
    check_event_logs(faults, runs)
    check_nothing_stranded(faults)
    check_dead_letters(faults, [])
    stopped = faults.log_events("worker_stopped")[0]
    assert stopped["drained"] is True
    assert stopped["abandoned"] == 0
    report("2-worker-sigterm-drain", in_flight=in_flight, drain_s=drain_s, duplicate_calls=once.duplicates)


def test_3_sigterm_past_the_drain_timeout_is_recovered_like_a_kill(faults: FaultEnv) -> None:
    faults.start_coordinator()
    worker = faults.start_worker(STEPPE_WORKER__DRAIN_TIMEOUT="1")
    faults.wait_for_workers(1)
    # The step is held in flight by a flag, not by a timer: starting the survivor can take longer
    # than any fixed step duration on a loaded machine, and the step must still be running at SIGTERM.
    run_id = faults.submit("name: long\nsteps:\n  - {id: slow, handler: test.ledger, with: {hold: release-slow}}\n")
    key = f"{run_id}/slow"
    assert_eventually(lambda: faults.witness("calls").get(key) == 1, timeout=15)
    faults.start_worker()  # the survivor that reclaims
    faults.wait_for_workers(2)
    worker.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    assert worker.wait(timeout=15) == 0
    exit_s = time.monotonic() - signalled
    faults.set_flag("release-slow", True)  # the reclaimed attempt may now finish
    wait_terminal(faults, [run_id], deadline=30)
    recovery_s = time.monotonic() - signalled

    assert faults.run(run_id)["status"] == "succeeded"
    once = check_effectively_once(faults, [key], injected=1)
    assert once.duplicates == 1  # the abandoned attempt was cancelled before its effect
    stopped = faults.log_events("worker_stopped")[0]
    assert stopped["drained"] is False
    assert stopped["abandoned"] == 1
    check_event_logs(faults, [run_id])
    check_nothing_stranded(faults)
    check_dead_letters(faults, [])
    assert exit_s < 1 + 3, exit_s
    report("3-sigterm-past-grace", drain_timeout_s=1, exit_s=exit_s, recovery_s=recovery_s, duplicate_calls=1)


def test_4_zombie_worker_late_result_is_fenced(faults: FaultEnv) -> None:
    faults.start_coordinator()
    zombie = faults.start_worker()
    faults.wait_for_workers(1)
    run_id = faults.submit("name: zombie\nsteps:\n  - {id: pay, handler: test.ledger, with: {seconds: 2}}\n")
    key = f"{run_id}/pay"
    assert_eventually(lambda: faults.run(run_id)["steps"].get("pay", {}).get("status") == "running", timeout=15)
    zombie_id = faults.consumer_of(zombie)
    zombie.send_signal(signal.SIGSTOP)
    stopped = time.monotonic()
    rescuer = faults.start_worker()
    assert_eventually(lambda: faults.witness("calls").get(key) == 2, timeout=20, message="nobody reclaimed")
    reclaim_s = time.monotonic() - stopped
    doc = wait_terminal(faults, [run_id], deadline=20)[run_id]
    assert doc["status"] == "succeeded"
    assert doc["steps"]["pay"]["output"]["pid"] == rescuer.pid
    zombie.send_signal(signal.SIGCONT)
    assert_eventually(lambda: faults.witness("completions").get(key) == 2, timeout=10, message="zombie never woke")

    def fenced() -> list[dict]:
        return [
            e
            for e in faults.log_events("result_duplicate_ignored")
            if e["step"] == "pay" and e["status"] == "succeeded" and e["worker"] == zombie_id
        ]

    assert_eventually(fenced, timeout=10, message="the zombie's late result was not fenced")
    once = check_effectively_once(faults, [key], injected=1)
    assert once.duplicates == 1
    check_applied_once(faults, [run_id])
    events = [e["type"] for e in faults.queries.events(run_id)]
    assert events.count("step.succeeded") == 1
    check_event_logs(faults, [run_id])
    check_nothing_stranded(faults)
    check_dead_letters(faults, [])
    assert zombie.poll() is None, "the zombie should carry on as a normal worker"
    report(
        "4-zombie-worker",
        stopped_s=round(time.monotonic() - stopped, 2),
        reclaim_s=reclaim_s,
        results_applied=events.count("step.succeeded"),
        late_results_fenced=len(fenced()),
        effects=faults.witness("effects")[key],
        executions=faults.witness("completions")[key],
    )


def _force_second_delivery(faults: FaultEnv, entry_id: bytes, stream: str, key: str) -> float:
    """Hand `entry_id` to a ghost consumer as if it had been idle for a minute, until a worker reclaims it."""
    started = time.monotonic()
    while faults.witness("calls").get(key, 0) < 2:
        faults.redis.xclaim(stream, WORKER_GROUP, "ghost", 0, [entry_id], idle=60_000, retrycount=1, justid=True)
        time.sleep(0.05)
        assert time.monotonic() - started < 10, "no worker picked up the forced claim"
    return time.monotonic() - started


def test_11_duplicate_delivery_has_one_effect(faults: FaultEnv) -> None:
    faults.start_coordinator()
    # Busy with one step, held in flight until the forced second delivery has been picked up.
    busy = faults.start_worker(concurrency=1)
    faults.wait_for_workers(1)
    run_id = faults.submit("""
name: dup
steps:
  - {id: claimed, handler: test.ledger, with: {hold: release-claimed}}
  - {id: copied, handler: test.ledger, with: {seconds: 1.5}, needs: [claimed]}
""")
    stream = faults.keys.queue_stream("default")
    claimed_key, copied_key = f"{run_id}/claimed", f"{run_id}/copied"
    assert_eventually(lambda: faults.witness("calls").get(claimed_key) == 1, timeout=15)
    [(entry_id, _)] = pending_of(faults, faults.consumer_of(busy)).items()
    other = faults.start_worker(concurrency=4)
    faults.wait_for_workers(2)
    # 1. forced claim of the pending entry to a second consumer, which executes it again
    claim_s = _force_second_delivery(faults, entry_id, stream, claimed_key)
    faults.set_flag("release-claimed", True)
    # 2. the same message published twice (a producer retry that had in fact succeeded)
    assert_eventually(lambda: faults.witness("calls").get(copied_key) == 1, timeout=15)
    original = next(
        fields for _, fields in faults.redis.xrange(stream) if decode_step(fields[FIELD]).idempotency_key == copied_key
    )
    faults.redis.xadd(stream, {FIELD: original[FIELD]})
    wait_terminal(faults, [run_id], deadline=30)
    assert_eventually(
        lambda: all(faults.witness("completions").get(k) == 2 for k in (claimed_key, copied_key)), timeout=10
    )

    assert faults.run(run_id)["status"] == "succeeded"
    once = check_effectively_once(faults, [claimed_key, copied_key], injected=2, per_key=1)
    assert once.duplicates == 2
    check_applied_once(faults, [run_id])

    def fenced() -> list[dict]:
        return [
            e
            for e in faults.log_events("result_duplicate_ignored")
            if e["run_id"] == run_id and e["status"] == "succeeded"
        ]

    assert_eventually(lambda: len(fenced()) == 2, timeout=10, message="both second results should be fenced")
    check_event_logs(faults, [run_id])
    check_nothing_stranded(faults)
    check_dead_letters(faults, [])
    assert other.poll() is None
    assert busy.poll() is None
    report(
        "11-duplicate-delivery",
        injected=2,
        executions=sum(faults.witness("completions").values()),
        effects=sum(faults.witness("effects").values()),
        fenced_results=len(fenced()),
        forced_claim_picked_up_s=claim_s,
    )


def test_13_hung_handlers_time_out_are_retried_and_free_their_slot(faults: FaultEnv) -> None:
    faults.start_coordinator()
    worker = faults.start_worker(concurrency=1, STEPPE_WORKER__DRAIN_TIMEOUT="2")
    faults.wait_for_workers(1)
    hung = faults.submit("""
name: hung
steps:
  - id: cooperative
    handler: builtin.sleep
    with: {seconds: 30}
    timeout: 1s
    retry: {max_attempts: 2, initial_delay: 100ms, backoff: fixed, jitter: false}
  - id: stubborn
    handler: test.hang
    with: {seconds: 25}
    timeout: 1s
    retry: {max_attempts: 2, initial_delay: 100ms, backoff: fixed, jitter: false}
""")
    started = time.monotonic()
    doc = wait_terminal(faults, [hung], deadline=20)[hung]
    hung_s = time.monotonic() - started
    assert doc["status"] == "failed"
    for step in ("cooperative", "stubborn"):
        assert doc["steps"][step]["attempts"] == 2, doc["steps"][step]
        assert doc["steps"][step]["error"]["type"] == "StepTimeoutError"
    # The one slot is free again although the stubborn handler's thread still sleeps.
    quick = faults.submit("name: quick\nsteps:\n  - {id: q, handler: test.witness}\n")
    quick_started = time.monotonic()
    assert wait_terminal(faults, [quick], deadline=10)[quick]["status"] == "succeeded"
    quick_s = time.monotonic() - quick_started

    check_effectively_once(faults, [f"{quick}/q"], injected=0)
    check_event_logs(faults, [hung, quick])
    check_nothing_stranded(faults)
    check_dead_letters(faults, [])
    # SIGTERM while a thread that ignores cancellation still runs: the drain bound holds for the exit.
    worker.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    try:
        code = worker.wait(timeout=15)
    except subprocess.TimeoutExpired:
        code = None
    exit_s = time.monotonic() - signalled
    report("13-hung-handler", four_timeouts_s=hung_s, next_step_after_hang_s=quick_s, sigterm_exit_s=exit_s)
    assert code == 0
    assert exit_s < 2 + 2, "the worker waited for a handler thread that ignores cancellation"
    assert faults.log_events("worker_abandoned_handler_threads")


async def _stop_while_a_loop_swallows_its_cancel(settings: Settings) -> tuple[int, int, float]:
    """Run a worker whose liveness loop ignores its first cancel; stop it: (exit code, cancels, seconds)."""
    registry = HandlerRegistry()
    register_builtins(registry)
    worker = Worker(settings=settings, registry=registry, queues=["default"], concurrency=2)
    cancels = 0
    looping = asyncio.Event()  # the worker has registered and started its loops

    async def liveness() -> None:
        nonlocal cancels
        looping.set()
        while True:
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                cancels += 1
                if cancels > 1:
                    raise
                # Swallowed, as Python 3.11's asyncio.wait_for does when redis-py's socket write
                # that it wraps completed just before the cancel (CPython gh-86296).

    worker._liveness_loop = liveness  # type: ignore[method-assign]
    running = asyncio.create_task(worker.run(install_signals=False))
    async with asyncio.timeout(20):
        await looping.wait()
    worker.request_stop()
    stopped = time.monotonic()
    async with asyncio.timeout(20):  # the bug: without a second cancel, the drain waited forever
        code = await running
    return code, cancels, time.monotonic() - stopped


def test_sigterm_exits_although_a_worker_loop_swallowed_its_cancel(redis_url: str, namespace: str) -> None:
    """CI once saw a victim worker outlive SIGTERM by 45 s: its drain cancelled the liveness loop
    once and gathered it, and the cancel had been swallowed inside redis-py (see above)."""
    settings = Settings(
        _env_file=None,
        redis_url=redis_url,
        namespace=namespace,
        worker={"heartbeat_interval": 0.5, "drain_timeout": 2},
    )
    with capture_logs() as logs:
        code, cancels, stop_s = asyncio.run(_stop_while_a_loop_swallows_its_cancel(settings))
    assert code == 0
    assert cancels == 2, "the drain should cancel the loop again"
    assert stop_s < 2, stop_s
    assert [e for e in logs if e["event"] == "worker_stopped"]
    assert not [e for e in logs if e["event"] == "worker_task_ignored_cancel"]
    assert redis.Redis.from_url(redis_url).zrange(Keys(namespace).workers, 0, -1) == [], "not deregistered"
