"""Timing settings (docs/reliability.md 1): mixed heartbeat intervals, the shortest visibility timeout allowed.

A worker judges another's registry entry by the heartbeat interval that worker advertises, so
workers with different settings keep each other listed (and `submit` finds their handlers). A
visibility timeout that cannot work is refused at start; the shortest one allowed (3 heartbeats)
still hands a killed worker's steps over, without stealing those of live workers.
"""

from __future__ import annotations

import signal
import time

import pytest

from orchestrator import bus
from orchestrator.keys import WORKER_GROUP
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
from workers.registry import entry_ttl

pytestmark = [pytest.mark.faults, pytest.mark.integration]

SLOW_BEAT = 3.0  # worker B's heartbeat interval; worker A beats every 0.5 s (FAST_ENV)
MIXED = """
name: mixed
steps:
  - {id: a, handler: test.ledger}
  - {id: b, handler: test.downstream, queue: slow, needs: [a]}
  - {id: c, handler: test.ledger, needs: [b]}
"""


def test_workers_with_mixed_heartbeat_intervals_keep_each_other_registered(faults: FaultEnv) -> None:
    env = faults
    env.start_coordinator()
    env.start_worker()  # A: heartbeat 0.5 s, test.ledger & co.
    slow = env.start_worker(  # B: the only worker with test.downstream, alone on its queue
        queues=["slow"],
        imports=["tests.e2e.breaker_handlers"],
        STEPPE_WORKER__HEARTBEAT_INTERVAL=str(SLOW_BEAT),
        STEPPE_WORKER__VISIBILITY_TIMEOUT="10",
    )
    env.wait_for_workers(2)
    slow_id = env.consumer_of(slow)

    # Two of B's heartbeat cycles: A beats (and evicts) 12 times meanwhile.
    samples = missing = 0
    until = time.monotonic() + 2 * SLOW_BEAT + 0.5
    while time.monotonic() < until:
        samples += 1
        if "test.downstream" not in bus.live_handlers(env.redis, env.keys):
            missing += 1
        time.sleep(0.1)
    assert missing == 0, f"worker B's handler was missing from the registry in {missing}/{samples} samples"
    runs = [env.submit(MIXED) for _ in range(3)]  # submit checks that a live worker serves every handler
    wait_terminal(env, runs, deadline=30)
    assert {env.run(r)["status"] for r in runs} == {"succeeded"}

    # B dies: A evicts it once B missed 3 of *B's* heartbeats, not 3 of A's.
    last_beat = env.redis.zscore(env.keys.workers, slow_id)
    slow.send_signal(signal.SIGKILL)
    slow.wait()
    assert last_beat is not None
    assert_eventually(
        lambda: env.redis.zscore(env.keys.workers, slow_id) is None,
        timeout=entry_ttl(SLOW_BEAT) + 10,
        interval=0.05,
        message=env.log_text,
    )
    evicted_after = time.time() - last_beat
    ttl = entry_ttl(SLOW_BEAT)
    assert ttl <= evicted_after < ttl + SLOW_BEAT, f"evicted {evicted_after:.1f} s after its last heartbeat"

    keys = [f"{r}/{s}" for r in runs for s in ("a", "c")]
    once = check_effectively_once(env, keys, injected=0, exact=False)
    check_applied_once(env, runs)
    check_event_logs(env, runs)
    check_nothing_stranded(env, queues=("default", "slow"))
    check_dead_letters(env, [])
    report(
        "timing-mixed-heartbeats",
        samples=samples,
        missing_from_registry=missing,
        evicted_after_s=evicted_after,
        entry_ttl_s=ttl,
        duplicate_calls=once.duplicates,
    )


SLOW_CHAIN = """
name: slow-chain
steps:
  - {id: s1, handler: test.witness, with: {seconds: 4}}
  - {id: s2, handler: test.witness, with: {seconds: 0.2}, needs: [s1]}
"""


def held_by(env: FaultEnv, consumer: str) -> set[bytes]:
    return {
        row["message_id"]
        for stream in env.keys.queue_streams("default")
        for row in env.redis.xpending_range(stream, WORKER_GROUP, "-", "+", 100, consumername=consumer)
    }


def test_a_visibility_timeout_under_three_heartbeats_is_refused_and_the_shortest_allowed_hands_over(
    faults: FaultEnv,
) -> None:
    env = faults
    # 2 s under the default 5 s heartbeat: before, such a worker deferred every reclaim forever.
    refused = env.start_worker(STEPPE_WORKER__VISIBILITY_TIMEOUT="2", STEPPE_WORKER__HEARTBEAT_INTERVAL="5")
    assert refused.wait(timeout=30) == 2, env.log_text()
    env.cluster.workers.remove(refused)
    assert "STEPPE_WORKER__VISIBILITY_TIMEOUT (2 s) is shorter than 3 x STEPPE_WORKER__HEARTBEAT_INTERVAL" in (
        env.log_text()
    )

    # The shortest allowed: 3 heartbeats of 0.5 s. Steps run 4 s, well past it: live workers must
    # keep their leases, and the killed worker's steps must be taken over.
    visibility, heartbeat = 1.5, float(env.env["STEPPE_WORKER__HEARTBEAT_INTERVAL"])
    env.cluster.env["STEPPE_WORKER__VISIBILITY_TIMEOUT"] = str(visibility)
    env.start(workers=2, concurrency=4)  # the survivor has a free slot for each of the victim's steps
    victim, survivor = env.live_workers()
    victim_id = env.consumer_of(victim)
    runs = [env.submit(SLOW_CHAIN) for _ in range(4)]
    held = assert_eventually(lambda: held_by(env, victim_id), timeout=15, message="the victim never got a step")
    time.sleep(0.7)  # past STARTED_AFTER: its attempts are recorded as running
    held = held_by(env, victim_id)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed = time.monotonic()
    assert_eventually(lambda: not held_by(env, victim_id), timeout=20, interval=0.05, message=env.log_text)
    taken_over_s = time.monotonic() - killed
    wait_terminal(env, runs, deadline=60)

    assert survivor.poll() is None
    assert {env.run(r)["status"] for r in runs} == {"succeeded"}
    assert taken_over_s < visibility + 2 * heartbeat + 1, taken_over_s
    # The survivor's own 4 s steps were never taken from it: the only repeats are the victim's.
    keys = [f"{r}/{s}" for r in runs for s in ("s1", "s2")]
    once = check_effectively_once(env, keys, injected=len(held), per_key=1)
    check_applied_once(env, runs)
    check_event_logs(env, runs)
    check_nothing_stranded(env)
    check_dead_letters(env, [])
    deferrals = len(env.log_events("worker_reclaim_deferred"))
    assert deferrals == 0, f"{deferrals} reclaim deferrals without any outage"
    report(
        "timing-short-visibility",
        visibility_timeout_s=visibility,
        heartbeat_s=heartbeat,
        in_flight_killed=len(held),
        taken_over_s=taken_over_s,
        duplicate_calls=once.duplicates,
    )
