"""Connections the CLI commands share: one Redis client and one run store per command."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

# Redis, PostgreSQL and the submit path (which brings the engine) load when a command connects,
# not when `steppe --help` or `steppe validate` starts.
if TYPE_CHECKING:
    import redis

    from orchestrator.settings import Settings
    from orchestrator.store.queries import RunQueries
    from orchestrator.store.runs import RunStore
    from orchestrator.submit import Submitter


@dataclass
class Clients:
    settings: Settings
    redis: redis.Redis
    store: RunStore

    @property
    def queries(self) -> RunQueries:
        from orchestrator.store.queries import RunQueries

        return RunQueries(self.store)

    @property
    def submitter(self) -> Submitter:
        from orchestrator.submit import Submitter

        return Submitter(settings=self.settings, store=self.store, client=self.redis)


@contextmanager
def connect(settings: Settings, *, need_redis: bool = True) -> Iterator[Clients]:
    """Open Redis and PostgreSQL, failing with exit code 3 and a how-to when either is down."""
    from orchestrator.store.runs import RunStore

    db_url = settings.resolved_database_url()
    redis_url = settings.resolved_redis_url() if need_redis else None
    client = None
    if redis_url:
        from orchestrator import bus

        client = bus.connect(settings, redis_url)
        bus.ping(client, redis_url)
    store = RunStore(
        db_url, pool_size=2, connect_timeout=settings.database.connect_timeout, durability=settings.durability
    )
    store.open()
    try:
        yield Clients(settings=settings, redis=client, store=store)
    finally:
        store.close()
        if client is not None:
            client.close()
