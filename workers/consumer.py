"""The worker process: read step messages from queue streams, run them, report results.

Reading: one XREADGROUP over the queue's priority streams (high, normal, low) with
COUNT = free slots; entries are started highest priority first (against a Redis Cluster,
one XREADGROUP per queue: each queue is its own slot). Reporting: finished attempts are
batched; against one Redis each batch is one MULTI/EXEC of result XADDs and XACKs; against
a cluster, where those keys live in different slots, the XADDs are written first and the
XACKs only once every XADD succeeded. Either way a result is never acknowledged without being
published (a crash in between leaves a duplicate result, which the coordinator fences by attempt).
Liveness: every heartbeat the worker refreshes its registry entry, resets the idle time of its in-flight entries
(XCLAIM … JUSTID, i.e. extends their lease), cancels steps of cancelled runs, and
reclaims entries idle past the visibility timeout (XPENDING IDLE + XCLAIM) from dead workers;
entries delivered more than `max_deliveries` times, undecodable or trimmed ones are
dead-lettered.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import msgspec
import orjson
import redis
import structlog

from orchestrator import metrics, redis_clients
from orchestrator.keys import WORKER_GROUP, Keys
from orchestrator.settings import Settings, check_timing
from orchestrator.wire import (
    FIELD,
    ResultMessage,
    StepErrorInfo,
    StepMessage,
    decode_step,
    encode,
    version_problem,
)
from patterns.breaker import BreakerRegistry
from patterns.dead_letter import DeadLetterReason, stream_entry
from workers.inputs import InputsCache
from workers.registry import MIN_ENTRY_TTL, HandlerRegistry, entry_ttl, stale_workers
from workers.runner import Redactor, StepRunner
from workers.secrets import SecretStore

log = structlog.get_logger(__name__)

# A still-running attempt is reported as started after this long (fast steps report only once).
STARTED_AFTER = 0.5
CONNECTION_ERRORS = (redis.ConnectionError, redis.TimeoutError, OSError, *redis_clients.CLUSTER_ERRORS)


class _HandlerThreads(ThreadPoolExecutor):
    """The sync handlers' thread pool; counts the calls still running, finished or not awaited."""

    def __init__(self, *, max_workers: int, thread_name_prefix: str) -> None:
        super().__init__(max_workers=max_workers, thread_name_prefix=thread_name_prefix)
        self._lock = threading.Lock()
        self.running = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        with self._lock:
            self.running += 1
        future = super().submit(fn, *args, **kwargs)
        future.add_done_callback(self._finished)
        return future

    def _finished(self, _future: Future[Any]) -> None:
        with self._lock:
            self.running -= 1


@dataclass(eq=False)
class _InFlight:
    stream: str
    entry_id: bytes
    message: StepMessage
    deliveries: int
    started: float
    task: asyncio.Task[None] | None = None
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    reported_started: bool = False
    finished: bool = False  # the handler is done; its result waits for the next flush


