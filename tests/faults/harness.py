"""The fault tests' cluster handle: the e2e `Env` plus process control, log reading and a witness kept apart.

`FaultEnv` extends the e2e `Env` with per-process environment overrides, SIGSTOP/SIGCONT,
a supervisor that restarts crashed workers, the structured cluster log as a list of events,
and CPU accounting from /proc. Every process is started through `LocalCluster` and stopped
by pid when the test ends (SIGCONT first, so that a paused one can act on SIGTERM).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import redis

from orchestrator.keys import Keys
from orchestrator.settings import Settings
from tests.e2e.conftest import Env, process_env

HANDLER_MODULES = ["tests.e2e.handlers"]
CLK_TCK = os.sysconf("SC_CLK_TCK")


class FaultEnv(Env):
    """One test's cluster, with the knobs the fault scenarios need."""

    def __init__(self, *, settings: Settings, env: dict[str, str], home: Path, witness_url: str) -> None:
        super().__init__(settings=settings, env=env, home=home)
        self.witness_redis = redis.Redis.from_url(witness_url)
        self.keys = Keys(settings.namespace)
        self._supervisor: Supervisor | None = None
        self._env_lock = threading.Lock()  # the supervisor thread starts workers too

    # -- processes ----------------------------------------------------------------------------------

    def _with_env(self, overrides: dict[str, str], start: Any) -> subprocess.Popen[bytes]:
        """Start one process with `overrides` added to the cluster's environment."""
        with self._env_lock:
            saved = dict(self.cluster.env)
            self.cluster.env.update(overrides)
            try:
                proc: subprocess.Popen[bytes] = start()
            finally:
                self.cluster.env.clear()
                self.cluster.env.update(saved)
        return proc

    def start_coordinator(self, *extra: str, **env: str) -> subprocess.Popen[bytes]:
        return self._with_env(env, lambda: self.cluster.start_coordinator(*extra))

    def start_worker(
        self,
        *,
        queues: list[str] | None = None,
        concurrency: int | None = None,
        imports: list[str] | None = None,
        **env: str,
    ) -> subprocess.Popen[bytes]:
        return self._with_env(
            env,
            lambda: self.cluster.start_worker(
                queues=queues or ["default"], imports=imports or HANDLER_MODULES, concurrency=concurrency
            ),
        )

    def start(
        self,
        *,
        workers: int = 2,
        queues: list[str] | None = None,
        concurrency: int | None = None,
        imports: list[str] | None = None,
    ) -> None:
        self.start_coordinator()
        for _ in range(workers):
            self.start_worker(queues=queues, concurrency=concurrency, imports=imports)
        self.wait_for_workers(workers)

    def stop_processes(self, timeout: float = 20.0) -> None:
        """SIGTERM every process started so far and wait for them (then forget them)."""
        for proc in self.cluster.workers + self.cluster.coordinators:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
        self.cluster.stop(timeout=timeout)
        self.cluster.workers.clear()
        self.cluster.coordinators.clear()

    def wait_for_workers(self, count: int, timeout: float = 30.0) -> None:
        self.cluster.wait_for_workers(self.redis, count, timeout=timeout)

    def live_workers(self) -> list[subprocess.Popen[bytes]]:
        return [p for p in self.cluster.workers if p.poll() is None]

    def consumer_of(self, proc: subprocess.Popen[bytes]) -> str:
        """The consumer name (worker id) a worker process registered under."""
        for raw in self.redis.zrange(self.keys.workers, 0, -1):
            name = raw.decode()
            if f"-{proc.pid}-" in name:
                return name
        raise LookupError(f"worker pid {proc.pid} is not registered")

    def assert_heartbeating(self, proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
        """The worker's liveness loop still runs: its registry heartbeat moves forward."""
        worker_id = self.consumer_of(proc)
        first = self.redis.zscore(self.keys.workers, worker_id)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(0.2)
            score = self.redis.zscore(self.keys.workers, worker_id)
            if (
                score is not None
                and first is not None
                and score > first
                and self.redis.exists(self.keys.worker(worker_id))
            ):
                return
        raise AssertionError(f"worker {worker_id} stopped heartbeating; log tail:\n{self.log_text()[-3000:]}")

    def supervise(self, **worker_kwargs: Any) -> Supervisor:
        """Restart any worker that exits on its own (a poison handler kills its process)."""
        self._supervisor = Supervisor(self, worker_kwargs)
        self._supervisor.start()
        return self._supervisor

    # -- observations -------------------------------------------------------------------------------

    def witness(self, kind: str) -> dict[str, int]:
        raw = self.witness_redis.hgetall(f"witness:{self.settings.namespace}:{kind}")
        return {k.decode(): int(v) for k, v in raw.items()}

    def witness_list(self, kind: str) -> list[str]:
        return [v.decode() for v in self.witness_redis.lrange(f"witness:{self.settings.namespace}:{kind}", 0, -1)]

    def set_flag(self, name: str, on: bool) -> None:
        key = f"witness:{self.settings.namespace}:{name}"
        if on:
            self.witness_redis.set(key, 1)
        else:
            self.witness_redis.delete(key)

    def log_text(self) -> str:
        path = self.home / "cluster.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def log_events(self, event: str | None = None) -> list[dict[str, Any]]:
        """The structured (JSON) lines of the cluster log, optionally only one event name."""
        out = []
        for line in self.log_text().splitlines():
            if not line.startswith("{"):
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if event is None or record.get("event") == event:
                out.append(record)
        return out

    def close(self) -> None:
        try:
            if self._supervisor is not None:
                self._supervisor.stop()
        finally:
            try:
                self.stop_processes()  # SIGCONT first: a paused process cannot act on SIGTERM
            finally:
                self.store.close()
                self.redis.close()
                self.witness_redis.close()


class Supervisor(threading.Thread):
    """Starts a replacement for every worker that exits while the test runs; counts the exits."""

    def __init__(self, env: FaultEnv, worker_kwargs: dict[str, Any]) -> None:
        super().__init__(daemon=True, name="fault-supervisor")
        self.env = env
        self.worker_kwargs = worker_kwargs
        self.exits: list[tuple[int, int | None]] = []  # (pid, return code)
        self._halt = threading.Event()
        self._watched = {id(p) for p in env.cluster.workers}

    def run(self) -> None:
        while not self._halt.wait(0.1):
            for proc in list(self.env.cluster.workers):
                if id(proc) in self._watched and proc.poll() is not None:
                    self._watched.discard(id(proc))
                    self.exits.append((proc.pid, proc.returncode))
                    self._watched.add(id(self.env.start_worker(**self.worker_kwargs)))

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` so far (from /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def make_fault_env(redis_url: str, db_url: str, namespace: str, home: Path, witness_url: str) -> FaultEnv:
    env = process_env(redis_url, db_url, namespace, home, STEPPE_TEST_WITNESS_URL=witness_url)
    settings = Settings(redis_url=redis_url, database_url=db_url, namespace=namespace, home=home)
    return FaultEnv(settings=settings, env=env, home=home, witness_url=witness_url)


def chain_yaml(name: str, length: int, seconds: float, *, handler: str = "test.witness") -> str:
    """A workflow of `length` sequential steps of `handler`, each sleeping `seconds`."""
    steps = "\n".join(
        f"  - {{id: s{i}, handler: {handler}, with: {{seconds: {seconds}}}"
        + (f", needs: [s{i - 1}]" if i else "")
        + "}"
        for i in range(length)
    )
    return f"name: {name}\nsteps:\n{steps}\n"


def ledger_chain(name: str, length: int, seconds: float) -> str:
    """`chain_yaml` of `test.ledger` steps (one recorded side effect per idempotency key)."""
    return chain_yaml(name, length, seconds, handler="test.ledger")
