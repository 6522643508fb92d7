"""The process's shared clients: one Redis client and one run-store pool, opened in the lifespan."""

from __future__ import annotations

import threading

import redis
import structlog

from orchestrator import bus
from orchestrator.api.config import ApiSettings
from orchestrator.errors import DatabaseUnavailableError
from orchestrator.settings import Settings
from orchestrator.store.queries import RunQueries
from orchestrator.store.runs import RunStore
from orchestrator.submit import Submitter

log = structlog.get_logger(__name__)


class Resources:
    """Clients every request shares. The store is reopened on demand if PostgreSQL was down at start-up
    (a psycopg pool that failed to open cannot be reused), so the API can start before its database."""

    def __init__(self, *, settings: Settings, api: ApiSettings) -> None:
        self.settings = settings
        self.api = api
        self.redis_url = settings.resolved_redis_url()
        self.database_url = settings.resolved_database_url()
        self.redis: redis.Redis = bus.connect(settings, self.redis_url)
        self._store: RunStore | None = None
        self._lock = threading.Lock()

    def open(self) -> None:
        try:
            self.store()
        except DatabaseUnavailableError as e:
            log.warning("database_unavailable_at_startup", error=str(e))

    def store(self) -> RunStore:
        store = self._store
        if store is not None:
            return store
        with self._lock:
            if self._store is None:
                store = RunStore(
                    self.database_url,
                    pool_size=self.api.db_pool_size,
                    connect_timeout=self.settings.database.connect_timeout,
                    durability=self.settings.durability,
                )
                store.open(wait_timeout=float(self.settings.database.connect_timeout))
                self._store = store
            return self._store

    def queries(self) -> RunQueries:
        """The read paths (status documents, run lists, event logs) over the shared store."""
        return RunQueries(self.store())

    def submitter(self) -> Submitter:
        return Submitter(settings=self.settings, store=self.store(), client=self.redis)

    def close(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None
        self.redis.close()
