"""The worker process: read step messages from queue streams, run them, report results.

Three loops share one `WorkerStreams` (`workers.streams`), which sends every Redis command:
reading fills the free slots (highest priority first), reporting flushes finished attempts in
batches (a result is never acknowledged without being published), and liveness heartbeats,
extends the leases of in-flight entries, cancels steps of cancelled runs and reclaims entries
idle past the visibility timeout from dead workers. Entries delivered more than
`max_deliveries` times, undecodable, of an unknown schema version or trimmed ones are
dead-lettered. SIGTERM drains: no more reads, in-flight steps finish (bounded), their results
are published, the registry entry is removed.

Read-ahead: while the last read came back full (a backlog), the read loop leaves reading to the
flush loop, whose MULTI/EXEC carries the next XREADGROUP (without BLOCK, COUNT = the slots free
once the batch is acknowledged, minus those reserved by a read still under way): one round trip
per batch reports and reads. What it returns is accepted exactly as a read's entries; a short
read hands reading back to the read loop (and its blocking read). No read-ahead once stopping;
the drain waits for one under way, whose entries it runs like any other in-flight step.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
import uuid
from dataclasses import dataclass, field

import structlog

from orchestrator import metrics, redis_clients
from orchestrator.keys import Keys
from orchestrator.settings import Settings, check_timing
from orchestrator.wire import StepMessage
from patterns.breaker import BreakerRegistry
from patterns.dead_letter import DeadLetterReason
from workers import entries
from workers.entries import Delivery, Outgoing, Refused
from workers.inputs import InputsCache
from workers.lifecycle import HandlerThreads, cancel_until_done, exit_now
from workers.registry import HandlerRegistry
from workers.runner import Redactor, StepRunner
from workers.secrets import SecretStore
from workers.streams import WorkerStreams

log = structlog.get_logger(__name__)

# A still-running attempt is reported as started after this long (fast steps report only once).
STARTED_AFTER = 0.5


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
        self.executor = HandlerThreads(max_workers=self.concurrency + 4, thread_name_prefix="steppe-handler")
        self.runner = StepRunner(
            registry=registry,
            executor=self.executor,
            worker_id=self.id,
            payload_limit=settings.limits.payload_bytes,
            redactor=self.redactor,
            secrets=SecretStore.from_settings(settings),  # only what STEPPE_SECRETS(_DIR) expose
        )
        # Every Redis command about steps goes through `io` (it connects on its first command).
        self.io = WorkerStreams.connect(settings, self.redis_url, worker_id=self.id, streams=self.streams)
        self.inflight: dict[tuple[str, bytes], _InFlight] = {}
        self._outbox: list[Outgoing] = []
        self._outbox_ready = asyncio.Event()
        self._slots = asyncio.Event()
        self._stopping = asyncio.Event()
        self._crashed = False
        self._executing = 0  # handlers running now (in-flight entries minus those awaiting their flush)
        self._reserved = 0  # slots asked for by reads under way (the read loop's, a flush's read-ahead)
        self._ahead = False  # the last read came back full: the next flush carries the next read
        self._flushing = False
        self._last_beat = 0.0  # monotonic time of the last heartbeat attempt (0: none yet)
        self._beat_ok: float | None = None  # ... of the last heartbeat that succeeded (None: none yet)
        self._reclaim_after = 0.0  # no reclaim before this monotonic time (see `_after_outage`)
        self.processed = 0

    # -- lifecycle -----------------------------------------------------------------------------------

    async def run(self, *, install_signals: bool = True) -> int:
        # Circuit breakers share their state through this worker's Redis (patterns.breaker).
        self.runner.breakers = BreakerRegistry(client=self.io.client, keys=self.keys)
        # `ctx.inputs`: each run's inputs read once from Redis, then from this LRU (workers.inputs).
        self.runner.inputs = InputsCache(self.io.client, self.keys)
        # Secrets resolved for handlers are redacted from every log line of this process.
        self.redactor.install_log_processors()
        if install_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.request_stop)
        await self.io.ensure_groups()
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
        await self.io.aclose()
        if install_signals and (self.executor.running or stuck):
            exit_now(exit_code, threads=self.executor, worker=self.id)  # see there why
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
        while (self.inflight or self._flushing) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # a read-ahead under way brings steps to run like the others
        drained = not self.inflight
        finish_by = deadline + 5
        while self._outbox and time.monotonic() < finish_by:
            await asyncio.sleep(0.02)
        # Left pending in Redis, abandoned steps are reclaimed after the visibility timeout.
        steps = [e.task for e in self.inflight.values() if e.task is not None]
        give_up = max(finish_by, time.monotonic() + 1.0)
        stuck = await cancel_until_done([reader, flusher, liveness, *steps], until=give_up, worker=self.id)
        await self.io.deregister(timeout=max(finish_by - time.monotonic(), 1.0))
        log.info(
            "worker_stopped",
            worker=self.id,
            drained=drained,
            processed=self.processed,
            abandoned=len(self.inflight),
        )
        return stuck

    # -- reading -------------------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        outage = redis_clients.Outage("worker_redis_unavailable", log, fields={"worker": self.id})
        while not self._stopping.is_set():
            free = self._free(finishing=0)
            if free <= 0 or (self._ahead and (self._outbox or self._flushing)):
                self._slots.clear()  # set again when a slot frees or a flush ends
                await self._slots.wait()
                continue
            self._reserved += free
            try:
                deliveries = await self.io.read(count=free, block=self.settings.redis.block_ms)
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
                    await self.io.recreate_groups()
                await asyncio.sleep(delay)
                continue
            finally:
                self._reserved -= free
            self._ahead = len(deliveries) >= free
            for d in deliveries:  # highest priority first
                self._accept(d)

    def _free(self, *, finishing: int) -> int:
        """Slots a read may fill once `finishing` in-flight entries are acknowledged.

        A slot frees when its handler finishes, not when its result is flushed, so reading
        overlaps reporting; results awaiting a flush are bounded by another `concurrency`.
        """
        executing = self.concurrency - self._executing
        unflushed = 2 * self.concurrency - (len(self.inflight) - finishing)
        return min(executing, unflushed) - self._reserved

    def _accept(self, d: Delivery, *, reclaimed: bool = False) -> None:
        """Start the entry's step, or dead-letter the entry (trimmed, undecodable, unknown schema
        version, delivered more than `max_deliveries` times)."""
        if (d.stream, d.entry_id) in self.inflight:
            return  # already running here (our lease extension was late): one execution is enough
        message = d.decode()
        if isinstance(message, Refused):
            self._dead_letter(d, message)
            return
        if reclaimed:
            # A redelivery is a possible duplicate execution: say which step it is (docs/reliability.md I2).
            log.info(
                "step_reclaimed",
                stream=d.stream,
                entry=d.entry_id.decode(),
                deliveries=d.deliveries,
                run_id=message.run,
                step=message.step,
                attempt=message.attempt,
            )
        if d.deliveries > self.cfg.max_deliveries:
            error = (
                f"delivered {d.deliveries} times (max_deliveries={self.cfg.max_deliveries}); "
                "the handler probably crashes or hangs its worker"
            )
            self._dead_letter(d, Refused(message, d.raw, DeadLetterReason.MAX_DELIVERIES, error))
            return
        entry = _InFlight(d.stream, d.entry_id, message, d.deliveries, time.monotonic())
        self.inflight[(d.stream, d.entry_id)] = entry
        self._executing += 1
        entry.task = asyncio.create_task(self._execute(entry))
        metrics.WORKER_INFLIGHT.set(len(self.inflight))

    async def _execute(self, entry: _InFlight) -> None:
        try:
            result = await self.runner.run(
                entry.message,
                on_heartbeat=lambda: self._extend([entry]),
                cancelled=entry.cancelled,
                queue=self.keys.queue_of_stream(entry.stream),
            )
        finally:
            entry.finished = True
            self._executing -= 1
            self._slots.set()
        queue = self.keys.queue_of_stream(entry.stream)
        metrics.child(metrics.STEP_DURATION, queue, entry.message.handler).observe(result.duration)
        self._post(Outgoing(entry.stream, entry.entry_id, entry.message.partition, result))

    # -- reporting -----------------------------------------------------------------------------------

    def _post(self, out: Outgoing) -> None:
        """Hand `out` to the next flush."""
        self._outbox.append(out)
        self._outbox_ready.set()

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

    async def _flush(self, batch: list[Outgoing]) -> None:
        ahead = 0
        if self._ahead and self.io.reads_ahead and not self._stopping.is_set():
            finishing = sum(1 for out in batch if out.finishes and (out.stream, out.entry_id) in self.inflight)
            ahead = max(self._free(finishing=finishing), 0)
        self._flushing = True
        self._reserved += ahead
        try:
            # Raises, having acknowledged nothing, unless all was published.
            deliveries = await self.io.flush(batch, read_ahead=ahead)
        except BaseException:
            self._ahead = False  # the read loop reads (and repairs) on its own meanwhile
            raise
        finally:
            self._reserved -= ahead
            self._flushing = False
            self._slots.set()
        for out in batch:
            if out.finishes:
                self.inflight.pop((out.stream, out.entry_id), None)
                self.processed += 1
        if ahead:
            self._ahead = deliveries is not None and len(deliveries) >= ahead
            for d in deliveries or ():  # highest priority first, as the read loop's
                self._accept(d)
        metrics.WORKER_INFLIGHT.set(len(self.inflight))

    def _dead_letter(self, d: Delivery, refused: Refused) -> None:
        queue = self.keys.queue_of_stream(d.stream)
        message = refused.message
        log.warning(
            "step_dead_lettered",
            stream=d.stream,
            entry=d.entry_id.decode(),
            reason=refused.reason,
            deliveries=d.deliveries,
            run_id=message.run if message else None,
            step=message.step if message else None,
        )
        metrics.DEAD_LETTERS.labels(queue=queue, reason=refused.reason).inc()
        self._post(entries.dead_letter(d, refused, queue=queue, worker=self.id, error=self.redactor(refused.error)))

    # -- liveness ------------------------------------------------------------------------------------

    async def _liveness_loop(self) -> None:
        interval = self.cfg.heartbeat_interval
        outage = redis_clients.Outage("worker_heartbeat_failed", log, fields={"worker": self.id})
        while True:
            await asyncio.sleep(min(interval, 1.0))
            try:
                self._report_started()
                await self._check_cancelled()
                if time.monotonic() - self._last_beat >= interval:
                    self._last_beat = time.monotonic()
                    await self._beat()
                outage.succeeded()
            except Exception as e:
                # The loop itself paces the retries (one beat per interval); see `_read_loop`.
                trouble = redis_clients.classify(e)
                if trouble is None:
                    raise
                outage.failed(e, trouble)
                if trouble is redis_clients.Trouble.DATA_LOST:
                    await self.io.recreate_groups()

    async def _beat(self) -> None:
        """Once per heartbeat interval: the registry entry, our leases, the reclaim, breaker metrics."""
        await self._heartbeat()
        self._after_outage()
        self._extend(list(self.inflight.values()))
        await self._reclaim()
        if self.runner.breakers is not None:
            await self.runner.breakers.refresh_metrics()

    def _after_outage(self) -> None:
        """After a heartbeat gap longer than the visibility timeout (Redis stopped or unreachable,
        this process paused), every pending entry looks idle, those of live workers included:
        wait one visibility timeout before reclaiming, so that their owners extend them first."""
        now = time.monotonic()
        gap = now - (self._beat_ok if self._beat_ok is not None else now)
        self._beat_ok = now
        if gap > self.cfg.visibility_timeout:
            self._reclaim_after = now + self.cfg.visibility_timeout
            log.info("worker_reclaim_deferred", worker=self.id, heartbeat_gap=round(gap, 2))

    def _report_started(self) -> None:
        now = time.monotonic()
        for entry in self.inflight.values():
            if not entry.reported_started and not entry.finished and now - entry.started >= STARTED_AFTER:
                entry.reported_started = True
                self._post(entries.started(entry.stream, entry.entry_id, entry.message, worker=self.id))

    async def _heartbeat(self) -> None:
        info = {
            "id": self.id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "queues": self.queues,
            "concurrency": self.concurrency,
            "in_flight": len(self.inflight),
            "processed": self.processed,
            "handlers": self.registry.names(),
            "heartbeat": time.time(),
            "heartbeat_interval": self.cfg.heartbeat_interval,  # others judge this entry by it
        }
        await self.io.heartbeat(info, interval=self.cfg.heartbeat_interval)

    def _extend(self, entries: list[_InFlight]) -> None:
        """Reset the idle time of our in-flight entries so that nobody reclaims them."""
        self.io.extend((e.stream, e.entry_id) for e in entries)

    async def _check_cancelled(self) -> None:
        entries = list(self.inflight.values())
        cancelled = await self.io.cancelled([e.message.run for e in entries])
        for entry, is_cancelled in zip(entries, cancelled, strict=True):
            if is_cancelled and not entry.cancelled.is_set() and entry.task is not None:
                entry.cancelled.set()
                entry.task.cancel()

    async def _reclaim(self) -> None:
        """Take over entries idle past the visibility timeout (their worker died or hung), at most
        one poison suspect at a time (`workers.streams.choose_claims`). Each claim counts a
        delivery; past `max_deliveries` the entry is dead-lettered instead of run."""
        free = self.concurrency - len(self.inflight)
        if free <= 0 or self._stopping.is_set() or time.monotonic() < self._reclaim_after:
            return
        suspect_running = any(e.deliveries > 2 for e in self.inflight.values())
        min_idle = int(self.cfg.visibility_timeout * 1000)
        async for claimed in self.io.reclaim(free=free, min_idle=min_idle, suspect_running=suspect_running):
            for d in claimed:
                self._accept(d, reclaimed=True)
