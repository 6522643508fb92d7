"""Redis Cluster fixtures: a real 3-master cluster with replicas on loopback, and the fault harness on it.

redis_cluster    LocalRedisCluster  session-wide, 3 masters + 3 replicas; tests never fault it
own_cluster      LocalRedisCluster  a cluster of the test's own, for killing a master
on_cluster       FaultEnv           coordinator/worker subprocesses against `redis_cluster`;
                                    the witness handlers record into the session's plain Redis
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.cluster import key_slot

from orchestrator.dev.redis_cluster import LocalRedisCluster, slot_ranges
from orchestrator.keys import Keys
from tests.conftest import private_dir, redis_binary_for_tests
from tests.e2e.conftest import db_url, template_database  # noqa: F401 - fixtures reused as they are
from tests.faults.harness import FaultEnv, make_fault_env

QUEUES = ("default", "payments")  # the queues the cluster tests' workers read, each in its own slot


def start_cluster(prefix: str) -> tuple[LocalRedisCluster, Path]:
    base = private_dir(prefix)
    return LocalRedisCluster.start(base, masters=3, replicas=1, binary=redis_binary_for_tests()), base


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[LocalRedisCluster]:
    cluster, base = start_cluster("steppe-cluster-")
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def own_cluster() -> Iterator[LocalRedisCluster]:
    cluster, base = start_cluster("steppe-own-cluster-")
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


def cluster_env(cluster: LocalRedisCluster, witness_url: str, db: str, namespace: str, home: Path) -> FaultEnv:
    return make_fault_env(cluster.url, db, namespace, home, witness_url=witness_url)


@pytest.fixture
def on_cluster(
    redis_cluster: LocalRedisCluster,
    redis_url: str,
    db_url: str,  # noqa: F811
    tmp_path: Path,
) -> Iterator[FaultEnv]:
    namespace = spread_namespace(4, QUEUES)
    handle = cluster_env(redis_cluster, redis_url, db_url, namespace, tmp_path)
    yield handle
    handle.close()


def spread_namespace(partitions: int, queues: tuple[str, ...], masters: int = 3) -> str:
    """A namespace whose partition streams cover every master and whose queues sit on different
    masters (slot ranges as `LocalRedisCluster` assigns them), so that every test spreads its load."""
    ranges = slot_ranges(masters)

    def master_of(key: str) -> int:
        slot = key_slot(key.encode())
        return next(i for i, (low, high) in enumerate(ranges) if low <= slot <= high)

    for _ in range(10_000):
        ns = f"t{uuid.uuid4().hex[:12]}"
        k = Keys(ns)
        parts = {master_of(k.results_stream(p)) for p in range(partitions)}
        homes = [master_of(k.queue_stream(q)) for q in queues]
        if len(parts) == masters and len(set(homes)) == len(homes):
            return ns
    raise AssertionError("no namespace spreads over the cluster")
