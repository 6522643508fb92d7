"""The in-process tier's fixtures: a real `Coordinator` and `Worker` in the test process.

Both run against the session's redis-server and a private PostgreSQL database (cloned from a
migrated template, connected to as the DML-only app role, as the e2e suite does). The test drives
each coordinator by hand, one `Coordinator.step(block_ms=…)` at a time, on a `ManualClock` that only
the test moves (no lease renewal, reconcile or timer happens unless the test advances it); a worker
runs as an asyncio task on a thread of its own (`WorkerThread`), stopped by `request_stop`.
The fixture `tier` (tests/integration/conftest.py) hands each test one `Tier`:

    tier         Tier          settings (1 partition), redis, store, queries, submitter, keys, clock
    tier.coordinator(name)     a started Coordinator; tier.drive(coord, until) steps it until a condition
    tier.worker({name: func})  a context manager running a Worker that serves these handlers
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis

from orchestrator import bus
from orchestrator.coordinator import Coordinator
from orchestrator.keys import Keys
from orchestrator.settings import Settings
from orchestrator.spec import load_workflow
from orchestrator.store.queries import RunQueries
from orchestrator.store.runs import RunStore
from orchestrator.submit import Submitter
from orchestrator.wire import FIELD, ResultMessage, StepMessage, decode_result, decode_step
from workers.consumer import Worker
from workers.registry import HandlerRegistry

__all__ = ["ManualClock", "Tier", "WorkerThread"]

# One partition: every run lands on it, so that a second coordinator takes over all or nothing.
SETTINGS: dict[str, Any] = {
    "coordinator": {"partitions": 1, "lease_ttl": 3, "timeout_grace": 2, "reconcile_interval": 1},
    "worker": {"visibility_timeout": 3, "heartbeat_interval": 0.5, "drain_timeout": 5, "max_deliveries": 3},
    "redis": {"block_ms": 50},
}


class ManualClock:
    """The coordinators' clock: it moves only when the test says so."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class WorkerThread:
    """A real `Worker` whose `run()` is an asyncio task on its own thread and event loop."""

    def __init__(self, settings: Settings, registry: HandlerRegistry, *, worker_id: str) -> None:
        self.settings = settings
        self.registry = registry
        self.worker_id = worker_id
        self.exit_code: int | None = None
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._worker: Worker | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name=f"worker-{worker_id}", daemon=True)

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(timeout=10):
            raise AssertionError(f"the in-process worker did not start: {self.error!r}")

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as e:  # reported by stop(), never swallowed
            self.error = e
            self._ready.set()

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        # Built on its loop: the worker's asyncio Redis client belongs to it.
        worker = Worker(
            settings=self.settings, registry=self.registry, queues=["default"], concurrency=2, worker_id=self.worker_id
        )
        # Worker.run() installs log redaction for the whole process (structlog processors, sys.stdout,
        # the logging record factory) and never removes it; in-process that would outlive the test.
        worker.redactor.install_log_processors = lambda: None  # type: ignore[method-assign]
        self._worker = worker
        self._ready.set()
        self.exit_code = await worker.run(install_signals=False)

    def stop(self, timeout: float = 15.0) -> None:
        if self._loop is not None and self._worker is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._worker.request_stop)
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the in-process worker did not stop"
        if self.error is not None:
            raise AssertionError("the in-process worker crashed") from self.error
        assert self.exit_code == 0, f"the in-process worker exited with {self.exit_code}"


class Tier:
    """One test's servers, clients and the coordinators it built."""

    def __init__(self, *, redis_url: str, db_url: str, namespace: str, home: Path) -> None:
        self.settings = Settings(redis_url=redis_url, database_url=db_url, namespace=namespace, home=home, **SETTINGS)
        self.keys = Keys(namespace)
        self.redis = redis.Redis.from_url(redis_url)
        self.store = RunStore(db_url, pool_size=4)
        self.store.open()
        self.queries = RunQueries(self.store)
        self.submitter = Submitter(settings=self.settings, store=self.store, client=self.redis)
        self.clock = ManualClock(1_700_000_000.0)
        self.coordinators: list[Coordinator] = []

    # -- coordinators --------------------------------------------------------------------------------

    def coordinator(self, name: str) -> Coordinator:
        """A new, started coordinator (leases, groups, epoch), as `steppe coordinator` builds it."""
        coord = Coordinator(
            settings=self.settings, client=self.redis, store=self.store, clock=self.clock, coordinator_id=name
        )
        coord.start()
        self.coordinators.append(coord)
        return coord

    def drive(self, coord: Coordinator, until: Callable[[], object], *, steps: int = 200, block_ms: int = 20) -> int:
        """Step `coord` until `until()` holds; returns the steps it took (fails after `steps`)."""
        for n in range(1, steps + 1):
            coord.step(block_ms=block_ms)
            if until():
                return n
        raise AssertionError(f"{coord.id}: not reached after {steps} steps: {getattr(until, '__name__', until)}")

    def expire_leases(self) -> None:
        """What the lease TTL does to a coordinator that stopped renewing (it died or hung)."""
        with self.store.connection() as conn, conn.transaction():
            conn.execute("UPDATE coordinator_leases SET expires_at = now() - interval '1 second'")

    # -- runs, streams -------------------------------------------------------------------------------

    def submit(self, yaml_text: str, inputs: dict[str, Any] | None = None) -> str:
        spec = load_workflow(yaml_text)
        return self.submitter.submit(spec, inputs=inputs, check_handlers=False).run_id

    def published(self, queue: str = "default") -> list[StepMessage]:
        """Every step message on the queue's streams (all priorities), acknowledged or not."""
        return [
            decode_step(fields[FIELD]) for s in self.keys.queue_streams(queue) for _, fields in self.redis.xrange(s)
        ]

    def results(self, partition: int = 0) -> list[ResultMessage]:
        return [decode_result(fields[FIELD]) for _, fields in self.redis.xrange(self.keys.results_stream(partition))]

    def send_result(self, result: ResultMessage, partition: int = 0) -> None:
        """A worker's report, appended as a worker's flush appends it."""
        bus.send(self.redis, [(self.keys.results_stream(partition), result)])

    def steps(self, run_id: str) -> dict[str, tuple[str, int]]:
        """Stored (status, attempts) of each step."""
        return {k: (v["status"], v["attempts"]) for k, v in self.queries.get_run(run_id)["steps"].items()}

    def status(self, run_id: str) -> str:
        return str(self.queries.get_run(run_id)["status"])

    def event_types(self, run_id: str) -> list[tuple[str, str | None]]:
        return [(e["type"], e["step_key"]) for e in self.queries.events(run_id)]

    # -- workers -------------------------------------------------------------------------------------

    @contextmanager
    def worker(self, handlers: dict[str, Callable[..., Any]]) -> Iterator[WorkerThread]:
        registry = HandlerRegistry()
        for name, func in handlers.items():
            registry.register(name, func)
        thread = WorkerThread(self.settings, registry, worker_id=f"w-{uuid.uuid4().hex[:6]}")
        thread.start()
        try:
            yield thread
        finally:
            thread.stop()

    def close(self) -> None:
        for coord in self.coordinators:
            coord.stop()
        self.store.close()
        self.redis.close()