class Worker:
    """A stateless worker: everything it holds can be lost and is recovered by others."""

    def __init__(
        self,
        *,
        settings: Settings,
        registry: HandlerRegistry,
        queues: list[str],
        concurrency: int | None = None,
        worker_id: str | None = None,
        redis_url: str | None = None,
    ) -> None:
        check_timing(settings, "worker")  # refuse contradictory timeouts before touching Redis
        self.settings = settings
        self.cfg = settings.worker
        self.registry = registry
        self.queues = queues
        self.concurrency = concurrency or self.cfg.concurrency
        self.id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.redis_url = redis_url or settings.resolved_redis_url()
        self.keys = Keys(settings.namespace)
        self.streams = [s for q in queues for s in self.keys.queue_streams(q)]
        self.redactor = Redactor()
        self.executor = _HandlerThreads(max_workers=self.concurrency + 4, thread_name_prefix="steppe-handler")
        self.runner = StepRunner(
            registry=registry,
            executor=self.executor,
            worker_id=self.id,
            payload_limit=settings.limits.payload_bytes,
            redactor=self.redactor,
            secrets=SecretStore.from_settings(settings),  # only what STEPPE_SECRETS(_DIR) expose
        )
        self.inflight: dict[tuple[str, bytes], _InFlight] = {}
        self._reader = redis_clients.SlotReader(WORKER_GROUP, self.id)
        self._cluster = False
        self._outbox: list[tuple[_InFlight | None, ResultMessage | None, dict[str, Any] | None]] = []
        self._outbox_ready = asyncio.Event()
        self._slots = asyncio.Event()
        self._stopping = asyncio.Event()
        self._crashed = False
        self._executing = 0  # handlers running now (in-flight entries minus those awaiting their flush)
        self._lease_outage = redis_clients.Outage("lease_extension_failed", log, fields={"worker": self.id})
        self._evicting = True  # evict other workers' stale registry entries at each heartbeat
        self.processed = 0

    # -- lifecycle -----------------------------------------------------------------------------------

    async def run(self, *, install_signals: bool = True) -> int:
        socket_timeout = max(self.settings.redis.socket_timeout, self.settings.redis.block_ms / 1000 + 5)
        self.redis = redis_clients.async_client(
            self.redis_url, socket_timeout=socket_timeout, connect_timeout=self.settings.redis.connect_timeout
        )
        self._cluster = redis_clients.is_cluster(self.redis)
        # Circuit breakers share their state through this worker's Redis (patterns.breaker).
        self.runner.breakers = BreakerRegistry(client=self.redis, keys=self.keys)
        # `ctx.inputs`: each run's inputs read once from Redis, then from this LRU (workers.inputs).
        self.runner.inputs = InputsCache(self.redis, self.keys)
        # Secrets resolved for handlers are redacted from every log line of this process.
        self.redactor.install_log_processors()
        if install_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.request_stop)
        await self._ensure_groups()
        await self._heartbeat()
        log.info(
            "worker_started",
            worker=self.id,
            queues=self.queues,
            concurrency=self.concurrency,
            handlers=len(self.registry.names()),
        )
        tasks = [
            asyncio.create_task(self._read_loop(), name="read"),
            asyncio.create_task(self._flush_loop(), name="flush"),
            asyncio.create_task(self._liveness_loop(), name="liveness"),
        ]
        for task in tasks:
            task.add_done_callback(self._on_task_done)
        await self._stopping.wait()
        stuck = await self._drain(tasks)
        exit_code = 1 if self._crashed else 0
        self.executor.shutdown(wait=False, cancel_futures=True)
        await self.redis.aclose()
        if install_signals and (self.executor.running or stuck):
            # Sync handlers that ignored their timeout still hold threads that cannot be
            # interrupted, and the interpreter joins every pool thread at exit; a task that
            # outlived its cancels would be awaited by the event loop's shutdown: either would
            # keep the process alive past its drain timeout. Their attempts were reported as
            # timed out or are left pending for another worker, so exit now.
            if self.executor.running:
                log.warning("worker_abandoned_handler_threads", worker=self.id, threads=self.executor.running)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(exit_code)
        return exit_code

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        """A loop that dies leaves a worker that looks alive but no longer reads, reports or
        heartbeats: stop (exit 1) so that the supervisor starts a healthy one instead."""
        if task.cancelled() or task.exception() is None:
            return
        error = task.exception()
        log.error("worker_loop_crashed", worker=self.id, loop=task.get_name(), error=repr(error))
        self._crashed = True
        self.request_stop()

    def request_stop(self) -> None:
        if not self._stopping.is_set():
            log.info("worker_stopping", worker=self.id, in_flight=len(self.inflight))
            self._stopping.set()
            self._slots.set()

    async def _drain(self, tasks: list[asyncio.Task[None]]) -> int:
        """Stop reading, let in-flight steps finish (bounded), publish their results, deregister.

        Everything after the drain timeout shares 5 more seconds. Returns how many tasks
        outlived every cancel (the caller then exits without waiting for them).
        """
        reader, flusher, liveness = tasks
        reader.cancel()
        deadline = time.monotonic() + self.cfg.drain_timeout
        while self.inflight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        drained = not self.inflight
        finish_by = deadline + 5
        while self._outbox and time.monotonic() < finish_by:
            await asyncio.sleep(0.02)
        # Left pending in Redis, abandoned steps are reclaimed after the visibility timeout.
        steps = [e.task for e in self.inflight.values() if e.task is not None]
        # One cancel is not enough: Python 3.11's asyncio.wait_for, which redis-py wraps around
        # every socket write, swallows a cancel that arrives as the write completes (CPython
        # gh-86296), and the flush and liveness loops then run on forever. Cancel until they end.
        pending = {t for t in [reader, flusher, liveness, *steps] if not t.done()}
        give_up = max(finish_by, time.monotonic() + 1.0)
        while pending and time.monotonic() < give_up:
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.1)
        for task in pending:
            where = [f"{f.f_code.co_filename}:{f.f_lineno} {f.f_code.co_name}" for f in task.get_stack(limit=8)]
            log.warning("worker_task_ignored_cancel", worker=self.id, task=task.get_name(), stack=where)
        try:
            async with asyncio.timeout(max(finish_by - time.monotonic(), 1.0)):
                pipe = self.redis.pipeline(transaction=False)
                pipe.zrem(self.keys.workers, self.id)
                pipe.delete(self.keys.worker(self.id))
                await pipe.execute()
        except CONNECTION_ERRORS as e:  # TimeoutError included (an OSError)
            log.warning("worker_deregister_failed", error=str(e) or type(e).__name__)
        log.info(
            "worker_stopped",
            worker=self.id,
            drained=drained,
            processed=self.processed,
            abandoned=len(self.inflight),
        )
        return len(pending)

    async def _ensure_groups(self) -> None:
        for stream in self.streams:
            try:
                await self.redis.xgroup_create(stream, WORKER_GROUP, id="0", mkstream=True)
            except redis.ResponseError as e:
                if "BUSYGROUP" not in str(e):
                    raise

    # -- reading -------------------------------------------------------------------------------------

    async def _recreate_groups(self) -> None:
        """After NOGROUP or UNBLOCKED: recreate this worker's groups; Redis trouble on the way is
        left for the next attempt, after the caller's back-off."""
        try:
            await self._ensure_groups()
        except Exception as e:
            if redis_clients.classify(e) is None:
                raise
            return
        log.info("worker_groups_recreated", worker=self.id, streams=len(self.streams))

    async def _read_loop(self) -> None:
        outage = redis_clients.Outage("worker_redis_unavailable", log, fields={"worker": self.id})
        while not self._stopping.is_set():
            # A slot frees when its handler finishes, not when its result is flushed, so reading
            # overlaps reporting; results awaiting a flush are bounded by another `concurrency`.
            free = min(self.concurrency - self._executing, 2 * self.concurrency - len(self.inflight))
            if free <= 0:
                self._slots.clear()
                await self._slots.wait()
                continue
            try:
                reply = await self._reader.aread(
                    self.redis, dict.fromkeys(self.streams, ">"), count=free, block=self.settings.redis.block_ms
                )
                outage.succeeded()
            except Exception as e:
                # Unreachable, LOADING, READONLY…: back off. NOGROUP, UNBLOCKED (Redis 7, the stream
                # vanished under the blocked read): Redis lost its data; recreate the groups and carry
                # on (the coordinator re-publishes what was lost). Anything else is a bug: crash.
                trouble = redis_clients.classify(e)
                if trouble is None:
                    raise
                delay = outage.failed(e, trouble)
                if trouble is redis_clients.Trouble.DATA_LOST:
                    await self._recreate_groups()
                await asyncio.sleep(delay)
                continue
            if not reply:
                continue
            by_stream = {(s.decode() if isinstance(s, bytes) else s): entries for s, entries in reply}
            for stream in self.streams:  # priority order
                for entry_id, fields in by_stream.get(stream, []):
                    self._accept(stream, entry_id, fields, deliveries=1)

    def _accept(
        self,
        stream: str,
        entry_id: bytes,
        fields: dict[bytes, bytes] | None,
        *,
        deliveries: int,
        reclaimed: bool = False,
    ) -> None:
        if (stream, entry_id) in self.inflight:
            return  # already running here (our lease extension was late): one execution is enough
        if fields is None:
            self._dead_letter(
                stream,
                entry_id,
                None,
                None,
                deliveries,
                DeadLetterReason.TRIMMED,
                "the entry was deleted from the stream while pending",
            )
            return
        raw = fields.get(FIELD, b"")
        try:
            message = decode_step(raw)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            self._dead_letter(stream, entry_id, None, raw, deliveries, DeadLetterReason.UNDECODABLE, str(e))
            return
        unreadable = version_problem(message)
        if unreadable is not None:
            # Never run what this worker may misread; the step fails with the reason (a result of a
            # version the coordinator reads), so its run still ends.
            self._dead_letter(stream, entry_id, message, raw, deliveries, DeadLetterReason.UNKNOWN_VERSION, unreadable)
            return
        if reclaimed:
            # A redelivery is a possible duplicate execution: say which step it is (RELIABILITY.md I2).
            log.info(
                "step_reclaimed",
                stream=stream,
                entry=entry_id.decode(),
                deliveries=deliveries,
                run_id=message.run,
                step=message.step,
                attempt=message.attempt,
            )
        if deliveries > self.cfg.max_deliveries:
            self._dead_letter(
                stream,
                entry_id,
                message,
                raw,
                deliveries,
                DeadLetterReason.MAX_DELIVERIES,
                f"delivered {deliveries} times (max_deliveries={self.cfg.max_deliveries}); "
                "the handler probably crashes or hangs its worker",
            )
            return
        entry = _InFlight(stream, entry_id, message, deliveries, time.monotonic())
        self.inflight[(stream, entry_id)] = entry
        self._executing += 1
        entry.task = asyncio.create_task(self._execute(entry))
        metrics.WORKER_INFLIGHT.set(len(self.inflight))

    async def _execute(self, entry: _InFlight) -> None:
        try:
            result = await self.runner.run(
                entry.message, on_heartbeat=lambda: self._extend([entry]), cancelled=entry.cancelled
            )
        finally:
            entry.finished = True
            self._executing -= 1
            self._slots.set()
        metrics.STEP_DURATION.labels(
            queue=self.keys.queue_of_stream(entry.stream), handler=entry.message.handler
        ).observe(result.duration)
        self._outbox.append((entry, result, None))
        self._outbox_ready.set()

    # -- reporting -----------------------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        outage = redis_clients.Outage("worker_flush_failed", log, first=0.5, cap=2.0, fields={"worker": self.id})
        while True:
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            while self._outbox:
                batch, self._outbox = self._outbox, []
                try:
                    await self._flush(batch)
                    outage.succeeded()
                except Exception as e:
                    # Nothing of a failed batch was acknowledged: keep it and retry (see `_flush`).
                    trouble = redis_clients.classify(e)
                    if trouble is None:
                        raise
                    self._outbox = batch + self._outbox
                    await asyncio.sleep(outage.failed(e, trouble))

    async def _flush(self, batch: list[tuple[_InFlight | None, ResultMessage | None, dict[str, Any] | None]]) -> None:
        # One Redis: a MULTI/EXEC. A cluster: the XADDs (other slots), and only then the XACKs.
        pipe = self.redis.pipeline(transaction=not self._cluster)
        acks: dict[str, list[bytes]] = {}
        for entry, result, dead in batch:
            if dead is not None:
                pipe.xadd(self.keys.dlq_stream, dead)
            if result is not None:
                partition = entry.message.partition if entry is not None else 0
                pipe.xadd(self.keys.results_stream(partition), {FIELD: encode(result)})
            if entry is not None and result is not None and result.status != "started":
                acks.setdefault(entry.stream, []).append(entry.entry_id)
            elif dead is not None:
                acks.setdefault(dead["stream"], []).append(dead["id"])
        if self._cluster:
            await pipe.execute()  # raises unless every XADD succeeded: nothing is acknowledged then
            pipe = self.redis.pipeline(transaction=False)
        for stream, ids in acks.items():
            pipe.xack(stream, WORKER_GROUP, *ids)
        await pipe.execute()
        for entry, result, _ in batch:
            if entry is not None and result is not None and result.status != "started":
                self.inflight.pop((entry.stream, entry.entry_id), None)
                self.processed += 1
        metrics.WORKER_INFLIGHT.set(len(self.inflight))
        self._slots.set()

    def _dead_letter(
        self,
        stream: str,
        entry_id: bytes,
        message: StepMessage | None,
        raw: bytes | None,
        deliveries: int,
        reason: DeadLetterReason,
        error: str,
    ) -> None:
        queue = self.keys.queue_of_stream(stream)
        log.warning(
            "step_dead_lettered",
            stream=stream,
            entry=entry_id.decode(),
            reason=reason,
            deliveries=deliveries,
            run_id=message.run if message else None,
            step=message.step if message else None,
        )
        metrics.DEAD_LETTERS.labels(queue=queue, reason=reason).inc()
        dead = stream_entry(
            stream=stream,
            entry_id=entry_id,
            queue=queue,
            deliveries=deliveries,
            reason=reason,
            error=self.redactor(error),
            raw=raw or b"",
            by=self.id,
        )
        result = None
        entry = None
        if message is not None:
            entry = _InFlight(stream, entry_id, message, deliveries, time.monotonic())
            result = ResultMessage(
                run=message.run,
                step=message.step,
                attempt=message.attempt,
                status="dead_lettered",
                worker=self.id,
                error=StepErrorInfo(type=reason.value, message=self.redactor(error), retryable=False),
                deliveries=deliveries,
                stream_id=entry_id.decode(),
                queue=queue,
            )
        # Without a decodable message there is no step to fail: the entry only goes to the DLQ
        # (a result for run "" would reach no run and be counted as a duplicate).
        self._outbox.append((entry, result, dead))
        self._outbox_ready.set()

    # -- liveness ------------------------------------------------------------------------------------

    async def _liveness_loop(self) -> None:
        interval = self.cfg.heartbeat_interval
        outage = redis_clients.Outage("worker_heartbeat_failed", log, fields={"worker": self.id})
        while True:
            await asyncio.sleep(min(interval, 1.0))
            try:
                self._report_started()
                await self._check_cancelled()
                if time.monotonic() - getattr(self, "_last_beat", 0.0) >= interval:
                    self._last_beat = time.monotonic()
                    await self._heartbeat()
                    self._after_outage()
                    self._extend(list(self.inflight.values()))
                    await self._reclaim()
                    if self.runner.breakers is not None:
                        await self.runner.breakers.refresh_metrics()
                outage.succeeded()
            except Exception as e:
                # The loop itself paces the retries (one beat per interval); see `_read_loop`.
                trouble = redis_clients.classify(e)
                if trouble is None:
                    raise
                outage.failed(e, trouble)
                if trouble is redis_clients.Trouble.DATA_LOST:
                    await self._recreate_groups()

    def _after_outage(self) -> None:
        """After a heartbeat gap longer than the visibility timeout (Redis stopped or unreachable,
        this process paused), every pending entry looks idle, those of live workers included:
        wait one visibility timeout before reclaiming, so that their owners extend them first."""
        now = time.monotonic()
        gap = now - getattr(self, "_beat_ok", now)
        self._beat_ok = now
        if gap > self.cfg.visibility_timeout:
            self._reclaim_after = now + self.cfg.visibility_timeout
            log.info("worker_reclaim_deferred", worker=self.id, heartbeat_gap=round(gap, 2))

    def _report_started(self) -> None:
        now = time.monotonic()
        for entry in self.inflight.values():
            if not entry.reported_started and not entry.finished and now - entry.started >= STARTED_AFTER:
                entry.reported_started = True
                m = entry.message
                started = ResultMessage(run=m.run, step=m.step, attempt=m.attempt, status="started", worker=self.id)
                self._outbox.append((entry, started, None))
                self._outbox_ready.set()

    async def _heartbeat(self) -> None:
        now = time.time()
        ttl = entry_ttl(self.cfg.heartbeat_interval)
        info = {
            "id": self.id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "queues": self.queues,
            "concurrency": self.concurrency,
            "in_flight": len(self.inflight),
            "processed": self.processed,
            "handlers": self.registry.names(),
            "heartbeat": now,
            "heartbeat_interval": self.cfg.heartbeat_interval,  # others judge this entry by it
        }
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(self.keys.worker(self.id), orjson.dumps(info), ex=int(ttl) + 1)
        pipe.zadd(self.keys.workers, {self.id: now})
        await pipe.execute()
        if self._evicting:
            await self._evict_stale(now)

    async def _evict_stale(self, now: float) -> None:
        """Drop registry entries of workers that missed 3 of *their own* heartbeats (`stale_workers`)."""
        try:
            rows = await self.redis.zrangebyscore(self.keys.workers, 0, now - MIN_ENTRY_TTL, withscores=True)
            quiet = {m.decode(): score for m, score in rows if m.decode() != self.id}
            infos = await self.redis.mget([self.keys.worker(i) for i in quiet]) if quiet else []
        except redis.NoPermissionError as e:
            # Housekeeping only (readers skip entries whose key expired): never a reason to stop.
            self._evicting = False
            log.warning(
                "worker_registry_eviction_disabled",
                worker=self.id,
                error=str(e),
                fix="grant the worker's Redis user +zrangebyscore and +mget on {ns}:workers and {ns}:worker:*",
            )
            return
        stale = stale_workers(now, dict(zip(quiet, infos, strict=True)))
        if not stale:
            return
        pipe = self.redis.pipeline(transaction=False)
        for worker_id in stale:
            # Only at the score read above: a worker that beat meanwhile keeps its entry.
            pipe.zremrangebyscore(self.keys.workers, quiet[worker_id], quiet[worker_id])
        await pipe.execute()
        log.info("workers_evicted", worker=self.id, evicted=stale)

    def _extend(self, entries: list[_InFlight]) -> None:
        """Reset the idle time of our in-flight entries so that nobody reclaims them."""
        by_stream: dict[str, list[bytes]] = {}
        for e in entries:
            by_stream.setdefault(e.stream, []).append(e.entry_id)
        for stream, ids in by_stream.items():
            asyncio.ensure_future(self._xclaim_justid(stream, ids))  # noqa: RUF006 - fire and forget

    async def _xclaim_justid(self, stream: str, ids: list[bytes]) -> None:
        try:
            await self.redis.xclaim(stream, WORKER_GROUP, self.id, 0, ids, justid=True)
            self._lease_outage.succeeded()
        except (*CONNECTION_ERRORS, redis.ResponseError) as e:
            # Logged once per outage; NOGROUP (data lost) is repaired by the read loop.
            self._lease_outage.failed(e, redis_clients.classify(e) or redis_clients.Trouble.UNAVAILABLE)

    async def _check_cancelled(self) -> None:
        if not self.inflight:
            return
        entries = list(self.inflight.values())
        scores = await self.redis.zmscore(self.keys.cancelled, [e.message.run for e in entries])
        for entry, score in zip(entries, scores, strict=True):
            if score is not None and not entry.cancelled.is_set() and entry.task is not None:
                entry.cancelled.set()
                entry.task.cancel()

    async def _reclaim(self) -> None:
        """Take over entries idle past the visibility timeout (their worker died or hung).

        An entry delivered once lost one worker (killed, stopped, cut off): all such entries
        are taken at once. An entry delivered more than once has outlived two workers and may
        be what kills them (a poison message): a worker runs at most one of these suspects at a
        time, fewest deliveries first, so that the next crash cannot take innocent entries with
        it (an innocent entry is delivered at most 3 times). Each claim counts a delivery; past
        `max_deliveries` the entry is dead-lettered instead of run.
        """
        free = self.concurrency - len(self.inflight)
        if free <= 0 or self._stopping.is_set() or time.monotonic() < getattr(self, "_reclaim_after", 0.0):
            return
        min_idle = int(self.cfg.visibility_timeout * 1000)
        suspect_running = any(e.deliveries > 2 for e in self.inflight.values())
        for stream in self.streams:
            rows = await self.redis.xpending_range(stream, WORKER_GROUP, "-", "+", free + 32, idle=min_idle)
            if not rows:
                continue
            fresh = [r for r in rows if r["times_delivered"] <= 1]
            suspects = sorted(
                (r for r in rows if r["times_delivered"] > 1), key=lambda r: (r["times_delivered"], r["message_id"])
            )
            wanted = {r["message_id"]: int(r["times_delivered"]) + 1 for r in fresh[:free]}
            if suspects and not suspect_running and len(wanted) < free:
                wanted[suspects[0]["message_id"]] = int(suspects[0]["times_delivered"]) + 1
                suspect_running = True
            if not wanted:
                continue
            reply = await self.redis.xclaim(stream, WORKER_GROUP, self.id, min_idle, list(wanted))
            claimed = {entry_id: fields for entry_id, fields in reply if entry_id is not None}
            # Not claimed: taken by another worker meanwhile, or deleted (trimmed) while pending,
            # which Redis 6.2 returns as a nil and 7.x silently drops from the pending list.
            gone = [i for i in wanted if i not in claimed and not await self.redis.xrange(stream, min=i, max=i)]
            if not claimed and not gone:
                continue
            metrics.RECLAIMS.labels(queue=self.keys.queue_of_stream(stream)).inc(len(claimed) + len(gone))
            for entry_id, fields in claimed.items():
                self._accept(stream, entry_id, fields, deliveries=wanted[entry_id], reclaimed=True)
            for entry_id in gone:
                self._accept(stream, entry_id, None, deliveries=wanted[entry_id], reclaimed=True)
            free -= len(claimed) + len(gone)
            if free <= 0:
                return
