"""Every Redis command a worker sends about its steps: `WorkerStreams` (the loops of
`workers.consumer.Worker` decide when, this decides how).

Reading: one XREADGROUP over the queues' priority streams (high, normal, low) with COUNT = the
worker's free slots; entries come back highest priority first (against a Redis Cluster, one
XREADGROUP per queue: each queue is its own slot). Reporting (`flush`): against one Redis each
batch of results, dead letters and XACKs is one MULTI/EXEC, which may carry the worker's next
read (XREADGROUP without BLOCK, COUNT = the slots free once the batch is acknowledged): while
there is a backlog, one round trip per batch both reports and reads. Against a cluster, where
those keys live in different slots, the XADDs are written first and the XACKs only once every
XADD succeeded, and nothing is read ahead. Either way a result is never acknowledged without
being published (a crash in between leaves a duplicate result, which the coordinator fences by
attempt). Liveness: the
registry heartbeat (`heartbeat`, with the eviction of dead workers' entries by the rules of
`workers.registry`), lease extension of in-flight entries (`extend`: XCLAIM … JUSTID resets
their idle time), the cancel set (`cancelled`) and the reclaim of entries idle past the
visibility timeout (`reclaim`: XPENDING IDLE + XCLAIM).

Breakers (`patterns.breaker`) and `ctx.inputs` (`workers.inputs`) send their own commands
through `client`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any

import redis
import redis.asyncio as aioredis
import structlog

from orchestrator import metrics, redis_clients
from orchestrator.keys import WORKER_GROUP, Keys
from orchestrator.settings import Settings
from orchestrator.streams import add_group_creates, add_heartbeat, check_group_replies
from orchestrator.wire import FIELD, encode
from workers.entries import Delivery, Outgoing
from workers.registry import MIN_ENTRY_TTL, entry_ttl, stale_workers

log = structlog.get_logger(__name__)

CONNECTION_ERRORS = (redis.ConnectionError, redis.TimeoutError, OSError, *redis_clients.CLUSTER_ERRORS)
# XPENDING looks at this many entries more than the worker has free slots (some are taken meanwhile).
PENDING_LOOKAHEAD = 32


def choose_claims(rows: Sequence[Mapping[str, Any]], free: int, suspect_running: bool) -> tuple[dict[bytes, int], bool]:
    """Which idle pending entries (XPENDING rows) to claim, each with its delivery count once claimed.

    An entry delivered once lost one worker (killed, stopped, cut off): such entries are taken
    up to `free`. An entry delivered more than once has outlived two workers and may be what
    kills them (a poison message): at most one of these suspects runs at a time
    (`suspect_running`), fewest deliveries first, so that the next crash cannot take innocent
    entries with it (an innocent entry is delivered at most 3 times). Returns the claims and
    whether a suspect runs once they are taken.
    """
    fresh = [r for r in rows if r["times_delivered"] <= 1]
    suspects = sorted(
        (r for r in rows if r["times_delivered"] > 1), key=lambda r: (r["times_delivered"], r["message_id"])
    )
    wanted = {r["message_id"]: int(r["times_delivered"]) + 1 for r in fresh[:free]}
    if suspects and not suspect_running and len(wanted) < free:
        wanted[suspects[0]["message_id"]] = int(suspects[0]["times_delivered"]) + 1
        suspect_running = True
    return wanted, suspect_running


class WorkerStreams:
    """One worker's consumer-group streams, registry entry and leases in Redis."""

    def __init__(self, client: aioredis.Redis, keys: Keys, *, worker_id: str, streams: Sequence[str]) -> None:
        self.client = client
        self.keys = keys
        self.worker_id = worker_id
        self.streams = list(streams)  # priority order within each queue
        self.cluster = redis_clients.is_cluster(client)
        self._reader = redis_clients.SlotReader(WORKER_GROUP, worker_id)
        self._lease_outage = redis_clients.Outage("lease_extension_failed", log, fields={"worker": worker_id})
        self._evicting = True  # evict other workers' stale registry entries at each heartbeat

    @classmethod
    def connect(cls, settings: Settings, url: str, *, worker_id: str, streams: Sequence[str]) -> WorkerStreams:
        """A client whose socket timeout stays above the BLOCK time of the worker's reads (it
        connects on its first command)."""
        socket_timeout = max(settings.redis.socket_timeout, settings.redis.block_ms / 1000 + 5)
        client = redis_clients.async_client(
            url, socket_timeout=socket_timeout, connect_timeout=settings.redis.connect_timeout
        )
        return cls(client, Keys(settings.namespace), worker_id=worker_id, streams=streams)

    async def aclose(self) -> None:
        await self.client.aclose()

    # -- groups and reading ----------------------------------------------------------------------

    async def ensure_groups(self) -> None:
        """Create the worker group on each stream (and the stream) unless it exists."""
        pipe = self.client.pipeline(transaction=False)
        add_group_creates(pipe, ((stream, WORKER_GROUP) for stream in self.streams))
        check_group_replies(await pipe.execute(raise_on_error=False))

    async def recreate_groups(self) -> None:
        """After NOGROUP or UNBLOCKED (Redis lost its data): recreate the groups; Redis trouble on
        the way is left for the next attempt, after the caller's back-off."""
        try:
            await self.ensure_groups()
        except Exception as e:
            if redis_clients.classify(e) is None:
                raise
            return
        log.info("worker_groups_recreated", worker=self.worker_id, streams=len(self.streams))

    async def read(self, *, count: int, block: int) -> list[Delivery]:
        """New entries for this worker (at most `count`), highest priority first; [] after `block` ms."""
        reply = await self._reader.aread(self.client, dict.fromkeys(self.streams, ">"), count=count, block=block)
        return self._deliveries(reply)

    def _deliveries(self, reply: Any) -> list[Delivery]:
        if not reply:
            return []
        by_stream = {(s.decode() if isinstance(s, bytes) else s): entries for s, entries in reply}
        return [
            Delivery(stream, entry_id, fields)
            for stream in self.streams  # priority order
            for entry_id, fields in by_stream.get(stream, [])
        ]

    # -- reporting -------------------------------------------------------------------------------

    @property
    def reads_ahead(self) -> bool:
        """Whether `flush` can carry the next read (one Redis: yes; a cluster: no)."""
        return not self.cluster

    async def flush(self, batch: Sequence[Outgoing], *, read_ahead: int = 0) -> list[Delivery] | None:
        """Publish the batch's results and dead letters and acknowledge what they finish (see the
        module docstring). Raises, having acknowledged nothing, unless every XADD succeeded: the
        caller keeps the batch and flushes it again.

        With `read_ahead` > 0 (and `reads_ahead`), the same MULTI/EXEC ends with an XREADGROUP
        without BLOCK of at most that many new entries: returns them as `read` would, or None if
        that read failed (NOGROUP…) while the batch itself went through; the caller then reads on
        its own, which repairs what needs repairing.
        """
        pipe = self.client.pipeline(transaction=not self.cluster)
        acks: dict[str, list[bytes]] = {}
        for out in batch:
            if out.dead is not None:
                pipe.xadd(self.keys.dlq_stream, dict(out.dead))
            if out.result is not None:
                pipe.xadd(self.keys.results_stream(out.partition), {FIELD: encode(out.result)})
            if out.acks:
                acks.setdefault(out.stream, []).append(out.entry_id)
        if self.cluster:
            await pipe.execute()  # raises unless every XADD succeeded: nothing is acknowledged then
            pipe = self.client.pipeline(transaction=False)
        for stream, ids in acks.items():
            pipe.xack(stream, WORKER_GROUP, *ids)
        if read_ahead <= 0 or self.cluster:
            await pipe.execute()
            return []
        pipe.xreadgroup(WORKER_GROUP, self.worker_id, dict.fromkeys(self.streams, ">"), count=read_ahead)
        replies = await pipe.execute(raise_on_error=False)
        for reply in replies[:-1]:
            if isinstance(reply, Exception):
                raise reply  # inside MULTI, what else ran is a duplicate result at worst (fenced by attempt)
        if isinstance(replies[-1], Exception):
            return None
        return self._deliveries(replies[-1])

    # -- liveness --------------------------------------------------------------------------------

    async def heartbeat(self, info: Mapping[str, Any], *, interval: float) -> None:
        """Refresh this worker's registry entry (`info`, scored by its "heartbeat" time), kept
        for 3 of its heartbeat `interval`s; then evict other workers' stale entries."""
        now = float(info["heartbeat"])
        pipe = self.client.pipeline(transaction=False)
        add_heartbeat(
            pipe,
            index=self.keys.workers,
            key=self.keys.worker(self.worker_id),
            member=self.worker_id,
            info=info,
            ttl=int(entry_ttl(interval)) + 1,
            now=now,
        )
        await pipe.execute()
        if self._evicting:
            await self._evict_stale(now)

    async def _evict_stale(self, now: float) -> None:
        """Drop registry entries of workers that missed 3 of *their own* heartbeats (`stale_workers`)."""
        try:
            rows = await self.client.zrangebyscore(self.keys.workers, 0, now - MIN_ENTRY_TTL, withscores=True)
            quiet = {m.decode(): score for m, score in rows if m.decode() != self.worker_id}
            infos = await self.client.mget([self.keys.worker(i) for i in quiet]) if quiet else []
        except redis.NoPermissionError as e:
            # Housekeeping only (readers skip entries whose key expired): never a reason to stop.
            self._evicting = False
            log.warning(
                "worker_registry_eviction_disabled",
                worker=self.worker_id,
                error=str(e),
                fix="grant the worker's Redis user +zrangebyscore and +mget on {ns}:workers and {ns}:worker:*",
            )
            return
        stale = stale_workers(now, dict(zip(quiet, infos, strict=True)))
        if not stale:
            return
        pipe = self.client.pipeline(transaction=False)
        for worker_id in stale:
            # Only at the score read above: a worker that beat meanwhile keeps its entry.
            pipe.zremrangebyscore(self.keys.workers, quiet[worker_id], quiet[worker_id])
        await pipe.execute()
        log.info("workers_evicted", worker=self.worker_id, evicted=stale)

    async def deregister(self, *, timeout: float) -> None:
        """Remove this worker's registry entry (a stopping worker); a failure is only logged."""
        try:
            async with asyncio.timeout(timeout):
                pipe = self.client.pipeline(transaction=False)
                pipe.zrem(self.keys.workers, self.worker_id)
                pipe.delete(self.keys.worker(self.worker_id))
                await pipe.execute()
        except CONNECTION_ERRORS as e:  # TimeoutError included (an OSError)
            log.warning("worker_deregister_failed", error=str(e) or type(e).__name__)

    def extend(self, entries: Iterable[tuple[str, bytes]]) -> None:
        """Reset the idle time of these (stream, entry id) so that nobody reclaims them; in the
        background (fire and forget), a failure logged once per outage."""
        by_stream: dict[str, list[bytes]] = {}
        for stream, entry_id in entries:
            by_stream.setdefault(stream, []).append(entry_id)
        for stream, ids in by_stream.items():
            asyncio.ensure_future(self._xclaim_justid(stream, ids))  # noqa: RUF006 - fire and forget

    async def _xclaim_justid(self, stream: str, ids: list[bytes]) -> None:
        try:
            await self.client.xclaim(stream, WORKER_GROUP, self.worker_id, 0, ids, justid=True)
            self._lease_outage.succeeded()
        except (*CONNECTION_ERRORS, redis.ResponseError) as e:
            # Logged once per outage; NOGROUP (data lost) is repaired by the read loop.
            self._lease_outage.failed(e, redis_clients.classify(e) or redis_clients.Trouble.UNAVAILABLE)

    async def cancelled(self, runs: Sequence[str]) -> list[bool]:
        """Whether each of `runs` is in the cancel set."""
        if not runs:
            return []
        scores = await self.client.zmscore(self.keys.cancelled, list(runs))
        return [score is not None for score in scores]

    async def reclaim(self, *, free: int, min_idle: int, suspect_running: bool) -> AsyncIterator[list[Delivery]]:
        """Take over entries idle for `min_idle` ms (their worker died or hung), at most `free`,
        chosen by `choose_claims`; yields them stream by stream, each with its delivery count.

        Each claim counts a delivery. An entry that could not be claimed because it was deleted
        (trimmed) while pending comes back without fields: Redis 6.2 returns it as a nil, 7.x
        silently drops it from the pending list, so XRANGE tells it from one another worker took.
        """
        for stream in self.streams:
            rows = await self.client.xpending_range(
                stream, WORKER_GROUP, "-", "+", free + PENDING_LOOKAHEAD, idle=min_idle
            )
            if not rows:
                continue
            wanted, suspect_running = choose_claims(rows, free, suspect_running)
            if not wanted:
                continue
            reply = await self.client.xclaim(stream, WORKER_GROUP, self.worker_id, min_idle, list(wanted))
            claimed = {entry_id: fields for entry_id, fields in reply if entry_id is not None}
            gone = [i for i in wanted if i not in claimed and not await self.client.xrange(stream, min=i, max=i)]
            if not claimed and not gone:
                continue
            metrics.RECLAIMS.labels(queue=self.keys.queue_of_stream(stream)).inc(len(claimed) + len(gone))
            yield [Delivery(stream, i, fields, wanted[i]) for i, fields in claimed.items()] + [
                Delivery(stream, i, None, wanted[i]) for i in gone
            ]
            free -= len(claimed) + len(gone)
            if free <= 0:
                return
