"""Soak (docs/reliability.md 20): hundreds of runs under random faults from scenarios 1, 4, 7 and 9; I1-I5 hold.

Run with `make soak` (or `pytest tests/faults/test_soak.py -m soak -s`); `STEPPE_SOAK_SECONDS`
sets how long faults are injected (default 150 s), `STEPPE_SOAK_SEED` replays a fault sequence.
"""

from __future__ import annotations

import os
import random
import signal
import statistics
import threading
import time
from collections import Counter

import pytest

from orchestrator.dev import RedisServer
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

pytestmark = [pytest.mark.soak, pytest.mark.faults, pytest.mark.integration, pytest.mark.timeout(900)]

SOAK_SECONDS = float(os.environ.get("STEPPE_SOAK_SECONDS", "150"))
STEPS = 3


def flow(seed: int) -> str:
    rng = random.Random(seed)
    steps = "\n".join(
        f"  - {{id: s{i}, handler: test.ledger, with: {{seconds: {rng.choice((0.0, 0.05, 0.2, 0.5, 1.0))}}}"
        + (f", needs: [s{i - 1}]" if i else "")
        + "}"
        for i in range(STEPS)
    )
    return f"name: soak\nsteps:\n{steps}\n"


def in_flight(env: FaultEnv) -> int:
    with env.store.connection() as conn:
        row = conn.execute(
            "SELECT count(*) AS n FROM workflow_steps WHERE status IN ('dispatched', 'running', 'retry_scheduled')"
        ).fetchone()
    return int(row["n"]) if row else 0


class Injector:
    """One random fault every few seconds; remembers what it did and how many steps were exposed."""

    def __init__(self, env: FaultEnv, redis_server: RedisServer, rng: random.Random) -> None:
        self.env = env
        self.redis_server = redis_server
        self.rng = rng
        self.faults: Counter[str] = Counter()
        self.exposed = 0  # steps in flight when a fault hit (each may run once more)
        self._timers: list[threading.Timer] = []

    def inject(self) -> None:
        kind = self.rng.choice(("1-worker-sigkill", "4-zombie", "7-redis-sigkill-aof", "9-redis-sigstop"))
        workers = self.env.live_workers()
        self.exposed += in_flight(self.env)
        if kind == "1-worker-sigkill" and workers:
            self.rng.choice(workers).send_signal(signal.SIGKILL)  # the supervisor starts a replacement
        elif kind == "4-zombie" and workers:
            zombie = self.rng.choice(workers)
            zombie.send_signal(signal.SIGSTOP)
            pause = float(self.env.env["STEPPE_WORKER__VISIBILITY_TIMEOUT"]) + self.rng.uniform(0.5, 3)
            self._later(pause, lambda: zombie.poll() is None and zombie.send_signal(signal.SIGCONT))
        elif kind == "7-redis-sigkill-aof":
            self.redis_server.kill()
            time.sleep(self.rng.uniform(0.2, 1.5))
            self.redis_server.restart()
        elif kind == "9-redis-sigstop":
            self.redis_server.pause()
            time.sleep(self.rng.uniform(1, 6))
            self.redis_server.resume()
        self.faults[kind] += 1

    def _later(self, delay: float, action: object) -> None:
        timer = threading.Timer(delay, action)  # type: ignore[arg-type]
        timer.daemon = True
        timer.start()
        self._timers.append(timer)

    def settle(self) -> None:
        for timer in self._timers:
            timer.join(timeout=15)
        self.redis_server.resume()
        for proc in self.env.live_workers():
            proc.send_signal(signal.SIGCONT)


def test_20_soak_hundreds_of_runs_under_random_faults(faults_own_redis: FaultEnv, own_redis: RedisServer) -> None:
    env = faults_own_redis
    seed = int(os.environ.get("STEPPE_SOAK_SEED", str(random.randrange(1_000_000))))
    rng = random.Random(seed)
    env.start(workers=3, concurrency=8)
    supervisor = env.supervise(concurrency=8)
    injector = Injector(env, own_redis, rng)
    runs: list[str] = []
    started = time.monotonic()
    next_fault = started + rng.uniform(5, 10)
    try:
        while time.monotonic() - started < SOAK_SECONDS:
            for _ in range(rng.randint(1, 4)):
                try:
                    runs.append(env.submit(flow(rng.randrange(1 << 30))))
                except Exception:  # Redis may be down for a moment: submit again on the next round
                    break
            if time.monotonic() >= next_fault:
                injector.inject()
                next_fault = time.monotonic() + rng.uniform(6, 12)
            time.sleep(rng.uniform(0.2, 0.8))
    finally:
        injector.settle()
    injected_s = time.monotonic() - started
    docs = wait_terminal(env, runs, deadline=120)
    drained_s = time.monotonic() - started - injected_s
    supervisor.stop()

    assert {d["status"] for d in docs.values()} == {"succeeded"}, Counter(d["status"] for d in docs.values())
    keys = [f"{r}/s{i}" for r in runs for i in range(STEPS)]
    once = check_effectively_once(env, keys, injected=injector.exposed)
    check_applied_once(env, runs)
    check_event_logs(env, runs)
    check_nothing_stranded(env, timeout=30)
    check_dead_letters(env, [])
    with env.store.connection() as conn:
        rows = conn.execute(
            "SELECT extract(epoch FROM finished_at - created_at) AS s FROM workflow_runs WHERE run_id = ANY(%s)",
            (runs,),
        ).fetchall()
    latencies = sorted(float(r["s"]) for r in rows)
    report(
        "20-soak",
        seed=seed,
        runs=len(runs),
        steps=len(keys),
        injecting_s=injected_s,
        drain_after_s=drained_s,
        faults=dict(injector.faults),
        worker_restarts=len(supervisor.exits),
        exposed_steps=injector.exposed,
        duplicate_calls=once.duplicates,
        fenced_results=once.duplicate_logs,
        latency_p50_s=statistics.median(latencies),
        latency_p95_s=latencies[int(0.95 * (len(latencies) - 1))],
        latency_max_s=latencies[-1],
    )
