"""Steppe on several "hosts" made of network namespaces: `make multihost-demo` and tests/multihost.

    core    10.77.0.1   redis-server and PostgreSQL, bound to loopback + the lab address
    host1   10.77.0.11  a coordinator and a worker (hostname `host1`)
    hostN   10.77.0.1N  a worker (hostname `hostN`)

Every process reaches Redis and PostgreSQL across the lab's bridge (see orchestrator.dev.netns);
nothing listens on an address of the root namespace. The servers are started by
`python -m orchestrator.dev.multihost core-up` run inside `core`; coordinator, workers and
CLI calls are run with `ip netns exec`. `close()` stops them by pid and deletes the lab.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import psycopg
import structlog

from orchestrator.dev.netns import PREFIX, NetnsLab, stale_labels
from orchestrator.dev.postgres_server import DATABASE, SUPERUSER, PostgresServer
from orchestrator.dev.process import LOOPBACK, signal_and_wait, wait_until
from orchestrator.dev.redis_server import APP_USER, RedisServer
from orchestrator.errors import LauncherError

log = structlog.get_logger(__name__)

CORE = "core"
REDIS_PORT = 6379  # the core namespace is private: the standard ports are free there
POSTGRES_PORT = 5432
HANDLERS_MODULE = "examples.multihost_handlers"
REPO_ROOT = Path(__file__).resolve().parents[2]
# Short timeouts so that a cut-off host's work is reclaimed within seconds.
FAST_ENV = {
    "STEPPE_WORKER__VISIBILITY_TIMEOUT": "3",
    "STEPPE_WORKER__HEARTBEAT_INTERVAL": "0.5",
    "STEPPE_WORKER__DRAIN_TIMEOUT": "5",
    "STEPPE_COORDINATOR__RECONCILE_INTERVAL": "1",
    "STEPPE_COORDINATOR__LEASE_TTL": "3",
    "STEPPE_REDIS__BLOCK_MS": "200",
}


def clean_stale_dirs(root: Path | None = None) -> None:
    """Remove the work directories of labs whose owner process is gone."""
    root = root or Path(tempfile.gettempdir())
    dirs = {p.name: p for p in root.glob(f"{PREFIX}*") if p.is_dir()}
    for label in stale_labels([f"{name}-" for name in dirs]):
        shutil.rmtree(dirs[label], ignore_errors=True)


def _bridged_redis(address: str) -> type[RedisServer]:
    class BridgedRedis(RedisServer):
        def _argv(self) -> list[str]:
            argv = super()._argv()
            at = argv.index("--bind") + 2
            return [*argv[:at], address, *argv[at:]]

    return BridgedRedis


def core_up(data_dir: Path, *, address: str, network: str) -> dict[str, Any]:
    """Inside the core namespace: Redis and PostgreSQL on loopback + `address`, schema migrated."""
    from orchestrator.store.db import upgrade

    redis = _bridged_redis(address).start(data_dir / "redis", port=REDIS_PORT, appendonly=False)
    listen = {"listen_addresses": f"{LOOPBACK},{address}", "fsync": "off"}
    postgres = PostgresServer.start(data_dir / "postgres", port=POSTGRES_PORT, settings=listen)
    # trust on the lab's private network only: no address outside the bridge can reach it.
    with (postgres.data_dir / "pg_hba.conf").open("a") as hba:
        hba.write(f"host all {SUPERUSER} {network} trust\n")
    os.kill(postgres.pid, signal.SIGHUP)
    database_url = f"postgresql://{SUPERUSER}@{address}:{POSTGRES_PORT}/{DATABASE}"

    def reachable() -> bool:
        try:
            psycopg.connect(database_url, connect_timeout=2).close()
        except psycopg.Error:
            return False
        return True

    if not wait_until(reachable, timeout=15, interval=0.1):
        raise LauncherError(f"PostgreSQL does not accept connections on {address}; see {postgres.log_file}")
    upgrade(database_url)
    return {
        "redis_url": redis.url_as(APP_USER, host=address),
        "database_url": database_url,
        "redis": redis.record(),
        "postgres": postgres.record(),
    }


class MultihostCluster:
    """A lab of namespaces running Steppe: `with MultihostCluster(hosts=3) as cluster: …`."""

    def __init__(self, *, hosts: int = 3, concurrency: int = 4, env: Mapping[str, str] | None = None) -> None:
        self.lab = NetnsLab()
        self.host_names = [f"host{i}" for i in range(1, hosts + 1)]
        self.concurrency = concurrency
        self.extra_env = {**FAST_ENV, **(env or {})}
        self.work_dir = Path(tempfile.gettempdir()) / self.lab.label
        self.core: dict[str, Any] = {}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[IO[bytes]] = []
        self.cut_hosts: set[str] = set()
        steppe = Path(sys.executable).with_name("steppe")
        self.steppe_argv = [str(steppe)] if steppe.is_file() else [sys.executable, "-m", "orchestrator.cli.main"]

    def __enter__(self) -> MultihostCluster:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- start ------------------------------------------------------------------------------------

    def start(self) -> None:
        if not (REPO_ROOT / "examples" / "multihost_handlers.py").is_file():
            raise LauncherError(f"{HANDLERS_MODULE} not found under {REPO_ROOT}: run from a Steppe checkout")
        clean_stale_dirs()
        self.lab.create()
        self.work_dir.mkdir(mode=0o755)
        self.work_dir.chmod(0o755)  # PostgreSQL runs as `postgres` and must traverse it
        core = self.lab.add_host(CORE, 1)
        for i, name in enumerate(self.host_names, start=11):
            self.lab.add_host(name, i)
        self._start_core(core.address)
        self.start_process(self.host_names[0], "coordinator", ["coordinator"])
        for name in self.host_names:
            self.start_worker(name)

    def _start_core(self, address: str) -> None:
        argv = [sys.executable, "-m", "orchestrator.dev.multihost", "core-up", "--dir", str(self.work_dir / CORE)]
        argv += ["--address", address, "--network", f"{self.lab.subnet}.0/24"]
        done = subprocess.run(
            self.lab.exec_argv(CORE, argv), capture_output=True, text=True, cwd=REPO_ROOT, timeout=120, check=False
        )
        if done.returncode != 0:
            raise LauncherError(f"starting Redis and PostgreSQL in {CORE} failed: {done.stderr[-3000:]}")
        self.core = json.loads(done.stdout.strip().splitlines()[-1])
        log.info("multihost_core_started", redis=self.core["redis_url"], database=self.core["database_url"])

    def env(self, host: str) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("STEPPE_")}
        return {
            **base,
            "STEPPE_REDIS_URL": self.core["redis_url"],
            "STEPPE_DATABASE_URL": self.core["database_url"],
            "STEPPE_HOME": str(self.work_dir / host),
            **self.extra_env,
        }

    def start_process(self, host: str, role: str, args: Sequence[str]) -> subprocess.Popen[bytes]:
        """`steppe ARGS` as a long-lived process on `host`, under hostname `host`; output in WORK/host-role.log."""
        out = (self.work_dir / f"{host}-{role}.log").open("ab")
        self._logs.append(out)
        argv = self.lab.exec_argv(host, [*self.steppe_argv, *args], hostname=host)
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=self.env(host), cwd=REPO_ROOT)
        self.processes[f"{host}-{role}"] = proc
        return proc

    def start_worker(self, host: str) -> subprocess.Popen[bytes]:
        args = ["worker", "--queues", "default,hooks", "--concurrency", str(self.concurrency)]
        return self.start_process(host, "worker", [*args, "--import", HANDLERS_MODULE])

    # -- use --------------------------------------------------------------------------------------

    def steppe(self, *args: str, host: str | None = None, timeout: float = 60) -> str:
        """Run one `steppe` CLI command on `host` (the first host by default); its stdout."""
        host = host or self.host_names[0]
        argv = self.lab.exec_argv(host, [*self.steppe_argv, *args])
        done = subprocess.run(
            argv, capture_output=True, text=True, env=self.env(host), cwd=REPO_ROOT, timeout=timeout, check=False
        )
        if done.returncode != 0:
            raise LauncherError(
                f"`steppe {' '.join(args)}` on {host} failed ({done.returncode}): {done.stderr[-2000:]}"
            )
        return done.stdout

    def workers(self) -> list[dict[str, Any]]:
        """Live workers as `steppe workers --json` lists them (host, pid, in_flight, processed, …)."""
        workers: list[dict[str, Any]] = json.loads(self.steppe("workers", "--json"))["workers"]
        return workers

    def wait_for_workers(self, *, timeout: float = 60) -> list[dict[str, Any]]:
        hosts = set(self.host_names)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            live = self.workers()
            if {w["host"] for w in live} >= hosts:
                return live
            time.sleep(0.5)
        raise LauncherError(f"workers on {sorted(hosts)} did not all register within {timeout:.0f}s")

    def submit_and_wait(self, workflow: Path, *, timeout: float = 120) -> tuple[str, subprocess.Popen[str]]:
        """`steppe submit --wait --json` in the background; returns the run id and the waiting process."""
        host = self.host_names[0]
        argv = self.lab.exec_argv(host, [*self.steppe_argv, "submit", str(workflow), "--json", "--wait"])
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env(host), cwd=REPO_ROOT
        )
        assert proc.stdout is not None
        first = proc.stdout.readline()
        if not first:
            _, err = proc.communicate(timeout=timeout)
            raise LauncherError(f"`steppe submit` on {host} failed ({proc.returncode}): {err[-2000:]}")
        return json.loads(first)["run_id"], proc

    def status(self, run_id: str) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.steppe("status", run_id, "--json"))
        return doc

    def history(self, run_id: str) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = json.loads(self.steppe("history", run_id, "--json"))
        return events

    def cut(self, host: str) -> None:
        """Pull `host`'s cable; its processes keep running but reach nothing (a partitioned host)."""
        self.lab.cut(host)
        self.cut_hosts.add(host)

    def restore(self, host: str) -> None:
        self.lab.restore(host)
        self.cut_hosts.discard(host)

    def log_text(self, host: str, role: str = "worker") -> str:
        return (self.work_dir / f"{host}-{role}.log").read_text(errors="replace")

    # -- stop -------------------------------------------------------------------------------------

    def close(self, *, keep_dir: bool = False) -> None:
        """Stop every process by pid, stop the servers, delete the lab; safe to call twice."""
        try:
            self._stop_processes()
            self._stop_core()
        finally:
            self.lab.destroy()
            for out in self._logs:
                out.close()
            self._logs.clear()
            if not keep_dir:
                shutil.rmtree(self.work_dir, ignore_errors=True)

    def _stop_processes(self) -> None:
        for name, proc in self.processes.items():
            if proc.poll() is None:
                # A cut-off host cannot drain (its acks would never arrive): it is killed, as if it died.
                cut = name.rsplit("-", 1)[0] in self.cut_hosts
                proc.send_signal(signal.SIGKILL if cut else signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.processes.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self.processes.clear()

    def _stop_core(self) -> None:
        if "redis" in self.core:
            redis = RedisServer.from_record(self.core["redis"])
            try:
                redis.stop(timeout=10)
            finally:
                redis.kill()
        if "postgres" in self.core:
            postgres = PostgresServer.from_record(self.core["postgres"])
            try:
                postgres.stop("fast", timeout=30)
            except LauncherError:
                signal_and_wait(postgres.pid, signal.SIGKILL, timeout=10, what="PostgreSQL")
        self.core = {}


def main(argv: Sequence[str] | None = None) -> int:
    """`core-up` (internal): run inside the core namespace by `MultihostCluster.start()`."""
    parser = argparse.ArgumentParser(prog="python -m orchestrator.dev.multihost")
    sub = parser.add_subparsers(dest="command", required=True)
    core = sub.add_parser("core-up", help="start Redis and PostgreSQL inside the core namespace")
    core.add_argument("--dir", type=Path, required=True)
    core.add_argument("--address", required=True)
    core.add_argument("--network", required=True)
    args = parser.parse_args(argv)
    print(json.dumps(core_up(args.dir, address=args.address, network=args.network)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
