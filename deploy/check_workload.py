"""The live cluster and workload behind deploy/check_dashboards.py.

A coordinator and two workers (with --metrics-port) run as the least-privilege Redis and
PostgreSQL users; a third, unscraped "victim" worker serves the `chaos` queue. The workload uses
builtin handlers only and is chosen so that every series of orchestrator/metrics.py appears:
successes, retries, a permanent failure, a saga that compensates, an opening circuit breaker,
hooks, a deployed workflow scheduled every second (ticks started and skipped by overlap), a run
that waits (a signal, delivered; an approval and a sleep that outlast the check), and a step
whose worker stalls (SIGSTOP): its message is reclaimed by another worker and
dead-lettered (max_deliveries=1), and the stalled worker's late result, once resumed, is
suppressed as a duplicate.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis

from orchestrator.dev.cluster import LocalCluster, steppe_argv
from orchestrator.keys import WORKER_GROUP, Keys
from orchestrator.settings import Settings

NAMESPACE = "steppe"  # the key patterns of deploy/redis/users.acl are written for it
TERMINAL = {"succeeded", "failed", "cancelled", "compensated", "compensation_failed"}
FAST = {
    "STEPPE_NAMESPACE": NAMESPACE,
    "STEPPE_WORKER__VISIBILITY_TIMEOUT": "2",
    "STEPPE_WORKER__HEARTBEAT_INTERVAL": "0.5",
    "STEPPE_WORKER__MAX_DELIVERIES": "1",
    "STEPPE_WORKER__DRAIN_TIMEOUT": "5",
    "STEPPE_COORDINATOR__RECONCILE_INTERVAL": "1",
    "STEPPE_COORDINATOR__LEASE_TTL": "3",
    "STEPPE_COORDINATOR__TIMEOUT_GRACE": "2",
    "STEPPE_REDIS__BLOCK_MS": "200",
}

WORKFLOWS = {
    "check-ok": """
name: check-ok
steps:
  - {id: hello, handler: builtin.echo, with: {greeting: hi}}
  - {id: nothing, handler: builtin.noop, needs: [hello]}
  - {id: nap, handler: builtin.sleep, needs: [hello], with: {seconds: 0.3}}
hooks:
  - {on: ["run.*"], handler: builtin.echo, with: {note: finished}}
""",
    "check-retry": """
name: check-retry
steps:
  - id: flaky
    handler: builtin.fail
    with: {times: 2, message: transient}
    retry: {max_attempts: 3, initial_delay: 100ms, backoff: fixed, jitter: false}
""",
    "check-fail": """
name: check-fail
steps:
  - {id: broken, handler: builtin.fail, with: {message: permanent, retryable: false}}
""",
    "check-saga": """
name: check-saga
on_failure: compensate
steps:
  - id: reserve
    handler: builtin.echo
    with: {item: widget}
    compensate: {handler: builtin.echo, with: {released: widget}}
  - {id: charge, handler: builtin.fail, needs: [reserve], with: {message: card declined, retryable: false}}
hooks:
  - {on: [step.failed], handler: builtin.echo, with: {note: a step failed}}
""",
    "check-breaker": """
name: check-breaker
breakers:
  check-api: {fail_max: 2, reset_timeout: 1s}
steps:
  - id: call
    handler: builtin.fail
    circuit_breaker: check-api
    with: {message: upstream down}
    retry: {max_attempts: 4, initial_delay: 100ms, backoff: fixed, jitter: false}
""",
    "check-chaos": """
name: check-chaos
steps:
  - {id: long, handler: builtin.sleep, queue: chaos, timeout: 60s, with: {seconds: 3}}
""",
    # Two items through one slot, each longer than the check: while the dashboards are evaluated one
    # holds the slot and one is throttled, so the flow-control series exist (they live while a key is used).
    "check-limited": """
name: check-limited
steps:
  - id: call
    handler: builtin.sleep
    for_each: [1, 2]
    concurrency: {key: check-api, limit: 1}
    timeout: 10m
    with: {seconds: 300}
