"""The coordinator loop: read results and wake-ups, apply them, commit, then publish.

One iteration (`Coordinator.step`):

1. read a batch from the results and control streams of the partitions this coordinator
   leases (XREADGROUP COUNT n, BLOCK until the next timer);
2. apply each result to its run's `RunEngine` (fenced by attempt), fire due timers
   (retries, timeouts), and process durable commands (cancel, retry) from PostgreSQL;
3. commit every resulting event and projection row in ONE PostgreSQL transaction;
4. only then publish the dispatches (pipelined XADD) and acknowledge the batch (XACK).

A crash between 3 and 4 leaves steps dispatched in PostgreSQL but absent from Redis;
the reconciler (`orchestrator.reconciler`) finds and re-publishes them, and attempt fencing keeps
any duplicate execution from being applied twice.

This module keeps the control flow; every Redis call goes through its `CoordinatorBus`
(`orchestrator.coordinator_bus`), and each run's decisions come out of `RunEngine.drain()`.
"""

from __future__ import annotations

import os
import random
import socket
import time
import uuid
from collections.abc import Callable, Iterable

import redis
import structlog

from orchestrator import fault_points, metrics, redis_clients
from orchestrator.batch import Batch, Tracked
from orchestrator.children import ChildRuns
from orchestrator.coordinator_bus import CoordinatorBus, Inbox, trouble_of
from orchestrator.engine import Dispatch
from orchestrator.errors import ConflictError, InfrastructureError, RunDataError
from orchestrator.hook_runner import HookBatch, HookRunner
from orchestrator.keys import Keys
from orchestrator.limiter import Limiter
from orchestrator.quarantine import BatchSplitter
from orchestrator.reconciler import Reconciler
from orchestrator.republish import Republisher
from orchestrator.retention import Pruner
from orchestrator.run_loader import RunLoader
from orchestrator.scheduler import Scheduler
from orchestrator.settings import Settings, check_timing
from orchestrator.signal_delivery import SignalDelivery
from orchestrator.state import RunStatus
from orchestrator.step_keys import StepRole, role_of
from orchestrator.store.hooks import HookStore
from orchestrator.store.leases import LeaseManager
from orchestrator.store.limits import LimitStore
from orchestrator.store.runs import RunStore
from orchestrator.submit import Submitter
from orchestrator.timer_queue import TimerQueue
from orchestrator.tracing import RunSpans
from orchestrator.wait_metrics import WaitMetrics
from orchestrator.wire import ResultMessage
from patterns.dead_letter import DeadLetter
from patterns.hooks import HOOKS_QUEUE

log = structlog.get_logger(__name__)


