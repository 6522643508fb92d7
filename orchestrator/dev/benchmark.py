"""Cluster benchmarks: the three shapes of the peer harness, run through real processes.

Set-up mirrors `shared/bench/peers`: one Redis on loopback, one coordinator and two
worker processes on this machine, the producer (this process) inside the measurement,
and PostgreSQL persistence on with its normal durability settings. Scale-out variants
(`steppe bench scaleout`) swap the Redis for a Redis Cluster and start several coordinators.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.dev.cluster import LocalCluster
from orchestrator.errors import InfrastructureError
from orchestrator.settings import Settings
from orchestrator.spec import load_workflow
from orchestrator.store.queries import RunQueries
from orchestrator.store.runs import RunStore
from orchestrator.submit import Submitter

POLL = 0.01


@dataclass
class ShapeResult:
    shape: str
    size: int
    seconds: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def rate(self) -> float:
        return self.size / self.median

    def to_json(self) -> dict[str, Any]:
        return {
            "shape": self.shape,
            "size": self.size,
            "seconds": self.seconds,
            "median_s": self.median,
            "per_second": self.rate(),
        }


def wide_yaml(name: str, width: int, *, join: bool = False) -> str:
    lines = [f"name: {name}", "defaults: {retry: {max_attempts: 1}}", "steps:"]
    lines += [f"  - {{id: s{i}, handler: builtin.noop}}" for i in range(width)]
    if join:
        lines.append(
            "  - id: join\n    handler: builtin.noop\n    needs: [" + ", ".join(f"s{i}" for i in range(width)) + "]"
        )
    return "\n".join(lines) + "\n"


def chain_yaml(name: str, length: int) -> str:
    lines = [f"name: {name}", "steps:", "  - {id: s0, handler: builtin.noop}"]
    lines += [f"  - {{id: s{i}, handler: builtin.noop, needs: [s{i - 1}]}}" for i in range(1, length)]
    return "\n".join(lines) + "\n"


class ClusterBench:
    """Owns a private cluster for the duration of a benchmark."""

    def __init__(
        self, settings: Settings, *, workers: int = 2, concurrency: int | None = None, coordinators: int = 1
    ) -> None:
        self.settings = settings
        self.workers = workers
        self.concurrency = concurrency
        self.coordinators = coordinators
        self.cluster: LocalCluster | None = None
        # Server processes whose CPU `cpu_by_role` counts: {"redis": [pids], "postgresql": [postmaster]}.
        self.server_pids: dict[str, list[int]] = {}

    def __enter__(self) -> ClusterBench:
        import redis

        from orchestrator import bus
        from orchestrator.store.db import upgrade

        upgrade(self.settings.resolved_migration_url())
        self.redis: redis.Redis = bus.connect(self.settings)
        # Built as the coordinator builds its store, so `durability()` sees the engine's sessions.
        self.store = RunStore(self.settings.resolved_database_url(), pool_size=2, durability=self.settings.durability)
        self.store.open()
        self.submitter = Submitter(settings=self.settings, store=self.store, client=self.redis)
        log = Path(tempfile.gettempdir()) / f"steppe-bench-{uuid.uuid4().hex[:6]}.log"
        env = {"STEPPE_NAMESPACE": self.settings.namespace, "STEPPE_DURABILITY": self.settings.durability}
        self.cluster = LocalCluster(self.settings, log_path=log, env={**_environ(), **env})
        for _ in range(self.coordinators):
            self.cluster.start_coordinator()
        for _ in range(self.workers):
            self.cluster.start_worker(queues=["default"], concurrency=self.concurrency)
        self.cluster.wait_for_workers(self.redis, self.workers)
        self._wait_partitions_spread()
        return self

    def _wait_partitions_spread(self, timeout: float = 60.0) -> None:
        """Measure only once every partition is leased and each coordinator holds its share."""
        partitions = self.settings.coordinator.partitions
        wanted = min(self.coordinators, partitions)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.store.connection() as conn:
                rows = conn.execute(
                    "SELECT owner FROM coordinator_leases WHERE expires_at > now() AND owner IS NOT NULL"
                ).fetchall()
            owners = [r["owner"] for r in rows]
            if len(owners) == partitions and len(set(owners)) == wanted:
                return
            time.sleep(0.2)
        raise InfrastructureError(f"partitions were not spread over {wanted} coordinators within {timeout:.0f}s")

    def __exit__(self, *exc: object) -> None:
        if self.cluster is not None:
            self.cluster.stop()
        self.store.close()

    # -- shapes ----------------------------------------------------------------------------------

    def one_wide_workflow(self, n: int) -> float:
        name = _name("wide")
        source = wide_yaml(name, n)
        started = time.perf_counter()
        run = self.submitter.submit(load_workflow(source), check_handlers=False).run_id
        self._wait_run(run, timeout=max(120, n / 50))
        return time.perf_counter() - started

    def many_one_step_workflows(self, n: int) -> float:
        name = _name("runs")
        spec = load_workflow(f"name: {name}\nsteps:\n  - {{id: s0, handler: builtin.noop}}\n")
        started = time.perf_counter()
        batch = 2000
        run_ids: list[str] = []
        for offset in range(0, n, batch):
            run_ids += self.submitter.submit_many(spec, [{}] * min(batch, n - offset), check_handlers=False)
        wait_runs_finished(self.store, run_ids, timeout=max(120, n / 50))
        return time.perf_counter() - started

    def chain(self, length: int) -> float:
        source = chain_yaml(_name("chain"), length)
        started = time.perf_counter()
        run = self.submitter.submit(load_workflow(source), check_handlers=False).run_id
        self._wait_run(run, timeout=120)
        return time.perf_counter() - started

    def fanout(self, width: int) -> float:
        source = wide_yaml(_name("fan"), width, join=True)
        started = time.perf_counter()
        run = self.submitter.submit(load_workflow(source), check_handlers=False).run_id
        self._wait_run(run, timeout=120)
        return time.perf_counter() - started

    # -- measurement helpers ---------------------------------------------------------------------

    def _wait_run(self, run_id: str, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = RunQueries(self.store).run_status(run_id)
            if status == "succeeded":
                return
            if status in ("failed", "cancelled"):
                raise InfrastructureError(f"benchmark run {run_id} ended {status}")
            time.sleep(POLL)
        raise InfrastructureError(f"benchmark run {run_id} did not finish within {timeout:.0f}s")

    def active_runs_memory(self, n: int) -> float:
        """Coordinator resident memory (MiB) while it holds `n` active runs (long sleeps)."""
        name = _name("mem")
        spec = load_workflow(f"name: {name}\nsteps:\n  - {{id: s0, handler: builtin.sleep, with: {{seconds: 600}}}}\n")
        for offset in range(0, n, 2000):
            self.submitter.submit_many(spec, [{}] * min(2000, n - offset), check_handlers=False)
        assert self.cluster is not None
        pid = self.cluster.coordinators[0].pid
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with self.store.connection() as conn:
                row = conn.execute(
                    "SELECT count(*) AS n FROM workflow_runs WHERE workflow = %s AND status = 'running'", (name,)
                ).fetchone()
            if row and row["n"] >= n:
                break
            time.sleep(0.2)
        return _vm_rss(pid)

    def settle(self) -> None:
        """Outside the timing: vacuum and checkpoint, so that one shape's WAL, dead rows and
        autovacuum do not land inside the next shape's measurement. As the tables' owner: the
        application role may not vacuum them (`steppe dev up` lets the owner checkpoint)."""
        settle_database(self.settings)

    def peak_rss_mib(self) -> dict[str, float]:
        assert self.cluster is not None
        out = {}
        for label, procs in (("coordinator", self.cluster.coordinators), ("workers", self.cluster.workers)):
            out[label] = max((_vm_hwm(p.pid) for p in procs), default=0.0)
        return out

    def cpu_by_role(self) -> dict[str, float]:
        """CPU seconds used so far by each part of the deployment (user + system, from /proc).

        PostgreSQL counts the postmaster and every backend and helper under it; the producer is
        this process (it loads, validates, plans and submits)."""
        assert self.cluster is not None
        return cpu_by_role(
            [p.pid for p in self.cluster.coordinators], [p.pid for p in self.cluster.workers], self.server_pids
        )

    def durability(self) -> dict[str, str]:
        """The durability in force: STEPPE_DURABILITY, and PostgreSQL's fsync and the
        synchronous_commit of a session opened as the engine opens its own (balanced: off)."""
        with self.store.connection() as conn:
            pg = {
                name: conn.execute(f"SHOW {name}").fetchone()[name]  # type: ignore[index]
                for name in ("fsync", "synchronous_commit")
            }
        from orchestrator import redis_clients

        node = redis_clients.masters(self.redis)[0]  # every cluster node runs with the same settings
        aof = node.config_get("appendonly").get("appendonly", "?")
        fsync = node.config_get("appendfsync").get("appendfsync", "?")
        return {
            "steppe": f"STEPPE_DURABILITY={self.store.durability}",
            "postgresql": f"fsync={pg['fsync']} synchronous_commit={pg['synchronous_commit']} (engine sessions)",
            "redis": f"appendonly={aof} appendfsync={fsync}",
        }


def wait_runs_finished(
    store: RunStore,
    run_ids: list[str],
    *,
    timeout: float,
    chunk: int = 500,
    between_polls: Callable[[], None] = lambda: None,
) -> None:
    """Wait until every run succeeded, looking up at most `chunk` of them by id per poll.

    Runs finish roughly in submission order, so the oldest pending ids are the ones asked about; a
    poll costs a few hundred primary-key lookups, not a scan of every run of the workflow (a
    `count(*)` every poll was a third of PostgreSQL's statement time in the one-step shape).
    `between_polls` runs before each wait (the floor checks its processes are alive there).
    """
    deadline = time.monotonic() + timeout
    pending = list(run_ids)
    while pending and time.monotonic() < deadline:
        ask = pending[:chunk]
        with store.connection() as conn:
            rows = conn.execute(
                "SELECT run_id, status FROM workflow_runs WHERE run_id = ANY(%s) AND finished_at IS NOT NULL",
                (ask,),
            ).fetchall()
        failed = [r["run_id"] for r in rows if r["status"] != "succeeded"]
        if failed:
            raise InfrastructureError(f"benchmark run {failed[0]} did not succeed")
        done = {r["run_id"] for r in rows}
        pending = [run_id for run_id in ask if run_id not in done] + pending[chunk:]
        if len(done) < len(ask):
            between_polls()
            time.sleep(POLL * 5)
    if pending:
        raise InfrastructureError(f"{len(pending)} of {len(run_ids)} runs did not finish within {timeout:.0f}s")


def repeat(fn: Callable[[int], float], size: int, times: int, shape: str) -> ShapeResult:
    result = ShapeResult(shape=shape, size=size)
    bench = getattr(fn, "__self__", None)
    for _ in range(times):
        settle = getattr(bench, "settle", None)  # ClusterBench's, the floor's
        if callable(settle):
            settle()
        result.seconds.append(fn(size))
    return result


def settle_database(settings: Settings) -> None:
    """VACUUM ANALYZE the run tables and CHECKPOINT, as their owner, then let the server settle 1 s."""
    import psycopg

    with psycopg.connect(settings.resolved_migration_url(), autocommit=True) as conn:
        for table in ("workflow_events", "workflow_steps", "workflow_runs"):
            conn.execute(f"VACUUM ANALYZE {table}")
        conn.execute("CHECKPOINT")
    time.sleep(1.0)


def _name(kind: str) -> str:
    return f"bench-{kind}-{uuid.uuid4().hex[:8]}"


def _proc_status(pid: int, field_name: str) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _vm_hwm(pid: int) -> float:
    return _proc_status(pid, "VmHWM")


def _vm_rss(pid: int) -> float:
    return _proc_status(pid, "VmRSS")


def _environ() -> dict[str, str]:
    return dict(os.environ)


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_by_role(coordinators: list[int], workers: list[int], server_pids: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds used so far by each role (user + system, from /proc): PostgreSQL counts the
    postmaster and every backend and helper under it; the producer is this process."""
    postgres = [p for root in server_pids.get("postgresql", []) for p in (root, *process_descendants(root))]
    roles = {
        "coordinators": coordinators,
        "workers": workers,
        "redis": server_pids.get("redis", []),
        "postgresql": postgres,
        "producer": [os.getpid()],
    }
    return {role: sum(cpu_seconds(pid) for pid in pids) for role, pids in roles.items()}


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def process_descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out
