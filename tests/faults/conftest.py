"""Fault-injection fixtures (docs/reliability.md): the e2e fixtures plus a witness kept apart from faulted Redis.

faults           FaultEnv  session redis-server, a private database, a namespace, subprocesses
faults_own_redis FaultEnv  the same on a Redis of the test's own (`own_redis`), for Redis faults;
                           the witness handlers record into the session Redis, which no test faults
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.dev import RedisServer
from tests.e2e.conftest import db_url, own_redis, template_database  # noqa: F401 - fixtures reused as they are
from tests.faults.harness import FaultEnv, make_fault_env


@pytest.fixture
def faults(redis_url: str, db_url: str, namespace: str, tmp_path: Path) -> Iterator[FaultEnv]:  # noqa: F811
    handle = make_fault_env(redis_url, db_url, namespace, tmp_path, witness_url=redis_url)
    yield handle
    handle.close()


@pytest.fixture
def faults_own_redis(
    own_redis: RedisServer,  # noqa: F811
    redis_url: str,
    db_url: str,  # noqa: F811
    namespace: str,
    tmp_path: Path,
) -> Iterator[FaultEnv]:
    handle = make_fault_env(own_redis.url, db_url, namespace, tmp_path, witness_url=redis_url)
    yield handle
    handle.close()
