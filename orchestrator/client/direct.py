"""The direct transport: PostgreSQL and Redis, through the same `Submitter` and `RunStore` as the CLI.

Settings are `STEPPE_*` from the environment (or the `Settings` given), falling back to the
embedded servers `steppe dev up` recorded in STEPPE_HOME, exactly as `steppe submit` does.
Connections open on first use; `close()` releases them.

Waiting for a run (`wait`): the coordinator announces a finished run neither in PostgreSQL
(no NOTIFY) nor in Redis, so the wait polls the run's status — one primary-key lookup of one
column — with a backoff from 5 ms to 1 s (x1.5 per poll, transport.poll_delays): a short run is
seen finished within a few ms of its end, an hour-long wait costs one small query a second.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

from orchestrator.client import waits
from orchestrator.client.sources import Document
from orchestrator.client.transport import SubmitResult, cancel_refusal, poll_delays, retry_refusal
from orchestrator.state import TERMINAL_RUN_STATUSES

if TYPE_CHECKING:
    import redis

    from orchestrator.client.waits import Accepted
    from orchestrator.settings import Settings
    from orchestrator.signals import Signaller
    from orchestrator.store.queries import RunQueries
    from orchestrator.store.runs import RunStore
    from orchestrator.submit import Submitter

T = TypeVar("T")


def with_statement_timeout(url: str, seconds: float) -> str:
    """`url` with a server-side statement timeout, unless it already sets libpq `options`."""
    if "options=" in url:
        return url
    option = quote(f"-c statement_timeout={max(1, int(seconds * 1000))}")
    return f"{url}{'&' if '?' in url else '?'}options={option}"


class DirectTransport:
    """Submits and reads runs in this process; thread-safe (a connection pool and one Redis client)."""

    def __init__(self, settings: Settings | None, *, connect_timeout: float, timeout: float) -> None:
        self._settings = settings
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self._lock = threading.Lock()
        self._store: RunStore | None = None
        self._redis: redis.Redis | None = None
        self._submitter: Submitter | None = None

    # -- connections -------------------------------------------------------------------------------

    def _open(self) -> Submitter:
        with self._lock:
            if self._submitter is not None:
                return self._submitter
            from orchestrator import bus
            from orchestrator.settings import Settings
            from orchestrator.store.runs import RunStore
            from orchestrator.submit import Submitter

            base = self._settings or Settings()
            settings = base.model_copy(
                update={
                    "redis": base.redis.model_copy(
                        update={"connect_timeout": self.connect_timeout, "socket_timeout": self.timeout}
                    ),
                    "database": base.database.model_copy(
                        update={"connect_timeout": max(1, round(self.connect_timeout))}
                    ),
                }
            )
            redis_url = settings.resolved_redis_url()
            db_url = with_statement_timeout(settings.resolved_database_url(), self.timeout)
            client = bus.connect(settings, redis_url)
            try:
                bus.ping(client, redis_url)
                store = RunStore(
                    db_url,
                    pool_size=settings.database.pool_size,
                    connect_timeout=round(self.connect_timeout),
                    durability=settings.durability,
                )
                store.open(wait_timeout=self.connect_timeout)
            except BaseException:
                client.close()
                raise
            self._redis, self._store = client, store
            self._submitter = Submitter(settings=settings, store=store, client=client)
            return self._submitter

    @property
    def store(self) -> RunStore:
        return self._open().store

    @property
    def submitter(self) -> Submitter:
        """The connected Submitter: its settings, store and Redis client (`steppe mcp` reads the
        worker registry and dead letters through them)."""
        return self._open()

    @property
    def queries(self) -> RunQueries:
        from orchestrator.store.queries import RunQueries

        return RunQueries(self.store)

    def close(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.close()
            if self._redis is not None:
                self._redis.close()
            self._store = self._redis = self._submitter = None

    # -- operations --------------------------------------------------------------------------------

    def submit(
        self, document: Document, *, inputs: dict[str, Any], idempotency_key: str | None, check_handlers: bool
    ) -> SubmitResult:
        submitter = self._open()
        if document.ref is not None:
            from orchestrator.deployed import submit_ref

            done = submit_ref(
                submitter, document.ref, inputs=inputs, idempotency_key=idempotency_key, check_handlers=check_handlers
            )
            return SubmitResult(run_id=done.run_id, workflow=done.workflow, created=done.created)
        spec = submitter.load(document.text, filename=document.filename)
        done = submitter.submit(
            spec,
            inputs=inputs,
            idempotency_key=idempotency_key,
            check_handlers=check_handlers,
            base_dir=document.base_dir,
        )
        return SubmitResult(run_id=done.run_id, workflow=done.workflow, created=done.created)

    def get(self, run_id: str) -> dict[str, Any]:
        doc = self.queries.get_run(run_id)
        doc.pop("definition", None)
        return doc

    def wait(self, run_id: str, timeout: float) -> dict[str, Any]:
        """The status document once the run is finished, or when `timeout` seconds have passed."""
        queries = self.queries
        poll_until_terminal(lambda: queries.run_status(run_id), timeout, time.sleep)
        return self.get(run_id)

    def cancel(self, run_id: str) -> None:
        submitter = self._open()
        refusal = cancel_refusal(run_id, self.queries.run_status(run_id))
        if refusal:
            raise refusal
        submitter.request(run_id, "cancel")

    def retry(self, run_id: str) -> None:
        submitter = self._open()
        refusal = retry_refusal(run_id, self.queries.run_status(run_id))
        if refusal:
            raise refusal
        submitter.request(run_id, "retry")

    def runs(self, *, status: str | None, workflow: str | None, limit: int) -> list[dict[str, Any]]:
        return self.queries.list_runs(status=status, workflow=workflow, limit=limit)

    def history(self, run_id: str, *, after: int) -> list[dict[str, Any]]:
        return self.queries.events(run_id, after=after)

    def _signaller(self) -> Signaller:
        from orchestrator.signals import Signaller

        submitter = self._open()
        return Signaller(settings=submitter.settings, store=submitter.store, client=submitter.redis)

    def signal(self, run_id: str, name: str, payload: Any, *, idempotency_key: str | None) -> Accepted:
        return waits.direct_signal(self._signaller(), run_id, name, payload, idempotency_key)

    def decide(self, run_id: str, step: str, *, approve: bool, by: str | None, comment: str | None) -> Accepted:
        return waits.direct_decision(self._signaller(), run_id, step, approve=approve, by=by, comment=comment)


def poll_until_terminal(status_of: Callable[[], str], timeout: float, sleep: Callable[[float], object]) -> str:
    """Poll `status_of` with backoff until it is terminal or `timeout` passed; the last status."""
    deadline = time.monotonic() + timeout
    for delay in poll_delays():
        status = status_of()
        remaining = deadline - time.monotonic()
        if status in TERMINAL_RUN_STATUSES or remaining <= 0:
            return status
        sleep(min(delay, remaining))
    raise AssertionError("unreachable")  # pragma: no cover


class AsyncDirectTransport:
    """The direct transport for asyncio: each call runs in a worker thread (psycopg and redis-py
    sync clients, the same code paths as the CLI), and waits sleep on the event loop between polls."""

    def __init__(self, settings: Settings | None, *, connect_timeout: float, timeout: float) -> None:
        self.sync = DirectTransport(settings, connect_timeout=connect_timeout, timeout=timeout)

    async def _call(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.to_thread(func, *args, **kwargs)

    async def close(self) -> None:
        await self._call(self.sync.close)

    async def submit(
        self, document: Document, *, inputs: dict[str, Any], idempotency_key: str | None, check_handlers: bool
    ) -> SubmitResult:
        return await self._call(
            self.sync.submit, document, inputs=inputs, idempotency_key=idempotency_key, check_handlers=check_handlers
        )

    async def get(self, run_id: str) -> dict[str, Any]:
        return await self._call(self.sync.get, run_id)

    async def wait(self, run_id: str, timeout: float) -> dict[str, Any]:
        queries = await self._call(lambda: self.sync.queries)
        deadline = time.monotonic() + timeout
        for delay in poll_delays():
            status = await self._call(queries.run_status, run_id)
            remaining = deadline - time.monotonic()
            if status in TERMINAL_RUN_STATUSES or remaining <= 0:
                break
            await asyncio.sleep(min(delay, remaining))
        return await self.get(run_id)

    async def cancel(self, run_id: str) -> None:
        await self._call(self.sync.cancel, run_id)

    async def retry(self, run_id: str) -> None:
        await self._call(self.sync.retry, run_id)

    async def runs(self, *, status: str | None, workflow: str | None, limit: int) -> list[dict[str, Any]]:
        return await self._call(self.sync.runs, status=status, workflow=workflow, limit=limit)

    async def history(self, run_id: str, *, after: int) -> list[dict[str, Any]]:
        return await self._call(self.sync.history, run_id, after=after)

    async def signal(self, run_id: str, name: str, payload: Any, *, idempotency_key: str | None) -> Accepted:
        return await self._call(self.sync.signal, run_id, name, payload, idempotency_key=idempotency_key)

    async def decide(self, run_id: str, step: str, *, approve: bool, by: str | None, comment: str | None) -> Accepted:
        return await self._call(self.sync.decide, run_id, step, approve=approve, by=by, comment=comment)
