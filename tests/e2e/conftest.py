"""End-to-end fixtures: a private database per test and a cluster of real subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from orchestrator import redis_clients
from orchestrator.cli.context import Clients
from orchestrator.dev import RedisServer
from orchestrator.dev.cluster import LocalCluster
from orchestrator.settings import Settings
from orchestrator.spec import load_workflow
from orchestrator.store.db import upgrade
from orchestrator.store.queries import RunQueries
from orchestrator.store.runs import RunStore
from orchestrator.submit import Submitter
from tests.conftest import private_dir, redis_binary_for_tests

FAST_ENV = {
    # Short timeouts so that recovery scenarios finish in seconds.
    "STEPPE_WORKER__VISIBILITY_TIMEOUT": "3",
    "STEPPE_WORKER__HEARTBEAT_INTERVAL": "0.5",
    "STEPPE_WORKER__DRAIN_TIMEOUT": "10",
    "STEPPE_WORKER__MAX_DELIVERIES": "3",
    "STEPPE_COORDINATOR__RECONCILE_INTERVAL": "1",
    "STEPPE_COORDINATOR__LEASE_TTL": "3",
    "STEPPE_COORDINATOR__TIMEOUT_GRACE": "2",
    "STEPPE_REDIS__BLOCK_MS": "200",
}


@pytest.fixture(scope="session")
def template_database(postgres_server: Any) -> str:
    name = f"steppe_tpl_{uuid.uuid4().hex[:8]}"
    postgres_server.create_database(name)
    upgrade(postgres_server.owner_url(name))
    return name


@pytest.fixture
def db_url(postgres_server: Any, template_database: str) -> Iterator[str]:
    name = f"steppe_e2e_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_server.url_for("postgres"), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}" OWNER steppe_migrator')
    yield postgres_server.app_url(name)  # the DML-only role, as Steppe's processes connect
    with psycopg.connect(postgres_server.url_for("postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Env:
    """One test's cluster: settings, clients, subprocess launcher and shortcuts."""

    def __init__(self, *, settings: Settings, env: dict[str, str], home: Path) -> None:
        self.settings = settings
        self.env = env
        self.home = home
        # One Redis or a Redis Cluster (tests/cluster), as the processes under test see it.
        self.redis = redis_clients.sync_client(settings.resolved_redis_url(), socket_timeout=30, connect_timeout=5)
        self.store = RunStore(settings.resolved_database_url(), pool_size=2)
        self.store.open()
        self.queries = RunQueries(self.store)
        self.cluster = LocalCluster(settings, log_path=home / "cluster.log", env=env)
        self.submitter = Submitter(settings=settings, store=self.store, client=self.redis)

    @property
    def clients(self) -> Clients:
        return Clients(settings=self.settings, redis=self.redis, store=self.store)

    def start(self, *, workers: int = 2, queues: list[str] | None = None, concurrency: int | None = None) -> None:
        self.cluster.start_coordinator()
        for _ in range(workers):
            self.start_worker(queues=queues, concurrency=concurrency)
        self.cluster.wait_for_workers(self.redis, workers)

    def start_worker(self, *, queues: list[str] | None = None, concurrency: int | None = None) -> Any:
        return self.cluster.start_worker(
            queues=queues or ["default"], imports=["tests.e2e.handlers"], concurrency=concurrency
        )

    def submit(self, yaml_text: str, inputs: dict[str, Any] | None = None, **kwargs: Any) -> str:
        spec = load_workflow(yaml_text)
        return self.submitter.submit(spec, inputs=inputs, **kwargs).run_id

    def run(self, run_id: str) -> dict[str, Any]:
        return self.queries.get_run(run_id)

    def witness(self, kind: str) -> dict[str, int]:
        ns = self.settings.namespace
        raw = self.redis.hgetall(f"witness:{ns}:{kind}")
        return {k.decode(): int(v) for k, v in raw.items()}

    def rebuild_check(self) -> str:
        """Run `steppe admin rebuild --all --check` against this cluster; its output (it must succeed)."""
        check = subprocess.run(
            [sys.executable, "-m", "orchestrator.cli.main", "admin", "rebuild", "--all", "--check"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert check.returncode == 0, check.stdout + check.stderr
        return check.stdout

    def log(self) -> str:
        path = self.home / "cluster.log"
        return path.read_text(errors="replace")[-6000:] if path.exists() else ""

    def close(self) -> None:
        self.cluster.stop()
        self.store.close()
        self.redis.close()


def process_env(redis_url: str, db_url: str, namespace: str, home: Path, **extra: str) -> dict[str, str]:
    """The environment of the coordinator and worker subprocesses of one test (short timeouts)."""
    return {
        **os.environ,
        **FAST_ENV,
        "STEPPE_REDIS_URL": redis_url,
        "STEPPE_DATABASE_URL": db_url,
        "STEPPE_NAMESPACE": namespace,
        "STEPPE_HOME": str(home),
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
        **extra,
    }


def make_env(redis_url: str, db_url: str, namespace: str, home: Path) -> Env:
    settings = Settings(redis_url=redis_url, database_url=db_url, namespace=namespace, home=home)
    return Env(settings=settings, env=process_env(redis_url, db_url, namespace, home), home=home)


@pytest.fixture
def e2e(redis_url: str, db_url: str, namespace: str, tmp_path: Path) -> Iterator[Env]:
    handle = make_env(redis_url, db_url, namespace, tmp_path)
    yield handle
    handle.close()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own, for scenarios that restart or flush it."""
    server = RedisServer.start(private_dir("steppe-redis-"), binary=redis_binary_for_tests())
    yield server
    server.stop()


@pytest.fixture
def e2e_own_redis(own_redis: RedisServer, db_url: str, namespace: str, tmp_path: Path) -> Iterator[Env]:
    handle = make_env(own_redis.url, db_url, namespace, tmp_path)
    yield handle
    handle.close()
