"""Redis helpers shared by the coordinator, the submitter and the CLI: connections, consumer
groups, the XADD of a wire message (`append`, `send`), wake-ups, the live-process registry.

The coordinator's own Redis calls go through `orchestrator.coordinator_bus.CoordinatorBus`."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import orjson
import redis
import structlog

from orchestrator import redis_clients, streams
from orchestrator.errors import InfrastructureError, RedisUnavailableError
from orchestrator.keys import COORDINATOR_GROUP, WORKER_GROUP, Keys
from orchestrator.settings import Settings
from orchestrator.wire import FIELD, ControlMessage, ResultMessage, StepMessage, encode

if TYPE_CHECKING:
    from redis.client import Pipeline

log = structlog.get_logger(__name__)

# Step messages carry at most this many bytes (the payload limit plus envelope).
# Redis unreachable, or a cluster in transition (failover): back off and try again.
RETRYABLE: tuple[type[Exception], ...] = (redis.ConnectionError, redis.TimeoutError, *redis_clients.CLUSTER_ERRORS)
# What the coordinator's loop survives: back off, reload from PostgreSQL, carry on.
RECOVERABLE: tuple[type[Exception], ...] = (InfrastructureError, *RETRYABLE)


def connect(settings: Settings, url: str | None = None) -> redis.Redis:
    """A client (one server, or a cluster for `redis+cluster://`) whose socket timeout stays
    above the BLOCK time of blocking reads."""
    url = url or settings.resolved_redis_url()
    socket_timeout = max(settings.redis.socket_timeout, settings.redis.block_ms / 1000 + 5)
    # No client-side retries: re-sending a timed-out XADD can publish a step twice. The
    # coordinator handles failures itself (back off, reload, re-publish only what is absent).
    return redis_clients.sync_client(
        url, socket_timeout=socket_timeout, connect_timeout=settings.redis.connect_timeout, retries=0
    )


def ping(client: redis.Redis, url_hint: str) -> None:
    try:
        client.ping()
    except RETRYABLE as e:
        raise RedisUnavailableError(
            f"cannot reach Redis at {url_hint} ({e}); start one with `steppe dev up` or set STEPPE_REDIS_URL"
        ) from e


def check_noeviction(client: redis.Redis) -> str | None:
    """Return a warning when Redis (any cluster master) may evict keys (streams and groups would vanish)."""
    for node in redis_clients.masters(client):
        try:
            policy = node.config_get("maxmemory-policy").get("maxmemory-policy")
        except redis.ResponseError:  # CONFIG may be disabled by ACLs
            return None
        if policy not in (None, "noeviction"):
            return f"Redis maxmemory-policy is {policy!r}; set it to 'noeviction' or Steppe may lose queued steps"
    return None


def ensure_groups(client: redis.Redis, groups: Iterable[tuple[str, str]]) -> None:
    """Create each (stream, group) consumer group, and its stream, unless it exists (one round
    trip; the same commands as a worker's, `streams.add_group_creates`)."""
    pipe = client.pipeline(transaction=False)
    streams.add_group_creates(pipe, groups)
    streams.check_group_replies(pipe.execute(raise_on_error=False))


def ensure_queue_groups(client: redis.Redis, keys: Keys, queues: Iterable[str]) -> None:
    ensure_groups(client, [(stream, WORKER_GROUP) for queue in queues for stream in keys.queue_streams(queue)])


def ensure_partition_groups(client: redis.Redis, keys: Keys, partitions: Iterable[int]) -> None:
    ensure_groups(
        client,
        [(s, COORDINATOR_GROUP) for p in partitions for s in (keys.results_stream(p), keys.control_stream(p))],
    )


Message = StepMessage | ResultMessage | ControlMessage


def append(target: redis.Redis | Pipeline, stream: str, message: Message) -> None:
    """XADD `message` to `stream` as one entry (field `m`, `wire.encode`): the one way a Steppe
    process writes a step, result or control message (a pipeline queues it, a client sends it)."""
    target.xadd(stream, {FIELD: encode(message)})


def send(client: redis.Redis, entries: Sequence[tuple[str, Message]]) -> None:
    """Append each (stream, message): one XADD, or one pipeline without MULTI for several (each
    entry stands alone; against a cluster each is routed by its slot). Errors are the caller's."""
    if len(entries) == 1:
        append(client, *entries[0])
    elif entries:
        pipe = client.pipeline(transaction=False)
        for stream, message in entries:
            append(pipe, stream, message)
        pipe.execute()


def notify(client: redis.Redis, keys: Keys, partition: int, message: ControlMessage) -> None:
    """Wake the coordinator owning `partition`; the request itself is already in PostgreSQL."""
    try:
        send(client, [(keys.control_stream(partition), message)])
    except RETRYABLE as e:
        # The coordinator polls PostgreSQL, so the request is only delayed, not lost.
        log.warning("control_notify_failed", error=str(e), partition=partition)


def live_handlers(client: redis.Redis, keys: Keys) -> dict[str, list[str]]:
    """Handler name → ids of live workers advertising it."""
    import orjson

    handlers: dict[str, list[str]] = {}
    ids = [i.decode() for i in client.zrange(keys.workers, 0, -1)]
    if not ids:
        return handlers
    for worker_id, raw in zip(ids, client.mget([keys.worker(i) for i in ids]), strict=True):
        if raw is None:
            continue
        info: dict[str, Any] = orjson.loads(raw)
        for name in info.get("handlers", []):
            handlers.setdefault(name, []).append(worker_id)
    return handlers


def live_members(client: redis.Redis, index_key: str, item_key: Callable[[str], str]) -> list[dict[str, Any]]:
    """The heartbeat documents of live workers or coordinators (`keys.workers`/`keys.worker`, or
    `keys.coordinators`/`keys.coordinator`): ids from the index, documents that have not expired."""
    ids = [i.decode() for i in client.zrange(index_key, 0, -1)]
    if not ids:
        return []
    return [orjson.loads(raw) for raw in client.mget([item_key(i) for i in ids]) if raw is not None]


def coordinator_heartbeat(client: redis.Redis, keys: Keys, info: dict[str, Any], *, ttl: float) -> int:
    """Register a live coordinator (`steppe workers` lists it); returns how many are alive."""
    now, member = float(info["heartbeat"]), str(info["id"])
    pipe = client.pipeline(transaction=False)
    key, ex = keys.coordinator(member), max(1, int(ttl * 2))
    streams.add_heartbeat(pipe, index=keys.coordinators, key=key, member=member, info=info, ttl=ex, now=now)
    # A coordinator that missed a whole lease TTL of heartbeats is gone: stop counting it as a
    # peer, so that survivors claim all of its partitions as soon as its leases expire.
    pipe.zremrangebyscore(keys.coordinators, 0, now - ttl)
    pipe.zcard(keys.coordinators)
    return int(pipe.execute()[-1])
