"""Coordinator RSS and Redis used_memory for one run: a for_each over N items with 100 KiB of inputs.

usage: PYTHONPATH=TREE .venv/bin/python loadtests/fanout_memory.py TREE [ITEMS] [INPUT_KIB]

TREE is a checkout of Steppe (this one, or `git worktree add /tmp/before COMMIT` to compare).
Starts its own redis-server 7 (STEPPE_TEST_REDIS_SERVER, else .steppe-tools) and PostgreSQL on
loopback, one coordinator and two workers (concurrency 32) of TREE, submits the run, samples
every 20 ms until it finishes, and prints one JSON line: the coordinator's RSS when idle and its
high-water mark (VmHWM), Redis used_memory idle and at its peak, and the size of one queue entry.
Every process it starts is stopped by pid.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if len(sys.argv) < 2:
    sys.exit(__doc__)
tree = Path(sys.argv[1]).resolve()
items = int(sys.argv[2]) if len(sys.argv) > 2 else 10_000
kib = int(sys.argv[3]) if len(sys.argv) > 3 else 100
sys.path.insert(0, str(tree))

import redis  # noqa: E402

from orchestrator.dev import PostgresServer, RedisServer  # noqa: E402
from orchestrator.settings import Settings  # noqa: E402
from orchestrator.spec import load_workflow  # noqa: E402
from orchestrator.store.db import upgrade  # noqa: E402
from orchestrator.store.queries import RunQueries  # noqa: E402
from orchestrator.store.runs import RunStore  # noqa: E402
from orchestrator.submit import Submitter  # noqa: E402

REDIS7 = Path(
    os.environ.get("STEPPE_TEST_REDIS_SERVER")
    or Path(__file__).resolve().parents[1] / ".steppe-tools" / "redis7" / "usr" / "bin" / "redis-server"
)
WORKFLOW = """
name: fan
inputs:
  blob: {type: string, required: true}
  items: {type: array, required: true}
steps:
  - id: each
    handler: builtin.echo
    for_each: "${{ inputs.items }}"
    with: {n: "${{ item }}"}
"""


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def start_cluster(base: Path, env: dict[str, str]) -> list[subprocess.Popen[bytes]]:
    """One coordinator (first) and two workers of the tree under test."""
    log = (base / "cluster.log").open("wb")
    argv = [sys.executable, "-m", "orchestrator.cli.main"]
    commands = [[*argv, "coordinator"]] + [[*argv, "worker", "--queues", "default", "--concurrency", "32"]] * 2
    return [subprocess.Popen(c, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tree) for c in commands]


def measure(
    settings: Settings, store: RunStore, client: redis.Redis, coordinator: subprocess.Popen[bytes]
) -> dict[str, Any]:
    """Submit the run, sample until it finishes, and return the figures."""
    rss0 = status_kib(coordinator.pid, "VmRSS")
    mem0 = int(client.info("memory")["used_memory"])
    inputs = {"blob": "x" * (kib * 1024), "items": list(range(items))}
    started = time.monotonic()
    submitter = Submitter(settings=settings, store=store, client=client)
    run_id = submitter.submit(load_workflow(WORKFLOW), inputs=inputs).run_id
    peak_mem, entry, status, next_poll = mem0, 0, "pending", 0.0
    while time.monotonic() - started < 900:
        peak_mem = max(peak_mem, int(client.info("memory")["used_memory"]))
        if not entry:
            sample = client.xrange("{bench:q:default}:normal", count=1)
            entry = sum(len(k) + len(v) for k, v in sample[0][1].items()) if sample else 0
        if time.monotonic() >= next_poll:
            status = RunQueries(store).get_run(run_id)["status"]
            next_poll = time.monotonic() + 0.5
            if status in ("succeeded", "failed", "cancelled"):
                break
        if coordinator.poll() is not None:
            status = f"coordinator exited {coordinator.returncode}"
            break
        time.sleep(0.02)
    elapsed = time.monotonic() - started
    hwm = status_kib(coordinator.pid, "VmHWM") if coordinator.poll() is None else 0
    return {
        "tree": str(tree),
        "items": items,
        "input_kib": kib,
        "status": status,
        "seconds": round(elapsed, 1),
        "coordinator_rss_idle_mib": round(rss0 / 1024, 1),
        "coordinator_rss_peak_mib": round(hwm / 1024, 1),
        "coordinator_rss_growth_mib": round((hwm - rss0) / 1024, 1),
        "redis_used_memory_idle_mib": round(mem0 / 2**20, 1),
        "redis_used_memory_peak_mib": round(peak_mem / 2**20, 1),
        "redis_growth_mib": round((peak_mem - mem0) / 2**20, 1),
        "redis_used_memory_peak_info_mib": round(int(client.info("memory")["used_memory_peak"]) / 2**20, 1),
        "queue_entry_bytes": entry,
    }


def main() -> None:
    base = Path(tempfile.mkdtemp(prefix="bench-fanout-"))
    base.chmod(0o755)  # the `postgres` OS user must traverse it (mkdtemp makes it 0700)
    rs = RedisServer.start(base / "redis", binary=str(REDIS7), appendonly=False)
    pg = PostgresServer.start(base / "pg", settings={"fsync": "off"})
    procs: list[subprocess.Popen[bytes]] = []
    try:
        db = pg.create_database("bench")
        upgrade(db)
        home = base / "home"
        env = {
            **os.environ,
            "STEPPE_REDIS_URL": rs.url,
            "STEPPE_DATABASE_URL": db,
            "STEPPE_NAMESPACE": "bench",
            "STEPPE_HOME": str(home),
            "PYTHONPATH": str(tree),
        }
        procs = start_cluster(base, env)
        client = redis.Redis.from_url(rs.url)
        store = RunStore(db, pool_size=2)
        store.open()
        time.sleep(8)  # the coordinator and workers are up and idle
        settings = Settings(redis_url=rs.url, database_url=db, namespace="bench", home=home)
        print(json.dumps(measure(settings, store, client, procs[0])))
        store.close()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        rs.stop()
        pg.stop()


if __name__ == "__main__":
    main()
