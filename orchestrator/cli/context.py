"""Connections the CLI commands share: one Redis client and one run store per command."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import redis

from orchestrator import bus
from orchestrator.settings import Settings
from orchestrator.store.runs import RunStore
from orchestrator.submit import Submitter


@dataclass
class Clients:
    settings: Settings
    redis: redis.Redis
    store: RunStore

    @property
    def submitter(self) -> Submitter:
        return Submitter(settings=self.settings, store=self.store, client=self.redis)


@contextmanager
def connect(settings: Settings, *, need_redis: bool = True) -> Iterator[Clients]:
    """Open Redis and PostgreSQL, failing with exit code 3 and a how-to when either is down."""
    db_url = settings.resolved_database_url()
    redis_url = settings.resolved_redis_url() if need_redis else None
    client = bus.connect(settings, redis_url) if redis_url else None
    if client is not None and redis_url is not None:
        bus.ping(client, redis_url)
    store = RunStore(db_url, pool_size=2, connect_timeout=settings.database.connect_timeout)
    store.open()
    try:
        yield Clients(settings=settings, redis=client, store=store)
    finally:
        store.close()
        if client is not None:
            client.close()
