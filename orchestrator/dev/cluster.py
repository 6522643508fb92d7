"""A local cluster of coordinator and worker subprocesses (used by `run`, `bench` and the tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING

from orchestrator.errors import InfrastructureError
from orchestrator.keys import Keys

if TYPE_CHECKING:
    import redis

    from orchestrator.settings import Settings


def steppe_argv() -> list[str]:
    return [sys.executable, "-m", "orchestrator.cli.main"]


class LocalCluster:
    """Starts `steppe coordinator` and N `steppe worker` processes; stops exactly those, by pid."""

    def __init__(self, settings: Settings, *, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.settings = settings
        self.log_path = log_path
        self.env = dict(os.environ if env is None else env)
        self.env.setdefault("STEPPE_HOME", str(settings.home.resolve()))
        self.coordinators: list[subprocess.Popen[bytes]] = []
        self.workers: list[subprocess.Popen[bytes]] = []
        self._log: IO[bytes] | None = None

    def _out(self) -> IO[bytes]:
        if self._log is None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = self.log_path.open("ab")
        return self._log

    def start_coordinator(self, *extra: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [*steppe_argv(), "coordinator", *extra],
            env=self.env,
            stdout=self._out(),
            stderr=subprocess.STDOUT,
        )
        self.coordinators.append(proc)
        return proc

    def start_worker(
        self,
        *,
        queues: list[str],
        imports: Sequence[str] = (),
        concurrency: int | None = None,
        extra: Sequence[str] = (),
    ) -> subprocess.Popen[bytes]:
        argv = [*steppe_argv(), "worker", "--queues", ",".join(queues)]
        for module in imports:
            argv += ["--import", module]
        if concurrency:
            argv += ["--concurrency", str(concurrency)]
        proc = subprocess.Popen([*argv, *extra], env=self.env, stdout=self._out(), stderr=subprocess.STDOUT)
        self.workers.append(proc)
        return proc

    def wait_for_workers(self, client: redis.Redis, count: int, timeout: float = 30.0) -> None:
        keys = Keys(self.settings.namespace)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ids = [i.decode() for i in client.zrange(keys.workers, 0, -1)]
            live = sum(1 for v in client.mget([keys.worker(i) for i in ids]) if v) if ids else 0
            if live >= count:
                return
            dead = [p for p in self.workers if p.poll() is not None]
            if dead:
                raise InfrastructureError(f"a worker exited with code {dead[0].returncode}; see {self.log_path}")
            time.sleep(0.1)
        raise InfrastructureError(f"workers did not start within {timeout:.0f}s; see {self.log_path}")

    def stop(self, timeout: float = 40.0) -> None:
        procs = self.workers + self.coordinators
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
