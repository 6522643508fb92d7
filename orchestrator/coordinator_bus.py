"""Every Redis call of one coordinator, so that its loop (`orchestrator.coordinator`) keeps control flow only.

What a `CoordinatorBus` sends, by phase of the loop:

- start: PING, the eviction-policy check, the epoch of Redis's data (SET NX, GET);
- leases: the registry heartbeat (`bus.coordinator_heartbeat`); for the partitions held, the
  groups of their results and control streams, and XAUTOCLAIM of a gained partition's backlog;
  for a lost partition, its entries pending for this consumer handed back (XPENDING, XRANGE, then
  MULTI XADD of a copy + XACK of the original, `hand_back`);
- read: one XREADGROUP over those streams (one per slot against a cluster, `SlotReader`) —
  first the entries this consumer read but did not acknowledge, then new ones — sorted into an
  `Inbox`; a vanished group (Redis lost its data) is recreated and said so;
- publish: ONE pipeline without MULTI: the run-inputs keys (`run_inputs`), the XADD of each
  committed dispatch, then the XACK of the entries read (`publish`);
- commands: the cancelled-runs set (ZADD, ZREM) that workers check before running a step;
- reconcile: the epoch (missing or different: Redis lost its data), which attempts the streams
  hold, XTRIM of acknowledged entries, queue metrics, the dead-letter stream.

Child runs' wake-ups and outcomes (`children.ChildRuns`) and submissions (`submit`) append to
the same streams through `bus.send`, the one XADD of a wire message.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import redis
import structlog

from orchestrator import bus, metrics, redis_clients, streams
from orchestrator.keys import COORDINATOR_GROUP, Keys
from orchestrator.messages import Dispatch
from orchestrator.run_inputs import InputsPublisher
from orchestrator.store.dead_letters import DeadLetterStore, sync_from_stream
from orchestrator.wire import ControlMessage, ResultMessage, decode_control, decode_result, read_entry

__all__ = ["CoordinatorBus", "Entry", "Inbox", "sort_entries", "trouble_of"]

log = structlog.get_logger(__name__)

# One entry read from a results or control stream: (stream, id, fields); fields are None for an
# entry trimmed while pending (nothing to apply, only to acknowledge).
Entry = tuple[str, bytes, dict[bytes, bytes] | None]


@dataclass(slots=True)
class Inbox:
    """One read of the results and control streams, sorted by what the loop does with each entry."""

    count: int = 0  # entries read, trimmed ones included
    acks: dict[str, list[bytes]] = field(default_factory=dict)  # stream → ids, acknowledged with the publish
    submitted: set[str] = field(default_factory=set)  # runs a `submitted` wake-up names: admit them
    commands: bool = False  # a cancel or retry wake-up: read the pending commands from PostgreSQL
    results: list[ResultMessage] = field(default_factory=list)
    unreadable: list[streams.Unreadable] = field(default_factory=list)  # to dead-letter before the acks
    groups_lost: bool = False  # NOGROUP: the groups were recreated, reconcile now
    limits: bool = False  # another coordinator admitted throttled steps of these partitions (orchestrator.limiter)


def sort_entries(entries: Iterable[Entry]) -> Inbox:
    """Decode each entry (pure): control wake-ups, worker results, or unreadable ones."""
    inbox = Inbox()
    for stream, entry_id, fields in entries:
        inbox.count += 1
        inbox.acks.setdefault(stream, []).append(entry_id)
        if fields is None:  # trimmed while pending: nothing to apply
            continue
        message: ControlMessage | ResultMessage | None
        if stream.endswith(":control"):
            message, refused = read_entry(fields, decode_control)
        else:
            message, refused = read_entry(fields, decode_result)
        if refused is not None:
            inbox.unreadable.append((stream, entry_id, fields, *refused))
        elif isinstance(message, ControlMessage):
            if message.kind == "submitted":
                inbox.submitted.add(message.run)
            elif message.kind == "limits":
                inbox.limits = True
            else:
                inbox.commands = True
        elif isinstance(message, ResultMessage):
            inbox.results.append(message)
    return inbox


def trouble_of(error: BaseException) -> redis_clients.Trouble | None:
    """How the coordinator's loop survives `error`: PostgreSQL or Redis unreachable (`bus.RECOVERABLE`)
    is waited out, other Redis errors as `redis_clients.classify` says; None: not to wait out, raise it."""
    if isinstance(error, bus.RECOVERABLE):
        return redis_clients.Trouble.UNAVAILABLE
    return redis_clients.classify(error)


class CoordinatorBus:
    """The Redis side of one coordinator (`consumer` is its id in the coordinators' group)."""

    def __init__(self, client: redis.Redis, keys: Keys, *, consumer: str) -> None:
        self.client = client
        self.keys = keys
        self.consumer = consumer
        self.inputs = InputsPublisher(keys)  # each run's inputs key, for workers' ctx.inputs
        self._reader = redis_clients.SlotReader(COORDINATOR_GROUP, consumer)
        self._epoch = uuid.uuid4().hex
        self._known_queues: set[str] = set()
        self._replay_pending = True
        self._handing_back: set[int] = set()  # lost partitions whose pending entries are not handed back yet

    # -- start, registry, epoch ----------------------------------------------------------------------

    def check_server(self) -> None:
        """Fail with what to do when Redis is unreachable; warn when it may evict keys."""
        bus.ping(self.client, "the configured Redis URL")
        warning = bus.check_noeviction(self.client)
        if warning:
            log.warning("redis_eviction_policy_unsafe", detail=warning)

    def claim_epoch(self) -> None:
        """Adopt the epoch of Redis's data: the first coordinator's, kept as long as the data lives."""
        self.client.set(self.keys.epoch, self._epoch, nx=True)
        self._epoch = (self.client.get(self.keys.epoch) or self._epoch.encode()).decode()

    def data_lost(self) -> bool:
        """Whether Redis lost its data since the epoch was claimed (the key is missing or another)."""
        epoch = self.client.get(self.keys.epoch)
        return epoch is None or epoch.decode() != self._epoch

    def restore(self, partitions: Iterable[int]) -> None:
        """After a data loss: the epoch back, the partitions' groups recreated, the queues' groups
        recreated on use, and every run's inputs key written again with its next publish."""
        self.client.set(self.keys.epoch, self._epoch)
        self.inputs.forget()  # the re-published steps bring their runs' inputs keys back
        bus.ensure_partition_groups(self.client, self.keys, partitions)
        self._known_queues.clear()

    def heartbeat(self, partitions: list[int], *, runs: int, now: float, ttl: float) -> int:
        """Register as a live coordinator (`steppe workers` lists it); returns how many are alive."""
        info = {
            "id": self.consumer,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "partitions": partitions,
            "runs": runs,
            "heartbeat": now,
        }
        return bus.coordinator_heartbeat(self.client, self.keys, info, ttl=ttl)

    def deregister(self) -> None:
        self.client.zrem(self.keys.coordinators, self.consumer)

    # -- groups and partitions -----------------------------------------------------------------------

    def ensure_queues(self, queues: Iterable[str]) -> None:
        """The workers' group on each queue's streams, created once per queue (until `forget_queues`)."""
        new = set(queues) - self._known_queues
        if new:
            bus.ensure_queue_groups(self.client, self.keys, new)
            self._known_queues |= new

    def forget_queues(self) -> None:
        """Their groups may be gone (Redis lost its data): create them again on use."""
        self._known_queues.clear()

    def acquire(self, held: Iterable[int], gained: Iterable[int]) -> None:
        """The groups of the partitions held; the backlog a dead coordinator left in the gained ones
        moves to this consumer, and the next read replays what it holds unacknowledged."""
        bus.ensure_partition_groups(self.client, self.keys, held)
        streams.claim_backlog(self.client, self.keys, gained, consumer=self.consumer)
        self._handing_back.difference_update(gained)  # ours again: the replayed read applies them
        self._replay_pending = True

    def release(self, partitions: Iterable[int]) -> None:
        """Partitions changed hands: stop tracking their runs' inputs keys."""
        self.inputs.release(partitions)

    def hand_back(self, lost: Iterable[int] = ()) -> int:
        """Partitions lost to another coordinator: what this consumer read of their results and control
        streams but did not acknowledge (a batch fenced by the lease) goes to the new owner as new
        entries — per stream, in one MULTI, a copy XADDed and the original XACKed. Results are fenced
        by attempt, so a copy applied twice is a counted duplicate, never a second apply. Partitions
        not done (a Redis error, raised) are handed back by the next call; returns the entries moved."""
        self._handing_back.update(lost)
        moved, done = 0, []
        for p in sorted(self._handing_back):
            for stream in (self.keys.control_stream(p), self.keys.results_stream(p)):
                moved += self._hand_back_stream(stream)
            self._handing_back.discard(p)
            done.append(p)
        if moved:
            log.info("pending_entries_handed_back", partitions=done, entries=moved)
        return moved

    def _hand_back_stream(self, stream: str, batch: int = 500) -> int:
        moved = 0
        while True:
            pending = self.client.xpending_range(stream, COORDINATOR_GROUP, "-", "+", batch, consumername=self.consumer)
            if not pending:
                return moved
            ids = [p["message_id"] for p in pending]
            read = self.client.pipeline(transaction=False)
            for entry_id in ids:
                read.xrange(stream, min=entry_id, max=entry_id)
            found = [entry for reply in read.execute() for entry in reply]  # trimmed ones: only acked
            with self.client.pipeline(transaction=True) as tx:  # one stream, one slot: MULTI on a cluster too
                for _, fields in found:
                    tx.xadd(stream, fields)
                tx.xack(stream, COORDINATOR_GROUP, *ids)
                tx.execute()
            moved += len(found)
            if len(pending) < batch:
                return moved

    def forget(self) -> None:
        """In-memory state was dropped (a failed write): replay the unacknowledged entries, and write
        every run's inputs key again with its next publish."""
        self.inputs.forget()
        self._replay_pending = True

    # -- read, publish, acknowledge -------------------------------------------------------------------

    def read(self, partitions: Sequence[int], *, count: int, block_ms: int) -> Inbox:
        """Up to `count` entries of the partitions' results and control streams: first those read but
        not acknowledged (without blocking), then new ones (blocking up to `block_ms`)."""
        start_id = "0" if self._replay_pending else ">"
        wanted: dict[str, str] = {}
        for p in partitions:
            wanted[self.keys.control_stream(p)] = start_id
            wanted[self.keys.results_stream(p)] = start_id
        try:
            # One XREADGROUP; against a Redis Cluster, one per partition (each is its own slot).
            reply = self._reader.read(
                self.client, wanted, count=count, block=None if self._replay_pending else block_ms
            )
        except redis.ResponseError as e:
            if redis_clients.classify(e) is not redis_clients.Trouble.DATA_LOST:
                raise
            # Redis lost its data (restart without persistence, FLUSHALL, failover): NOGROUP, or
            # UNBLOCKED for the read Redis 7 was blocking when the stream vanished. Reconcile now.
            log.warning("coordinator_groups_missing", error=str(e))
            bus.ensure_partition_groups(self.client, self.keys, partitions)
            return Inbox(groups_lost=True)
        entries: list[Entry] = []
        for stream_name, messages in reply or []:
            name = stream_name.decode() if isinstance(stream_name, bytes) else stream_name
            entries.extend((name, entry_id, fields) for entry_id, fields in messages)
        if self._replay_pending and not entries:
            self._replay_pending = False  # caught up: read new entries from now on
        return sort_entries(entries)

    def dead_letter_unreadable(self, entries: list[streams.Unreadable]) -> None:
        """Entries the loop will not apply go to `{ns}:dlq`; call before acknowledging them."""
        streams.dead_letter_unreadable(self.client, self.keys, entries, by=self.consumer)

    def publish(self, dispatches: Sequence[Dispatch], acks: Mapping[str, Sequence[bytes]] | None = None) -> None:
        """Publish committed dispatches, then acknowledge the entries read, in one pipeline (headed by
        the inputs keys of their runs and the deletion of finished runs' keys, `run_inputs`).

        A connection error is raised as is: the pipeline may have run before the connection broke,
        so publishing again could deliver a step twice. The caller reloads from PostgreSQL instead,
        and the reconciler re-publishes exactly the dispatched attempts that Redis does not hold."""
        if not dispatches and not acks and not self.inputs.has_deletes:
            return
        pipe = self.client.pipeline(transaction=False)
        staged = self.inputs.stage(pipe, dispatches)
        for d in dispatches:
            bus.append(pipe, self.keys.queue_stream(d.queue, d.priority), d.message)
        for stream, ids in (acks or {}).items():
            pipe.xack(stream, COORDINATOR_GROUP, *ids)
        replies = pipe.execute()
        self.inputs.published(staged, replies, self.client)

    def run_finished(self, run_id: str, partition: int, *, has_inputs: bool = True) -> None:
        """Delete the run's inputs key with the next publish; a run without inputs has none (nothing
        to send: 20,000 one-step runs without inputs cost 20,000 DELs of missing keys before)."""
        if has_inputs:
            self.inputs.finished(run_id, partition)

    # -- commands -------------------------------------------------------------------------------------

    def mark_cancelled(self, run_id: str, at: float) -> None:
        """Workers skip the run's steps from now on."""
        self.client.zadd(self.keys.cancelled, {run_id: at})

    def unmark_cancelled(self, run_id: str) -> None:
        self.client.zrem(self.keys.cancelled, run_id)

    # -- reconciliation -------------------------------------------------------------------------------

    def attempts_in_redis(self, queues: set[str], partitions: Iterable[int]) -> set[tuple[str, str, int]]:
        """(run, step, attempt) of every step message queued or pending, and every result not trimmed."""
        return streams.attempts_in_redis(self.client, self.keys, queues, partitions)

    def sync_dead_letters(self, store: DeadLetterStore) -> None:
        """Undecodable messages exist only in the dead-letter stream: give each its PostgreSQL row."""
        sync_from_stream(self.client, self.keys, store)

    def trim(self, partitions: Iterable[int]) -> None:
        """Trim acknowledged entries of the known queues and the partitions' streams."""
        streams.trim_acknowledged(self.client, self.keys, self._known_queues, partitions)

    def export_metrics(self, *, live_since: float) -> None:
        """Queue depths, lags and pending counts; workers that beat since `live_since`."""
        streams.export_queue_metrics(self.client, self.keys, self._known_queues)
        metrics.LIVE_WORKERS.set(int(self.client.zcount(self.keys.workers, live_since, "+inf")))
