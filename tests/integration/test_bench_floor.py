"""`steppe bench floor` at tiny sizes on the session's real Redis and PostgreSQL: every shape is
reported, and the floor wrote the rows its docstring lists (no timing is asserted)."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from orchestrator.cli.bench_floor import run_floor, shape_rows
from orchestrator.cli.bench_report import ratio_rows
from orchestrator.dev import PostgresServer, RedisServer
from orchestrator.settings import Settings
from orchestrator.store.runs import RunStore

pytestmark = pytest.mark.integration


def test_floor_reports_every_shape_and_writes_steppes_rows(
    redis_server: RedisServer, redis_url: str, postgres_server: PostgresServer, namespace: str, tmp_path: Path
) -> None:
    name = f"steppe_floor_{secrets.token_hex(4)}"
    postgres_server.create_database(name)
    # The owner's URL: the floor migrates it and settles it (VACUUM, CHECKPOINT) as `bench all` does.
    settings = Settings(
        redis_url=redis_url, database_url=postgres_server.owner_url(name), namespace=namespace, home=tmp_path
    )
    pids = {"redis": [redis_server.pid], "postgresql": [postgres_server.pid]}

    results = run_floor(settings, pids, throughput=200, chain=10, repeat=1)

    assert set(results) == {"throughput_wide", "throughput_runs", "chain", "durability"}
    assert results.pop("durability")["steppe"] == f"STEPPE_DURABILITY={settings.durability}"
    for shape, r in results.items():
        assert r["size"] == (10 if shape == "chain" else 200)
        assert len(r["seconds"]) == 1, shape
        assert r["per_second"] > 0, shape
        cpu = r["cpu_ms_per_step"]
        assert set(cpu) == {"coordinators", "workers", "redis", "postgresql", "producer", "total"}, shape
    assert [row[0] for row in shape_rows(results)] == ["one wide workflow", "one-step workflows", "chain"]
    steppe_like = {k: dict(v, per_second=v["per_second"] / 2, median_s=v["median_s"] * 2) for k, v in results.items()}
    against_floor = {r.shape: r.ratio for r in ratio_rows(steppe_like, floor=results)}
    assert against_floor == pytest.approx({"throughput_wide": 0.5, "throughput_runs": 0.5, "chain": 2.0})

    with RunStore(settings.resolved_database_url(), pool_size=1) as store, store.connection() as conn:
        runs = conn.execute(
            "SELECT r.workflow, r.status, r.version, r.last_seq, r.finished_at IS NOT NULL AS finished,"
            " (SELECT count(*) FROM workflow_events e WHERE e.run_id = r.run_id) AS events,"
            " (SELECT count(*) FROM workflow_steps s WHERE s.run_id = r.run_id AND s.status = 'succeeded') AS steps"
            " FROM workflow_runs r WHERE r.workflow LIKE 'floor-runs-%'"
        ).fetchall()
        chains = conn.execute(
            "SELECT r.status, r.version,"
            " (SELECT array_agg(e.type ORDER BY e.seq) FROM workflow_events e WHERE e.run_id = r.run_id) AS types"
            " FROM workflow_runs r WHERE r.workflow LIKE 'floor-chain-%' AND r.definition->'steps' @> '[{\"id\": \"s9\"}]'"
        ).fetchall()
        leases = conn.execute("SELECT count(*) AS n FROM coordinator_leases WHERE owner IS NOT NULL").fetchone()
    # One-step workflows: submitted, started, dispatched, succeeded, run succeeded; two coordinator commits.
    assert len(runs) == 200
    assert {(r["status"], r["version"], r["last_seq"], r["finished"], r["events"], r["steps"]) for r in runs} == {
        ("succeeded", 2, 5, True, 5, 1)
    }
    # The chain of 10: one commit to start and one per hop, each hop's result with the next dispatch.
    assert len(chains) == 1
    assert chains[0]["status"] == "succeeded"
    assert chains[0]["version"] == 11
    types = chains[0]["types"]
    assert types[:3] == ["run.submitted", "run.started", "step.dispatched"]
    assert types[3:-1] == ["step.succeeded", "step.dispatched"] * 9 + ["step.succeeded"]
    assert types[-1] == "run.succeeded"
    assert leases is not None
    assert leases["n"] == 0