""",
    # Durable waits: `paid` gets its signal from `signal_a_wait` (signal latency, signals consumed);
    # `review` and `nap` wait for longer than the check (waiting steps by kind).
    "check-waits": """
name: check-waits
steps:
  - {id: paid, wait: {signal: check-paid, timeout: 1h}}
  - {id: review, needs: [paid], approval: {timeout: 1h}}
  - {id: nap, sleep: 1h}
""",
}
# Deployed and scheduled every second; a run outlasts a tick, so --overlap skip skips some.
TICKER = """
name: check-tick
steps:
  - {id: nap, handler: builtin.sleep, with: {seconds: 1.5}}
"""
SUBMITS = ["check-ok", "check-ok", "check-ok", "check-retry", "check-fail", "check-saga", "check-breaker"]


class Workload:
    """Starts the cluster, runs the workload, reports what happened; `stop()` ends every process."""

    def __init__(
        self,
        *,
        workdir: Path,
        redis_port: int,
        passwords: dict[str, str],
        database_url: str,
        env: dict[str, str],
        admin: redis.Redis,
        metrics_ports: dict[str, int],
        deadline: Callable[[float | None], float],
    ) -> None:
        self.workdir = workdir
        self.admin = admin
        self.ports = metrics_ports
        self.left = deadline
        self.database_url = database_url
        self.keys = Keys(NAMESPACE)
        common = {**env, **FAST, "STEPPE_DATABASE_URL": database_url, "STEPPE_HOME": str(workdir / "home")}

        def url(user: str) -> str:
            return f"redis://{user}:{passwords[user]}@127.0.0.1:{redis_port}/0"

        self.coordinator_env = {**common, "STEPPE_REDIS_URL": url("steppe-coordinator")}
        worker_env = {**common, "STEPPE_REDIS_URL": url("steppe-worker")}
        settings = Settings(
            _env_file=None,
            redis_url=url("steppe-worker"),
            database_url=database_url,
            namespace=NAMESPACE,
            home=workdir / "home",
        )
        log = workdir / "cluster.log"
        self.coordinators = LocalCluster(settings, log_path=log, env=self.coordinator_env)
        self.workers = LocalCluster(settings, log_path=log, env=worker_env)
        self.victim: subprocess.Popen[bytes] | None = None

    def stop(self) -> None:
        if self.victim is not None and self.victim.poll() is None:
            os.kill(self.victim.pid, signal.SIGCONT)
        self.workers.stop(timeout=15)
        self.coordinators.stop(timeout=15)

    # -- steps -------------------------------------------------------------------------------------

    def run(self) -> list[str]:
        self.coordinators.start_coordinator("--metrics-port", str(self.ports["coordinator"]))
        self.workers.start_worker(queues=["default", "hooks"], extra=["--metrics-port", str(self.ports["w1"])])
        self.victim = self.workers.start_worker(queues=["chaos"])
        self.workers.wait_for_workers(self.admin, 2, timeout=self.left(40))
        self.assert_alive()
        runs = self.submit(SUBMITS)
        notes = self.schedule_ticks()
        notes += self.hold_a_limit()
        notes += self.signal_a_wait()
        notes += self.stall_and_reclaim(runs)
        statuses = self.wait_terminal(runs, timeout=self.left(60))
        self.assert_alive()
        for workflow in sorted({w for _, w in runs}):
            seen = sorted(statuses.get(run_id, "?") for run_id, w in runs if w == workflow)
            notes.append(f"{workflow}: {', '.join(seen)}")
        return notes

    def assert_alive(self) -> None:
        procs = [("coordinator", p) for p in self.coordinators.coordinators]
        procs += [("worker", p) for p in self.workers.workers if p is not self.victim]
        for what, proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"the {what} (pid {proc.pid}) exited with code {proc.returncode}")

    def submit(self, names: list[str]) -> list[tuple[str, str]]:
        """Submit workflows through the CLI (concurrently); [(run_id, workflow)]."""
        procs = []
        for i, name in enumerate(names):
            path = self.workdir / f"{name}.yaml"
            path.write_text(WORKFLOWS[name])
            procs.append(
                (
                    name,
                    subprocess.Popen(
                        [*steppe_argv(), "submit", str(path), "--json"],
                        env=self.coordinator_env,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                        cwd=self.workdir,
                        text=True,
                    ),
                )
            )
            if i % 4 == 3:
                procs[-1][1].wait()
        runs = []
        for name, proc in procs:
            out, err = proc.communicate(timeout=self.left(60))
            if proc.returncode != 0:
                raise RuntimeError(f"`steppe submit` of {name} failed ({proc.returncode}): {err.strip()[-800:]}")
            runs.append((json.loads(out.strip().splitlines()[-1])["run_id"], name))
        return runs

    def schedule_ticks(self) -> list[str]:
        """Deploy check-tick and schedule it every second (it keeps ticking): runs start (schedule lag,
        next fire times) and ticks are skipped while the previous run still sleeps."""
        path = self.workdir / "check-tick.yaml"
        path.write_text(TICKER)
        for args in (
            ["workflows", "deploy", str(path)],
            ["schedules", "add", "check-tick", "--workflow", "check-tick", "--every", "1s"],
        ):
            self._steppe(args)
        try:
            _wait(lambda: "steppe_schedule_ticks_skipped_total{" in self._coordinator_metrics(), self.left(20))
        except TimeoutError:
            return ["the check-tick schedule skipped no tick while its previous run slept"]
        return []

    def hold_a_limit(self) -> list[str]:
        """A run whose two items share one slot for longer than the check (never waited for): the
        slot in use, its capacity and the throttled waiter are exported while the queries run."""
        self.submit(["check-limited"])
        try:
            _wait(lambda: "steppe_steps_throttled{" in self._coordinator_metrics(), self.left(30))
        except TimeoutError:
            return ["check-limited: no step was throttled behind the check-api slot"]
        return []

    def _steppe(self, args: list[str]) -> None:
        """Run one `steppe` command against the cluster; a failure stops the check with its stderr."""
        done = subprocess.run(
            [*steppe_argv(), *args],
            env=self.coordinator_env,
            capture_output=True,
            text=True,
            cwd=self.workdir,
            timeout=self.left(60),
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"`steppe {' '.join(args[:2])}` failed ({done.returncode}): {done.stderr[-800:]}")

    def signal_a_wait(self) -> list[str]:
        """A run that waits (never waited for): once its first step waits, `steppe signal` ends that
        wait, so the latency histogram has an observation; its next steps keep waiting."""
        [(run_id, _)] = self.submit(["check-waits"])

        def waiting(step: str) -> bool:
            with psycopg.connect(self.database_url) as conn:
                row = conn.execute(
                    "SELECT status FROM workflow_steps WHERE run_id = %s AND step_key = %s", (run_id, step)
                ).fetchone()
            return row is not None and row[0] == "waiting"

        try:
            _wait(lambda: waiting("paid"), self.left(30))
        except TimeoutError:
            return ["check-waits: step paid never waited for its signal"]
        self._steppe(["signal", run_id, "check-paid", "--data", '{"amount": 1}'])
        try:
            _wait(lambda: "steppe_signal_latency_seconds_count{" in self._coordinator_metrics(), self.left(30))
            _wait(lambda: waiting("review"), self.left(30))
        except TimeoutError:
            return ["check-waits: the check-paid signal was not applied to step paid"]
        return []

    def stall_and_reclaim(self, runs: list[tuple[str, str]]) -> list[str]:
        """SIGSTOP the victim mid-step; another worker reclaims and dead-letters; SIGCONT: a duplicate."""
        assert self.victim is not None
        chaos = self.submit(["check-chaos"])
        runs += chaos
        stream = self.keys.queue_stream("chaos")
        try:
            _wait(lambda: self.admin.xpending(stream, WORKER_GROUP)["pending"] >= 1, self.left(30))
        except TimeoutError:
            return ["the victim worker never received the chaos step: no reclaim, dead letter or duplicate"]
        os.kill(self.victim.pid, signal.SIGSTOP)
        self.workers.start_worker(queues=["default", "chaos", "hooks"], extra=["--metrics-port", str(self.ports["w2"])])
        notes = []
        if self.wait_terminal(chaos, timeout=self.left(30)).get(chaos[0][0]) not in TERMINAL:
            notes.append("the stalled chaos step was not reclaimed and dead-lettered in time")
        os.kill(self.victim.pid, signal.SIGCONT)
        try:
            _wait(lambda: "steppe_duplicates_suppressed_total{" in self._coordinator_metrics(), self.left(15))
        except TimeoutError:
            notes.append("the resumed victim's late result was not counted as a duplicate")
        self.stop_victim(timeout=self.left(45))  # it drains its (fenced) step first: up to drain_timeout
        return notes

    def stop_victim(self, *, timeout: float) -> None:
        """SIGTERM the victim; one that outlives `timeout` is dumped (py-spy), killed, and reported."""
        assert self.victim is not None
        self.victim.send_signal(signal.SIGTERM)
        try:
            self.victim.wait(timeout=timeout)
            return
        except subprocess.TimeoutExpired:
            pass
        pid = self.victim.pid
        dump = _py_spy_dump(pid)
        self.victim.kill()
        self.victim.wait()
        lines = _log_lines_of(self.workers.log_path, pid)
        raise RuntimeError(
            f"the victim worker (pid {pid}) did not exit within {timeout:.0f}s of SIGTERM (drain_timeout "
            f"{FAST['STEPPE_WORKER__DRAIN_TIMEOUT']}s); killed it. `worker_stopping` without `worker_stopped` "
            "below means it hung in its drain; a dump idling in the event loop (Runner.run) means a task "
            "that never finished, a thread in the dump a blocking call.\n"
            f"--- py-spy dump of pid {pid}:\n{dump}\n"
            f"--- its last {len(lines)} log lines ({self.workers.log_path}):\n" + "\n".join(lines)
        )

    def wait_terminal(self, runs: list[tuple[str, str]], *, timeout: float) -> dict[str, str]:
        ids = [run_id for run_id, _ in runs]
        statuses: dict[str, str] = {}

        def done() -> bool:
            with psycopg.connect(self.database_url) as conn:
                rows = conn.execute("SELECT run_id, status FROM workflow_runs WHERE run_id = ANY(%s)", (ids,))
                statuses.update(dict(rows.fetchall()))
            return all(statuses.get(i) in TERMINAL for i in ids)

        with contextlib.suppress(TimeoutError):  # the caller reports the statuses seen
            _wait(done, timeout)
        return statuses

    def _coordinator_metrics(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.ports['coordinator']}/metrics", timeout=2).text


def _py_spy_dump(pid: int) -> str:
    """The Python stacks of process `pid` (py-spy next to this interpreter or on PATH), or why there are none."""
    found = Path(sys.executable).with_name("py-spy")
    py_spy = str(found) if found.exists() else shutil.which("py-spy")
    if py_spy is None:
        return "(py-spy is not installed: pip install py-spy)"
    try:
        done = subprocess.run(
            [py_spy, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"(py-spy failed: {e})"
    return (done.stdout + done.stderr).strip() or f"(py-spy printed nothing, exit {done.returncode})"


def _log_lines_of(log: Path, pid: int, count: int = 40) -> list[str]:
    """The last `count` lines of the cluster log written by the worker with `pid` (its id is host-PID-xxxxxx)."""
    if not log.exists():
        return []
    tag = f"-{pid}-"
    return [line for line in log.read_text(errors="replace").splitlines() if tag in line][-count:]


def _wait(predicate: Callable[[], Any], timeout: float, interval: float = 0.1) -> None:
    end = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return
        except (redis.RedisError, psycopg.Error, httpx.HTTPError):
            pass
        if time.monotonic() >= end:
            raise TimeoutError(f"condition not met within {timeout:.0f}s")
        time.sleep(interval)