class Coordinator:
    """Owns the runs of the partitions it leases and drives them to a terminal state."""

    def __init__(
        self,
        *,
        settings: Settings,
        client: redis.Redis,
        store: RunStore,
        clock: Callable[[], float] = time.time,
        coordinator_id: str | None = None,
    ) -> None:
        check_timing(settings, "coordinator")  # refuse contradictory timeouts before touching Redis
        self.settings = settings
        self.cfg = settings.coordinator
        self.store = store
        self.clock = clock
        self.keys = Keys(settings.namespace)
        self.id = coordinator_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.bus = CoordinatorBus(client, self.keys, consumer=self.id)
        self.leases = LeaseManager(store, owner=self.id, partitions=self.cfg.partitions, ttl=self.cfg.lease_ttl)
        self.hooks = HookRunner(HookStore(store), clock=clock)
        self.splitter = BatchSplitter(store=store, owner=self.id)
        self.rng = random.Random()
        self.loader = RunLoader(
            store=store,
            settings=settings,
            clock=clock,
            rng=self.rng,
            hooks=self.hooks,
            splitter=self.splitter,
            on_compiled=lambda compiled: self.bus.ensure_queues(compiled.queues),
        )
        self.children = ChildRuns(
            store=store, client=client, keys=self.keys, partitions=self.cfg.partitions, limits=settings.limits
        )
        self._child_results: list[ResultMessage] = []  # outcomes of finished child runs, found by reconcile
        self.partitions: list[int] = []
        self.runs: dict[str, Tracked] = {}
        self.timers = TimerQueue()
        self._unpublished: list[Dispatch] = []
        self._next_lease = 0.0
        self._next_reconcile = 0.0
        self.republisher = Republisher(self.bus, self.hooks)
        self.reconciler = Reconciler(self)  # the periodic recovery pass
        self.wait_metrics = WaitMetrics()  # steppe_waiting_steps, steppe_signal_latency_seconds (§12.1)
        self.delivery = SignalDelivery(store, self.wait_metrics)  # signals and approvals to waiting steps
        self.limiter = Limiter(LimitStore(store), client, self.keys, clock)  # flow control (§12.2)
        self.run_spans: RunSpans | None = None  # set by `steppe coordinator` when tracing is on (§12.7)
        # Schedules of this coordinator's partitions (orchestrator/scheduler.py), submitted as any run is.
        self.scheduler = Scheduler(submitter=Submitter(settings=settings, store=store, client=client), clock=clock)
        self.pruner = Pruner(store=store, settings=settings.retention, clock=clock)
        self.stopping = False
        self._conflicts = 0  # batches fenced by a lease lost to another coordinator (`_write`)

    # -- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> None:
        self.bus.check_server()
        self.leases.ensure_rows()
        self.bus.claim_epoch()
        self.bus.ensure_queues([HOOKS_QUEUE])
        self._maintain_leases(force=True)
        log.info("coordinator_started", coordinator=self.id, partitions=self.partitions)

    def stop(self) -> None:
        try:
            self.leases.release()
            self.bus.deregister()
        except (InfrastructureError, redis.RedisError) as e:
            log.warning("coordinator_release_failed", error=str(e))
        log.info("coordinator_stopped", coordinator=self.id)

    def run_forever(self) -> None:
        self.start()
        # Logged once per outage (and when its kind changes), then once more on recovery.
        outage = redis_clients.Outage("coordinator_infrastructure_error", log, fields={"coordinator": self.id})
        try:
            while not self.stopping:
                try:
                    self.step()
                    outage.succeeded()
                except Exception as e:
                    # PostgreSQL or Redis unreachable, or a Redis error to wait out (LOADING, READONLY,
                    # UNBLOCKED, NOGROUP…): back off, reload from PostgreSQL, reconcile, carry on.
                    trouble = trouble_of(e)
                    if trouble is None:
                        raise
                    if trouble is redis_clients.Trouble.DATA_LOST:
                        self.bus.forget_queues()  # their groups may be gone too: recreate on use
                    delay = outage.failed(e, trouble)
                    self._forget_all()
                    time.sleep(delay)
        finally:
            self.stop()

    # -- one iteration -------------------------------------------------------------------------------

    def step(self, *, block_ms: int | None = None) -> int:
        """Run one loop iteration; returns the number of stream entries processed."""
        started = time.perf_counter()
        self._housekeeping()
        inbox = self._read(block_ms)
        if inbox.unreadable:  # before the acks: after a crash they are read, and dead-lettered, again
            self.bus.dead_letter_unreadable(inbox.unreadable)
        touched = self._admit(inbox.submitted) if inbox.submitted else set()
        processed = self._apply_commands() if inbox.commands else []
        touched |= {run_id for _, run_id in processed}
        results, self._child_results = inbox.results + self._child_results, []
        changed, dead_letters = self._apply_results(results)
        touched |= changed
        touched |= self._fire_timers()
        self._unpublished.extend(self.hooks.due(self.clock()))
        conflicts = self._conflicts
        self._commit(touched, [command_id for command_id, _ in processed], dead_letters)
        self._admit_throttled(woken=inbox.limits)
        # A batch fenced by a lost lease is not acknowledged: the next read replays the entries of the
        # partitions still held, and the lost ones' go to their new owner (`bus.hand_back`).
        self._flush_unpublished(inbox.acks if self._conflicts == conflicts else None)
        metrics.COORDINATOR_LOOP.observe(time.perf_counter() - started)
        metrics.COORDINATOR_HEARTBEAT.set(time.time())
        return inbox.count

    def _housekeeping(self) -> None:
        """Leases and reconciliation when they are due, then what an earlier iteration left unpublished."""
        now = self.clock()
        if now >= self._next_lease:
            self._maintain_leases()
        if now >= self._next_reconcile:
            self._reconcile()
        self.scheduler.tick(self.partitions)
        self.pruner.tick(now)  # retention: a background batch when due (orchestrator/retention.py)
        self._flush_unpublished()

    def _read(self, block_ms: int | None) -> Inbox:
        if not self.partitions:
            time.sleep(min(1.0, self.cfg.lease_ttl / 3))
            return Inbox()
        if block_ms is None:
            block_ms = self.settings.redis.block_ms
            due = min((t for t in (self.timers.next_due(), self.scheduler.next_due()) if t is not None), default=None)
            if due is not None:  # wake up for the next timer or schedule tick
                block_ms = max(1, min(block_ms, int((due - self.clock()) * 1000)))
        inbox = self.bus.read(self.partitions, count=self.cfg.batch_size, block_ms=block_ms)
        if inbox.groups_lost:
            self._next_reconcile = 0.0
        return inbox

    def _apply_results(self, results: list[ResultMessage]) -> tuple[set[str], list[DeadLetter]]:
        """Apply each result to its run, fenced by attempt; returns the runs changed and the dead letters."""
        unknown = {r.run for r in results if r.run not in self.runs}
        if unknown:
            self._load(unknown)
        touched: set[str] = set()
        dead_letters: list[DeadLetter] = []
        for result in results:
            role = role_of(result.step)
            if role is StepRole.HOOK:
                self.hooks.on_result(result)
                continue
            if role is StepRole.PRE:
                self.hooks.on_pre_check(result)
            tracked = self.runs.get(result.run)
            if tracked is None or not tracked.engine.on_result(result):
                metrics.child(metrics.DUPLICATES, result.status).inc()
                log.info(
                    "result_duplicate_ignored",
                    run_id=result.run,
                    step=result.step,
                    attempt=result.attempt,
                    status=result.status,
                    worker=result.worker,
                )
                continue
            touched.add(result.run)
            if result.status == "dead_lettered":
                dead_letters.append(DeadLetter.from_result(result))
        return touched, dead_letters

    # -- admitting runs and commands ----------------------------------------------------------------

    def _admit(self, run_ids: Iterable[str]) -> set[str]:
        fresh = [r for r in run_ids if r not in self.runs]
        self._load(fresh)
        started: set[str] = set()
        for run_id in fresh:
            tracked = self.runs.get(run_id)
            if tracked is not None and tracked.engine.run.status is RunStatus.PENDING:
                tracked.engine.start()
                metrics.child(metrics.RUNS_SUBMITTED, tracked.workflow).inc()
                started.add(run_id)
        return started

    def _load(self, run_ids: Iterable[str], *, finished_too: bool = False) -> None:
        """Track the runs of these ids that this coordinator's partitions hold and it does not track yet
        (finished ones only with `finished_too`: a retry command re-admits them)."""
        wanted = [r for r in run_ids if r not in self.runs]
        for tracked in self.loader.load(wanted, self.partitions, finished_too=finished_too):
            self.runs[tracked.engine.run.run_id] = tracked
            self.timers.push(tracked.engine.drain().timers)  # a freshly loaded engine holds only its timers
        self.delivery.on_loaded(self.runs, wanted)  # signals accepted before, kept until a step waits
        self.wait_metrics.recount(self.runs, wanted)

    def _apply_commands(self) -> list[tuple[int, str]]:
        done: list[tuple[int, str]] = []
        commands = self.store.pending_commands(self.partitions)
        if not commands:
            return done
        self._load({c["run_id"] for c in commands}, finished_too=True)
        for command in commands:
            tracked = self.runs.get(command["run_id"])
            if tracked is not None:
                engine = tracked.engine
                if command["command"] == "cancel" and engine.request_cancel():
                    self.bus.mark_cancelled(engine.run.run_id, self.clock())
                    log.info("run_cancel_requested", run_id=engine.run.run_id)
                elif command["command"] == "retry" and engine.resume((command["payload"] or {}).get("overrides")):
                    self.bus.unmark_cancelled(engine.run.run_id)
                    log.info("run_resumed", run_id=engine.run.run_id)
            done.append((command["command_id"], command["run_id"]))
        self.delivery.deliver(self.runs, {c["run_id"] for c in commands if c["command"] == "signal"})
        return done

    # -- timers ---------------------------------------------------------------------------------------

    def _fire_timers(self) -> set[str]:
        touched: set[str] = set()
        for timer in self.timers.pop_due(self.clock()):
            tracked = self.runs.get(timer.run_id)
            if tracked is not None:
                before = tracked.engine.run.last_seq
                tracked.engine.on_timer(timer)
                if tracked.engine.run.last_seq != before:
                    touched.add(timer.run_id)
        return touched

    # -- commit, publish, ack -------------------------------------------------------------------------

    def _commit(self, touched: set[str], commands: list[int], dead_letters: list[DeadLetter]) -> None:
        """Commit what the touched runs decided in one transaction; then act on it (`_committed`)."""
        batch = self._collect(touched, dead_letters)
        hooks = self.hooks.take_batch()
        if not batch.writes and not commands and not batch.dead_letters and not hooks:
            return
        dispatching = len(batch.dispatches) + len(batch.child_starts) + len(hooks.dispatches)
        fault_points.crash_point("BEFORE_COMMIT", dispatching)
        if not self._write(batch, commands, hooks):
            return
        fault_points.crash_point("AFTER_COMMIT", dispatching)
        self._committed(batch)

    def _collect(self, touched: set[str], dead_letters: list[DeadLetter]) -> Batch:
        """Drain each touched run's engine into one batch; its events also count and trigger hooks."""
        batch = Batch(dead_letters=dead_letters)
        counts = metrics.StepCounts()
        for run_id in touched:
            tracked = self.runs.get(run_id)
            if tracked is None:
                continue
            engine = tracked.engine
            out = engine.drain()
            if batch.add(tracked, out):
                counts.add(out.events, engine.run.steps, engine.messages.labels_of)
                self.hooks.on_events(
                    run_id=run_id,
                    partition=engine.partition,
                    workflow=engine.wf,
                    inputs=engine.inputs,
                    events=out.events,
                )
        counts.flush()
        return batch

    def _write(self, batch: Batch, commands: list[int], hooks: HookBatch) -> bool:
        """The one transaction of the batch; False when it did not commit (state is reloaded)."""
        try:
            self.store.commit_batch(
                batch.writes,
                owner=self.id,
                processed_commands=commands,
                dead_letters=batch.dead_letters,
                hook_rows=hooks.rows,
                hook_counts=hooks.counts,
            )
        except ConflictError as e:
            log.warning("batch_conflict", error=str(e), runs=len(batch.writes))
            self._conflicts += 1
            self._forget_all()
            self._next_lease = 0.0
            return False
        except RunDataError as e:
            # The others commit one by one, the run at fault is failed (orchestrator/quarantine.py);
            # the batch is then acknowledged and the reconciler publishes what committed.
            log.warning("batch_refused", error=str(e), runs=len(batch.writes))
            self._forget_all()
            if not self.splitter.split(batch.writes, commands, batch.dead_letters, hooks.rows, hooks.counts):
                self._next_lease = 0.0  # a run changed hands meanwhile
            return False
        except Exception:
            self._forget_all()
            raise
        return True

    def _committed(self, batch: Batch) -> None:
        for w in batch.writes:
            self.runs[w.run_id].version += 1
        self.timers.push(batch.timers)
        self.limiter.committed(batch)
        self._unpublished.extend(batch.dispatches)
        self._unpublished.extend(self.hooks.committed())
        self.children.start(batch.child_starts)
        self.children.cancel(batch.child_cancels)
        for tracked in batch.finished:
            self._on_finished(tracked)
        if batch.finished:
            _log_finished(batch.finished)
        if self.run_spans is not None and batch.finished:
            self.run_spans.finished([t.engine.run.run_id for t in batch.finished])
        self.wait_metrics.committed(batch.writes, self.runs)  # after finished runs were dropped

    def _admit_throttled(self, *, woken: bool = False) -> None:
        """Flow control after a commit: admit what freed slots and new waiters allow, commit those
        dispatches too (orchestrator/limiter.py), and wake up for the next rate window."""
        if woken:
            self.limiter.woken()
        touched = self.limiter.admit(self.runs, self.partitions)
        if touched:
            self._commit(touched, [], [])
        timer = self.limiter.timer()
        if timer is not None:
            self.timers.push([timer])

    def _flush_unpublished(self, acks: dict[str, list[bytes]] | None = None) -> None:
        """Publish committed dispatches, then acknowledge the batch read (one pipeline, `bus.publish`)."""
        pending, self._unpublished = self._unpublished, []
        self.bus.publish(pending, acks)

    def _on_finished(self, tracked: Tracked) -> None:
        run = tracked.engine.run
        metrics.child(metrics.RUNS_FINISHED, tracked.workflow, str(run.status)).inc()
        self.children.report(run.run_id, run.status, run.state)
        self.bus.run_finished(run.run_id, tracked.engine.partition, has_inputs=bool(tracked.engine.inputs))
        self.runs.pop(run.run_id, None)
        tracked.engine.release()  # freed by reference counting, not left to the cyclic GC

    def _forget_all(self) -> None:
        """Drop in-memory state after a failed write; it is reloaded from PostgreSQL."""
        self.runs.clear()
        self.timers.clear()
        self._unpublished.clear()  # the reconciler re-publishes what Redis lacks once runs reload
        self.bus.forget()  # replay unacknowledged entries; write inputs keys again with the steps
        self.hooks.forget()
        self.wait_metrics.sync(self.runs)
        self._next_reconcile = 0.0

    # -- leases and reconciliation --------------------------------------------------------------------

    def _maintain_leases(self, *, force: bool = False) -> None:
        peers = self.bus.heartbeat(self.partitions, runs=len(self.runs), now=self.clock(), ttl=self.cfg.lease_ttl)
        held = self.leases.rebalance(self.partitions, peers_hint=peers)
        gained = sorted(set(held) - set(self.partitions))
        lost = set(self.partitions) - set(held)
        self.partitions = held
        if lost:
            log.info("partitions_released", partitions=sorted(lost))
            for run_id in [r for r, t in self.runs.items() if t.engine.partition in lost]:
                self.runs.pop(run_id, None)
            self.hooks.forget(lost)
            self.bus.release(lost)
        if gained or force:
            self.scheduler.forget()
            self.bus.acquire(self.partitions, gained)
            self._next_reconcile = 0.0
            log.info("partitions_acquired", partitions=gained)
        self.bus.hand_back(lost)  # what it read of them, unacknowledged, to their new owner (and earlier leftovers)
        self._next_lease = self.clock() + self.cfg.lease_ttl / 3
        metrics.ACTIVE_RUNS.set(len(self.runs))
        self.wait_metrics.sync(self.runs)  # the waits of runs on partitions it lost are no longer its own

    def _reconcile(self) -> None:
        self.reconciler.run()  # orchestrator/reconciler.py


def _log_finished(finished: list[Tracked]) -> None:
    """One `runs_finished` line per batch (a line per run cost more CPU than applying the run), and a
    `run_finished` line per run that did not succeed; every run's line at debug level."""
    statuses: dict[str, int] = {}
    for tracked in finished:
        run = tracked.engine.run
        status = str(run.status)
        statuses[status] = statuses.get(status, 0) + 1
        if run.status is RunStatus.SUCCEEDED:
            log.debug("run_finished", run_id=run.run_id, workflow=tracked.workflow, status=status)
        else:
            log.info("run_finished", run_id=run.run_id, workflow=tracked.workflow, status=status)
    log.info("runs_finished", count=len(finished), statuses=statuses)


# -- TEST-ONLY fault injection (tests/faults, docs/reliability.md scenario 5) -----------------------------
