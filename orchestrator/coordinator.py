"""The coordinator loop: read results and wake-ups, apply them, commit, then publish.

One iteration:

1. read a batch from the results and control streams of the partitions this coordinator
   leases (XREADGROUP COUNT n, BLOCK until the next timer);
2. apply each result to its run's `RunEngine` (fenced by attempt), fire due timers
   (retries, timeouts), and process durable commands (cancel, retry) from PostgreSQL;
3. commit every resulting event and projection row in ONE PostgreSQL transaction;
4. only then publish the dispatches (pipelined XADD) and acknowledge the batch (XACK).

A crash between 3 and 4 leaves steps dispatched in PostgreSQL but absent from Redis;
the reconciler (`_reconcile`) finds and re-publishes them, and attempt fencing keeps
any duplicate execution from being applied twice.
"""

from __future__ import annotations

import heapq
import itertools
import os
import random
import socket
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson
import redis
import structlog

from orchestrator import bus, fault_points, metrics, redis_clients, streams
from orchestrator.children import ChildRuns
from orchestrator.engine import Dispatch, RunEngine, Timer
from orchestrator.errors import ConflictError, InfrastructureError, RunDataError, SteppeError
from orchestrator.hook_runner import HookRunner
from orchestrator.keys import COORDINATOR_GROUP, Keys
from orchestrator.quarantine import BatchSplitter
from orchestrator.run_inputs import InputsPublisher
from orchestrator.settings import Settings, check_timing
from orchestrator.spec import WorkflowSpec
from orchestrator.state import TERMINAL_RUN_STATUSES, RunStatus
from orchestrator.step_keys import StepRole, role_of
from orchestrator.store.dead_letters import DeadLetterStore, sync_from_stream
from orchestrator.store.hooks import HookStore
from orchestrator.store.leases import LeaseManager
from orchestrator.store.runs import RunStore, RunWrite, StoredRun
from orchestrator.wire import FIELD, ControlMessage, ResultMessage, decode_control, decode_result, encode, read_entry
from orchestrator.workflow import CompiledWorkflow, compile_workflow
from patterns.dead_letter import DeadLetter
from patterns.hierarchical import ChildStart
from patterns.hooks import HOOKS_QUEUE

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class _Tracked:
    engine: RunEngine
    version: int
    workflow: str


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
        self.redis = client
        self.store = store
        self.clock = clock
        self.keys = Keys(settings.namespace)
        self.id = coordinator_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._reader = redis_clients.SlotReader(COORDINATOR_GROUP, self.id)
        self.leases = LeaseManager(store, owner=self.id, partitions=self.cfg.partitions, ttl=self.cfg.lease_ttl)
        self.hooks = HookRunner(HookStore(store), clock=clock)
        self.splitter = BatchSplitter(store=store, owner=self.id)
        self.children = ChildRuns(
            store=store, client=client, keys=self.keys, partitions=self.cfg.partitions, limits=settings.limits
        )
        self._child_results: list[ResultMessage] = []  # outcomes of finished child runs, found by reconcile
        self.partitions: list[int] = []
        self.runs: dict[str, _Tracked] = {}
        self._timers: list[tuple[float, int, Timer]] = []
        self._timer_seq = itertools.count()
        self._compiled: dict[bytes, CompiledWorkflow] = {}
        self._unpublished: list[Dispatch] = []
        self.inputs = InputsPublisher(self.keys)  # each run's inputs key, for workers' ctx.inputs
        self._replay_pending = True
        self._epoch = uuid.uuid4().hex
        self._next_lease = 0.0
        self._next_reconcile = 0.0
        self._known_queues: set[str] = set()
        self._lost = streams.LostMessages()
        self.stopping = False
        self.rng = random.Random()

    # -- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> None:
        bus.ping(self.redis, "the configured Redis URL")
        warning = bus.check_noeviction(self.redis)
        if warning:
            log.warning("redis_eviction_policy_unsafe", detail=warning)
        self.leases.ensure_rows()
        self.redis.set(self.keys.epoch, self._epoch, nx=True)
        self._epoch = (self.redis.get(self.keys.epoch) or self._epoch.encode()).decode()
        self._ensure_queues([HOOKS_QUEUE])
        self._maintain_leases(force=True)
        log.info("coordinator_started", coordinator=self.id, partitions=self.partitions)

    def stop(self) -> None:
        try:
            self.leases.release()
            self.redis.zrem(self.keys.coordinators, self.id)
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
                    trouble = redis_clients.Trouble.UNAVAILABLE if isinstance(e, bus.RECOVERABLE) else None
                    trouble = trouble or redis_clients.classify(e)
                    if trouble is None:
                        raise
                    if trouble is redis_clients.Trouble.DATA_LOST:
                        self._known_queues.clear()  # their groups may be gone too: recreate on use
                    delay = outage.failed(e, trouble)
                    self._forget_all()
                    time.sleep(delay)
        finally:
            self.stop()

    # -- one iteration -------------------------------------------------------------------------------

    def step(self, *, block_ms: int | None = None) -> int:  # noqa: PLR0912, PLR0915 - the loop reads top to bottom
        """Run one loop iteration; returns the number of stream entries processed."""
        started = time.perf_counter()
        now = self.clock()
        if now >= self._next_lease:
            self._maintain_leases()
        if now >= self._next_reconcile:
            self._reconcile()
        self._flush_unpublished()
        entries = self._read(block_ms)
        touched: set[str] = set()
        acks: dict[str, list[bytes]] = {}
        control_runs: set[str] = set()
        commands = False
        results: list[ResultMessage] = []
        unreadable: list[streams.Unreadable] = []
        for stream, entry_id, fields in entries:
            acks.setdefault(stream, []).append(entry_id)
            if fields is None:  # trimmed while pending: nothing to apply
                continue
            message: ControlMessage | ResultMessage | None
            if stream.endswith(":control"):
                message, refused = read_entry(fields, decode_control)
            else:
                message, refused = read_entry(fields, decode_result)
            if refused is not None:
                unreadable.append((stream, entry_id, fields, *refused))
            elif isinstance(message, ControlMessage):
                if message.kind == "submitted":
                    control_runs.add(message.run)
                else:
                    commands = True
            elif isinstance(message, ResultMessage):
                results.append(message)
        if unreadable:  # before the acks: after a crash they are read, and dead-lettered, again
            streams.dead_letter_unreadable(self.redis, self.keys, unreadable, by=self.id)
        if control_runs:
            touched |= self._admit(control_runs)
        processed_commands = self._apply_commands() if commands else []
        touched |= {c[1] for c in processed_commands}
        if self._child_results:
            results.extend(self._child_results)
            self._child_results = []
        unknown = {r.run for r in results if r.run not in self.runs}
        if unknown:
            self._load(unknown)
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
                metrics.DUPLICATES.labels(kind=result.status).inc()
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
        touched |= self._fire_timers()
        self._unpublished.extend(self.hooks.due(self.clock()))
        self._commit(touched, [c[0] for c in processed_commands], dead_letters)
        self._flush_unpublished(acks)
        elapsed = time.perf_counter() - started
        metrics.COORDINATOR_LOOP.observe(elapsed)
        metrics.COORDINATOR_HEARTBEAT.set(time.time())
        return len(entries)

    def _read(self, block_ms: int | None) -> list[tuple[str, bytes, dict[bytes, bytes] | None]]:
        if not self.partitions:
            time.sleep(min(1.0, self.cfg.lease_ttl / 3))
            return []
        streams: dict[str, str] = {}
        start_id = "0" if self._replay_pending else ">"
        for p in self.partitions:
            streams[self.keys.control_stream(p)] = start_id
            streams[self.keys.results_stream(p)] = start_id
        if block_ms is None:
            block_ms = self.settings.redis.block_ms
            if self._timers:
                block_ms = max(1, min(block_ms, int((self._timers[0][0] - self.clock()) * 1000)))
        try:
            # One XREADGROUP; against a Redis Cluster, one per partition (each is its own slot).
            reply = self._reader.read(
                self.redis,
                streams,
                count=self.cfg.batch_size,
                block=None if self._replay_pending else block_ms,
            )
        except redis.ResponseError as e:
            if redis_clients.classify(e) is not redis_clients.Trouble.DATA_LOST:
                raise
            # Redis lost its data (restart without persistence, FLUSHALL, failover): NOGROUP, or
            # UNBLOCKED for the read Redis 7 was blocking when the stream vanished. Reconcile now.
            log.warning("coordinator_groups_missing", error=str(e))
            bus.ensure_partition_groups(self.redis, self.keys, self.partitions)
            self._next_reconcile = 0.0
            return []
        out: list[tuple[str, bytes, dict[bytes, bytes] | None]] = []
        drained = True
        for stream_name, messages in reply or []:
            name = stream_name.decode() if isinstance(stream_name, bytes) else stream_name
            if messages:
                drained = False
            for entry_id, fields in messages:
                out.append((name, entry_id, fields))  # None: trimmed while pending
        if self._replay_pending and drained:
            self._replay_pending = False
        return out

    # -- admitting runs and commands ----------------------------------------------------------------

    def _admit(self, run_ids: Iterable[str]) -> set[str]:
        fresh = [r for r in run_ids if r not in self.runs]
        self._load(fresh)
        started: set[str] = set()
        for run_id in fresh:
            tracked = self.runs.get(run_id)
            if tracked is not None and tracked.engine.run.status is RunStatus.PENDING:
                tracked.engine.start()
                metrics.RUNS_SUBMITTED.labels(workflow=tracked.workflow).inc()
                started.add(run_id)
        return started

    def _load(self, run_ids: Iterable[str]) -> None:
        wanted = [r for r in run_ids if r not in self.runs]
        for stored in self.store.load_runs(wanted):
            if stored.partition not in self.partitions:
                continue
            if stored.projection.status in TERMINAL_RUN_STATUSES:
                continue  # late results of a finished run are duplicates; a retry command re-admits it
            self._track(stored)

    def _track(self, stored: StoredRun) -> _Tracked | None:
        try:
            workflow = self._compile(stored.definition)
        except (ValueError, SteppeError) as e:  # it validated at submit; validation became stricter since
            self.splitter.fail_unloadable(stored.run_id, e)
            return None
        except Exception as e:  # a stored definition that no longer loads is an operator problem
            log.error("run_definition_unloadable", run_id=stored.run_id, error=str(e))
            return None
        engine = RunEngine(
            workflow=workflow,
            projection=stored.projection,
            inputs=stored.inputs,
            partition=stored.partition,
            timeout_grace=self.cfg.timeout_grace,
            clock=self.clock,
            rng=self.rng,
            depth=stored.depth,
            max_depth=self.settings.limits.workflow_depth,
            limits=self.settings.limits,
            pre_checks=self.hooks.pre_checks(workflow),
        )
        tracked = _Tracked(engine=engine, version=stored.version, workflow=stored.workflow)
        self.runs[stored.run_id] = tracked
        self._take_timers(engine)
        return tracked

    def _compile(self, definition: dict[str, Any]) -> CompiledWorkflow:
        cache_key = orjson.dumps(definition, option=orjson.OPT_SORT_KEYS)
        compiled = self._compiled.get(cache_key)
        if compiled is None:
            compiled = compile_workflow(WorkflowSpec.model_validate(definition))
            if len(self._compiled) > 1024:
                self._compiled.clear()
            self._compiled[cache_key] = compiled
            self._ensure_queues(compiled.queues)
        return compiled

    def _ensure_queues(self, queues: Iterable[str]) -> None:
        new = set(queues) - self._known_queues
        if new:
            bus.ensure_queue_groups(self.redis, self.keys, new)
            self._known_queues |= new

    def _apply_commands(self) -> list[tuple[int, str]]:
        done: list[tuple[int, str]] = []
        commands = self.store.pending_commands(self.partitions)
        if not commands:
            return done
        needed = {c["run_id"] for c in commands}
        for stored in self.store.load_runs([r for r in needed if r not in self.runs]):
            if stored.partition in self.partitions:
                self._track(stored)
        for command in commands:
            tracked = self.runs.get(command["run_id"])
            if tracked is not None:
                engine = tracked.engine
                if command["command"] == "cancel" and engine.request_cancel():
                    self.redis.zadd(self.keys.cancelled, {engine.run.run_id: self.clock()})
                    log.info("run_cancel_requested", run_id=engine.run.run_id)
                elif command["command"] == "retry" and engine.resume((command["payload"] or {}).get("overrides")):
                    self.redis.zrem(self.keys.cancelled, engine.run.run_id)
                    log.info("run_resumed", run_id=engine.run.run_id)
            done.append((command["command_id"], command["run_id"]))
        return done

    # -- timers ---------------------------------------------------------------------------------------

    def _take_timers(self, engine: RunEngine) -> None:
        for timer in engine.drain().timers:  # a freshly loaded engine holds only its timers
            heapq.heappush(self._timers, (timer.due, next(self._timer_seq), timer))

    def _fire_timers(self) -> set[str]:
        touched: set[str] = set()
        now = self.clock()
        while self._timers and self._timers[0][0] <= now:
            _, _, timer = heapq.heappop(self._timers)
            tracked = self.runs.get(timer.run_id)
            if tracked is not None:
                before = tracked.engine.run.last_seq
                tracked.engine.on_timer(timer)
                if tracked.engine.run.last_seq != before:
                    touched.add(timer.run_id)
        return touched

    # -- commit, publish, ack -------------------------------------------------------------------------

    def _commit(  # noqa: PLR0915 - collect, commit, then bookkeeping, top to bottom
        self, touched: set[str], commands: list[int], dead_letters: list[DeadLetter]
    ) -> None:
        writes: list[RunWrite] = []
        outbox: list[Dispatch] = []
        timers: list[Timer] = []
        finished: list[_Tracked] = []
        children: list[ChildStart] = []
        child_cancels: list[str] = []
        for run_id in touched:
            tracked = self.runs.get(run_id)
            if tracked is None:
                continue
            engine = tracked.engine
            out = engine.drain()
            events, dispatches, comp_dead = out.events, out.dispatches, out.dead_letters
            children += out.child_starts
            child_cancels += out.child_cancels
            timers.extend(out.timers)
            if not events:
                continue
            run = engine.run
            keys = {e.step for e in events if e.step is not None}
            writes.append(
                RunWrite(
                    run_id=run_id,
                    expected_version=tracked.version,
                    status=run.status,
                    state=run.state,
                    last_seq=run.last_seq,
                    events=events,
                    steps={k: run.steps[k] for k in keys},
                    finished=engine.finished,
                )
            )
            metrics.count_step_events(events, engine.run.steps, engine.messages.labels_of)
            outbox.extend(dispatches)
            self.hooks.on_events(
                run_id=run_id, partition=engine.partition, workflow=engine.wf, inputs=engine.inputs, events=events
            )
            dead_letters.extend(comp_dead)
            if engine.finished:
                finished.append(tracked)
        hooks = self.hooks.take_batch()
        if not writes and not commands and not dead_letters and not hooks:
            return
        dispatching = len(outbox) + len(children) + len(hooks.dispatches)
        fault_points.crash_point("BEFORE_COMMIT", dispatching)
        try:
            self.store.commit_batch(
                writes,
                owner=self.id,
                processed_commands=commands,
                dead_letters=dead_letters,
                hook_rows=hooks.rows,
                hook_counts=hooks.counts,
            )
        except ConflictError as e:
            log.warning("batch_conflict", error=str(e), runs=len(writes))
            self._forget_all()
            self._next_lease = 0.0
            return
        except RunDataError as e:
            # The others commit one by one, the run at fault is failed (orchestrator/quarantine.py);
            # the batch is then acknowledged and the reconciler publishes what committed.
            log.warning("batch_refused", error=str(e), runs=len(writes))
            self._forget_all()
            if not self.splitter.split(writes, commands, dead_letters, hooks.rows, hooks.counts):
                self._next_lease = 0.0  # a run changed hands meanwhile
            return
        except Exception:
            self._forget_all()
            raise
        fault_points.crash_point("AFTER_COMMIT", dispatching)
        for w in writes:
            self.runs[w.run_id].version += 1
        for timer in timers:
            heapq.heappush(self._timers, (timer.due, next(self._timer_seq), timer))
        self._unpublished.extend(outbox)
        self._unpublished.extend(self.hooks.committed())
        self.children.start(children)
        self.children.cancel(child_cancels)
        for tracked in finished:
            self._on_finished(tracked)

    def _flush_unpublished(self, acks: dict[str, list[bytes]] | None = None) -> None:
        """Publish committed dispatches, then acknowledge the batch, in one pipeline (headed by
        the inputs keys of their runs and the deletion of finished runs' keys, `run_inputs`)."""
        if not self._unpublished and not acks and not self.inputs.has_deletes:
            return
        pending, self._unpublished = self._unpublished, []
        pipe = self.redis.pipeline(transaction=False)
        inputs = self.inputs.stage(pipe, pending)
        for d in pending:
            pipe.xadd(self.keys.queue_stream(d.queue, d.priority), {FIELD: encode(d.message)})
        for stream, ids in (acks or {}).items():
            pipe.xack(stream, COORDINATOR_GROUP, *ids)
        try:
            replies = pipe.execute()
        except bus.RETRYABLE:
            # The pipeline may have run before the connection broke, so publishing again could
            # deliver a step twice. The caller reloads from PostgreSQL instead, and the reconciler
            # re-publishes exactly the dispatched attempts that Redis does not hold.
            raise
        self.inputs.published(inputs, replies, self.redis)

    def _on_finished(self, tracked: _Tracked) -> None:
        run = tracked.engine.run
        metrics.RUNS_FINISHED.labels(workflow=tracked.workflow, status=str(run.status)).inc()
        log.info("run_finished", run_id=run.run_id, workflow=tracked.workflow, status=str(run.status))
        self.children.report(run.run_id, run.status, run.state)
        self.inputs.finished(run.run_id, tracked.engine.partition)
        self.runs.pop(run.run_id, None)

    def _forget_all(self) -> None:
        """Drop in-memory state after a failed write; it is reloaded from PostgreSQL."""
        self.runs.clear()
        self._timers.clear()
        self._unpublished.clear()  # the reconciler re-publishes what Redis lacks once runs reload
        self.inputs.forget()  # and writes their inputs keys again with them
        self.hooks.forget()
        self._replay_pending = True
        self._next_reconcile = 0.0

    # -- leases and reconciliation --------------------------------------------------------------------

    def _maintain_leases(self, *, force: bool = False) -> None:
        info = {
            "id": self.id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "partitions": self.partitions,
            "runs": len(self.runs),
            "heartbeat": self.clock(),
        }
        peers = bus.coordinator_heartbeat(self.redis, self.keys, info, ttl=self.cfg.lease_ttl)
        held = self.leases.rebalance(self.partitions, peers_hint=peers)
        gained = sorted(set(held) - set(self.partitions))
        lost = set(self.partitions) - set(held)
        self.partitions = held
        if lost:
            log.info("partitions_released", partitions=sorted(lost))
            for run_id in [r for r, t in self.runs.items() if t.engine.partition in lost]:
                self.runs.pop(run_id, None)
            self.hooks.forget(lost)
            self.inputs.release(lost)
        if gained or force:
            bus.ensure_partition_groups(self.redis, self.keys, self.partitions)
            streams.claim_backlog(self.redis, self.keys, gained, consumer=self.id)
            self._replay_pending = True
            self._next_reconcile = 0.0
            log.info("partitions_acquired", partitions=gained)
        self._next_lease = self.clock() + self.cfg.lease_ttl / 3
        metrics.ACTIVE_RUNS.set(len(self.runs))

    def _reconcile(self) -> None:
        """Recover what a crash or a Redis data loss left behind; see the module docstring."""
        self._next_reconcile = self.clock() + self.cfg.reconcile_interval
        if not self.partitions:
            return
        epoch = self.redis.get(self.keys.epoch)
        redis_lost_data = epoch is None or epoch.decode() != self._epoch
        if redis_lost_data:
            log.warning("redis_data_loss_detected", action="recreating groups and re-publishing in-flight steps")
            self.redis.set(self.keys.epoch, self._epoch)
            self.inputs.forget()  # the re-published steps below bring their runs' inputs keys back
            bus.ensure_partition_groups(self.redis, self.keys, self.partitions)
            self._known_queues.clear()
        self.hooks.refresh()
        active = set(self.store.active_run_ids(self.partitions))
        newly = active - set(self.runs)
        before = set(self.runs)
        self._load(newly)
        loaded = set(self.runs) - before
        self._child_results.extend(self.children.reconcile(t.engine for t in self.runs.values()))
        for tracked in self.runs.values():
            self._ensure_queues(tracked.engine.wf.queues)
        # Re-publish dispatched attempts that Redis holds nowhere (lost, or never published
        # because a coordinator died between its commit and its XADD). Runs started just
        # below are excluded: their first dispatches are not published yet.
        check = set(self.runs) if redis_lost_data else loaded
        hooks_due = self.hooks.reload(self.partitions)
        candidates = [
            d
            for run_id in check
            if self.runs[run_id].engine.run.status is not RunStatus.PENDING
            for d in self.runs[run_id].engine.in_flight_dispatches()
        ]
        candidates += self.hooks.in_flight() if redis_lost_data else hooks_due
        if candidates:
            present = (
                set()
                if redis_lost_data
                else streams.attempts_in_redis(self.redis, self.keys, {d.queue for d in candidates}, self.partitions)
            )
            missing = [d for d in candidates if (d.message.run, d.message.step, d.message.attempt) not in present]
            if missing:
                log.warning("steps_republished", count=len(missing), reason="absent from Redis")
                self._unpublished.extend(missing)
        elif not redis_lost_data:
            self._republish_lost_messages()
        touched = set()
        for run_id in loaded:
            engine = self.runs[run_id].engine
            if engine.run.status is RunStatus.PENDING:
                engine.start()
                touched.add(run_id)
        if touched:
            self._commit(touched, [], [])
        if self.store.pending_commands(self.partitions):
            processed = self._apply_commands()
            self._commit({c[1] for c in processed}, [c[0] for c in processed], [])
        # Undecodable messages exist only in the dead-letter stream: give each its PostgreSQL row.
        sync_from_stream(self.redis, self.keys, DeadLetterStore(self.store))
        self._trim_streams()
        self._queue_metrics()

    def _republish_lost_messages(self) -> None:
        """Re-publish dispatched attempts absent from Redis at two reconciles in a row (see
        `streams.LostMessages`)."""
        candidates = [d for t in self.runs.values() for d in t.engine.in_flight_dispatches(started=False)]
        candidates += self.hooks.in_flight()
        lost = self._lost.check(candidates, self._attempts_in_redis)
        if lost:
            log.warning("steps_republished", count=len(lost), reason="message missing from Redis")
            self._unpublished.extend(lost)

    def _attempts_in_redis(self, queues: set[str]) -> set[tuple[str, str, int]]:
        return streams.attempts_in_redis(self.redis, self.keys, queues, self.partitions)

    def _trim_streams(self) -> None:
        streams.trim_acknowledged(self.redis, self.keys, self._known_queues, self.partitions)

    def _queue_metrics(self) -> None:
        streams.export_queue_metrics(self.redis, self.keys, self._known_queues)
        live_since = self.clock() - 3 * self.settings.worker.heartbeat_interval
        metrics.LIVE_WORKERS.set(int(self.redis.zcount(self.keys.workers, live_since, "+inf")))
        metrics.ACTIVE_RUNS.set(len(self.runs))


# -- TEST-ONLY fault injection (tests/faults, docs/reliability.md scenario 5) -----------------------------
