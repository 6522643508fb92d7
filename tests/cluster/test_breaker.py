"""A shared circuit breaker on a Redis Cluster: two workers' clients, the cluster's own clock."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from pybreaker import STATE_HALF_OPEN, STATE_OPEN

from orchestrator import redis_clients
from orchestrator.dev.redis_cluster import LocalRedisCluster
from orchestrator.keys import Keys
from patterns.breaker import BreakerConfig, CircuitOpenError, SharedBreaker

pytestmark = [pytest.mark.cluster, pytest.mark.integration]


def test_failures_from_two_workers_open_the_breaker_and_one_trial_follows(redis_cluster: LocalRedisCluster) -> None:
    keys = Keys(f"t{uuid.uuid4().hex[:12]}")
    config = BreakerConfig(fail_max=2, reset_timeout=0.3)

    async def body() -> None:
        clients = [redis_clients.async_client(redis_cluster.url, socket_timeout=10, connect_timeout=2) for _ in "ab"]
        try:
            a, b = (SharedBreaker(name="pay", config=config, client=c, keys=keys) for c in clients)
            await a.record(await a.acquire(lease=5), RuntimeError("down"))
            await b.record(await b.acquire(lease=5), RuntimeError("down"))
            assert (await b.state()).state == STATE_OPEN
            with pytest.raises(CircuitOpenError):
                await a.acquire(lease=5)
            await asyncio.sleep(0.4)  # past reset_timeout on the Redis clock
            trial = await b.acquire(lease=5)
            assert trial.trial
            with pytest.raises(CircuitOpenError):
                await a.acquire(lease=5)  # only one trial while half-open
            assert (await a.state()).state == STATE_HALF_OPEN
            await b.record(trial, None)
            assert (await a.state()).state == "closed"
        finally:
            for c in clients:
                await c.aclose()

    asyncio.run(body())
