"""Redis clients for every Steppe process: one Redis server, or a Redis Cluster.

`STEPPE_REDIS_URL` picks the client:

    redis://host:port/0                         one server (`redis.Redis`)
    rediss://user:pass@host:port/0              the same over TLS
    redis+cluster://host:port[,host:port…]      a Redis Cluster (`redis.RedisCluster`); every
    rediss+cluster://user:pass@h:p[,h:p…]       listed node is a seed for topology discovery

A cluster client routes each command by its key's hash slot. Steppe's keys carry hash tags
(`orchestrator.keys`) so that everything one command, pipeline transaction or script touches
lives in one slot; the two operations that naturally span slots are split here:

- `xreadgroup`: a worker reads several queues and a coordinator several partitions, each in
  its own slot. In cluster mode the streams are grouped by slot and read in one pipelined,
  non-blocking sweep; when the sweep finds nothing the call blocks on one group at a time
  (rotating) for at most `CLUSTER_POLL_MS`, so a message on any slot waits at most that long.
- listings (`masters`): SCAN-like work must visit every master.

The cluster client is typed as `redis.Redis` (`cast`): it offers the same command methods, and
the places that must behave differently ask `is_cluster(client)`.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio as aioredis
import redis.asyncio.cluster as aiocluster
import redis.cluster as synccluster
from redis.backoff import NoBackoff
from redis.exceptions import ClusterDownError, ClusterError, SlotNotCoveredError, TryAgainError
from redis.retry import Retry
from structlog.typing import FilteringBoundLogger

from orchestrator.errors import ConfigError

CLUSTER_SCHEMES = {"redis+cluster": False, "rediss+cluster": True}  # scheme → TLS
# Errors of a cluster in transition (failover, slot migration): the command was not executed.
CLUSTER_ERRORS: tuple[type[Exception], ...] = (ClusterDownError, ClusterError, SlotNotCoveredError, TryAgainError)
# A sweep that found nothing blocks on one slot group this long, so others wait at most this.
CLUSTER_POLL_MS = 50


@dataclass(frozen=True)
class ClusterTarget:
    """Seeds and credentials parsed from a `redis+cluster://` URL."""

    seeds: list[tuple[str, int]]
    options: dict[str, Any] = field(default_factory=dict)


def is_cluster_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() in CLUSTER_SCHEMES


def parse_cluster_url(url: str) -> ClusterTarget:
    """`redis+cluster://[user:pass@]h1:p1,h2:p2[/0]` → seeds and connection options."""
    scheme, _, rest = url.partition("://")
    if scheme.lower() not in CLUSTER_SCHEMES:
        raise ConfigError(f"{url!r} is not a Redis Cluster URL; write redis+cluster://host:port[,host:port…]")
    netloc = rest.split("/", 1)[0].split("?", 1)[0]
    credentials, _, hosts = netloc.rpartition("@")
    seeds: list[tuple[str, int]] = []
    for item in filter(None, hosts.split(",")):
        parts = urlsplit(f"//{item}")
        if parts.hostname is None:
            raise ConfigError(f"Redis Cluster seed {item!r} in STEPPE_REDIS_URL has no host; write host:port")
        seeds.append((parts.hostname, parts.port or 6379))
    if not seeds:
        raise ConfigError("STEPPE_REDIS_URL names no Redis Cluster node; write redis+cluster://host:port[,host:port…]")
    db = rest.split("/", 1)[1].split("?", 1)[0] if "/" in rest else ""
    if db not in ("", "0"):
        raise ConfigError(f"Redis Cluster has only database 0, not {db!r}; drop /{db} from STEPPE_REDIS_URL")
    options: dict[str, Any] = {}
    if credentials:
        user, _, password = credentials.partition(":")
        if user:
            options["username"] = unquote(user)
        if password:
            options["password"] = unquote(password)
    if CLUSTER_SCHEMES[scheme.lower()]:
        options["ssl"] = True
    return ClusterTarget(seeds=seeds, options=options)


def sync_client(
    url: str, *, socket_timeout: float, connect_timeout: float, retries: int = 0, **extra: Any
) -> redis.Redis:
    """A synchronous client for `url`; `retries` re-sends a command after a connection error.

    The coordinator passes 0: a re-sent XADD that had in fact been executed publishes a step twice.
    """
    common: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": connect_timeout,
        "health_check_interval": 30,
        **extra,
    }
    retry = Retry(NoBackoff(), retries)
    if not is_cluster_url(url):
        return redis.Redis.from_url(url, retry=retry, **common)
    target = parse_cluster_url(url)
    nodes = [synccluster.ClusterNode(host, port) for host, port in target.seeds]
    client = synccluster.RedisCluster(startup_nodes=nodes, retry=retry, **target.options, **common)
    return cast(redis.Redis, client)


def async_client(url: str, *, socket_timeout: float, connect_timeout: float) -> aioredis.Redis:
    """An asyncio client for `url` (workers), with redis-py's default retries."""
    common: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": connect_timeout,
        "health_check_interval": 30,
    }
    if not is_cluster_url(url):
        return aioredis.Redis.from_url(url, **common)
    target = parse_cluster_url(url)
    nodes = [aiocluster.ClusterNode(host, port) for host, port in target.seeds]
    return cast(aioredis.Redis, aiocluster.RedisCluster(startup_nodes=nodes, **target.options, **common))


def is_cluster(client: object) -> bool:
    return isinstance(client, synccluster.RedisCluster | aiocluster.RedisCluster)


def masters(client: redis.Redis) -> list[redis.Redis]:
    """One plain client per master (each for SCAN-like listings), or the client itself."""
    if not is_cluster(client):
        return [client]
    cluster = cast(synccluster.RedisCluster, client)
    return [cast(redis.Redis, cluster.get_redis_connection(node)) for node in cluster.get_primaries()]


def slot_groups(streams: Mapping[str, str]) -> list[dict[str, str]]:
    """`{stream: id}` split into groups whose keys share a hash slot (order kept)."""
    groups: dict[int, dict[str, str]] = {}
    for stream, start in streams.items():
        groups.setdefault(synccluster.key_slot(stream.encode()), {})[stream] = start
    return list(groups.values())


def _xreadgroup_args(group: str, consumer: str, streams: Mapping[str, str], count: int, block: int | None) -> list[Any]:
    args: list[Any] = ["GROUP", group, consumer, "COUNT", count]
    if block is not None:
        args += ["BLOCK", block]
    return [*args, "STREAMS", *streams.keys(), *streams.values()]


@dataclass
class SlotReader:
    """XREADGROUP over streams that may live in several slots (see the module docstring).

    Against one server it is exactly one XREADGROUP. Against a cluster each command names its
    target node, which also spares redis-py a COMMAND GETKEYS round trip per read.
    """

    group: str
    consumer: str
    _turn: itertools.count[int] = field(default_factory=itertools.count)

    def read(self, client: redis.Redis, streams: Mapping[str, str], *, count: int, block: int | None) -> list[Any]:
        if not is_cluster(client):
            return client.xreadgroup(self.group, self.consumer, dict(streams), count=count, block=block) or []
        cluster = cast(synccluster.RedisCluster, client)
        groups = slot_groups(streams)
        if len(groups) == 1:
            return self._one(cluster, groups[0], count, block)
        pipe = cluster.pipeline(transaction=False)
        for g in groups:
            node = cluster.get_node_from_key(next(iter(g)))
            pipe.execute_command(
                "XREADGROUP", *_xreadgroup_args(self.group, self.consumer, g, count, None), target_nodes=node
            )
        found = [item for reply in pipe.execute() for item in (reply or [])]
        if block is None or any(messages for _, messages in found):
            return found
        g = groups[next(self._turn) % len(groups)]
        return self._one(cluster, g, count, min(block, CLUSTER_POLL_MS))

    def _one(self, cluster: synccluster.RedisCluster, g: Mapping[str, str], count: int, block: int | None) -> list[Any]:
        node = cluster.get_node_from_key(next(iter(g)))
        args = _xreadgroup_args(self.group, self.consumer, g, count, block)
        return cast(list[Any], cluster.execute_command("XREADGROUP", *args, target_nodes=node) or [])

    async def aread(
        self, client: aioredis.Redis, streams: Mapping[str, str], *, count: int, block: int | None
    ) -> list[Any]:
        if not is_cluster(client):
            return await client.xreadgroup(self.group, self.consumer, dict(streams), count=count, block=block) or []
        cluster = cast(aiocluster.RedisCluster, client)
        groups = slot_groups(streams)
        if len(groups) > 1:
            found: list[Any] = []
            remaining = count  # a worker's free slots: the sweep takes no more than that in all
            for g in groups:
                if remaining <= 0:
                    break
                got = await self._aone(cluster, g, remaining, None)
                found += got
                remaining -= sum(len(messages) for _, messages in got)
            if block is None or any(messages for _, messages in found):
                return found
            groups = [groups[next(self._turn) % len(groups)]]
            block = min(block, CLUSTER_POLL_MS)
        return await self._aone(cluster, groups[0], count, block)

    async def _aone(
        self, cluster: aiocluster.RedisCluster, g: Mapping[str, str], count: int, block: int | None
    ) -> list[Any]:
        await cluster.initialize()  # a no-op once the slot map is loaded
        node = cluster.get_node_from_key(next(iter(g)))
        args = _xreadgroup_args(self.group, self.consumer, g, count, block)
        return cast(list[Any], await cluster.execute_command("XREADGROUP", *args, target_nodes=node) or [])


# -- Redis trouble: what a blocked read, an ack or a claim can return, and what a loop does about it


class Trouble(StrEnum):
    """How a long-running loop survives a Redis error (`classify`)."""

    # Unreachable, timed out, loading its AOF (LOADING), a replica (READONLY, MASTERDOWN), a
    # cluster in transition (CLUSTERDOWN, TRYAGAIN), a script running (BUSY), out of memory
    # (OOM): nothing was done; back off and do the same again.
    UNAVAILABLE = "unavailable"
    # A stream or consumer group vanished under the command (FLUSHALL, a restart without
    # persistence, a failover to an empty replica): NOGROUP, and UNBLOCKED for a blocked
    # XREADGROUP on Redis 7. Recreate the groups; the coordinator re-publishes from PostgreSQL.
    DATA_LOST = "data_lost"


_UNAVAILABLE_TYPES: tuple[type[BaseException], ...] = (
    redis.ConnectionError,  # includes BusyLoadingError (LOADING) and connection resets
    redis.TimeoutError,
    OSError,  # asyncio's timeouts and socket errors raised past redis-py
    redis.ReadOnlyError,
    redis.exceptions.OutOfMemoryError,
    *CLUSTER_ERRORS,  # ClusterDownError includes MasterDownError (MASTERDOWN)
)
_UNAVAILABLE_CODES = frozenset({"LOADING", "READONLY", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN", "BUSY", "OOM"})


_PIPELINE_PREFIX = "caused error: "  # redis-py prefixes errors inside a pipeline with the command


def _error_code(error: redis.RedisError) -> str:
    """The reply's error code (`NOGROUP`, `UNBLOCKED`, `ERR`…): redis-py >= 6 keeps it apart
    (and strips the codes it maps to classes from the text); older ones leave it in the text."""
    code = getattr(error, "status_code", None)
    if code:
        return str(code)
    text = str(error)
    text = text.split(_PIPELINE_PREFIX, 1)[-1]
    return text.split(" ", 1)[0] if text[:1].isupper() else ""


def classify(error: BaseException) -> Trouble | None:
    """What a loop does about `error`: back off (UNAVAILABLE), recreate groups (DATA_LOST), or
    None: not a Redis condition to wait out (a bug, a wrong type, a missing permission), raise it."""
    if isinstance(error, _UNAVAILABLE_TYPES):
        return Trouble.UNAVAILABLE
    if not isinstance(error, redis.ResponseError):
        return None
    code, text = _error_code(error), str(error).lower()
    if code == "NOGROUP" or (code in ("ERR", "") and "no such key" in text):  # XINFO on a vanished stream
        return Trouble.DATA_LOST
    if code == "UNBLOCKED":
        # "the stream key no longer exists" (deleted, FLUSHALL); otherwise "instance state changed
        # (master -> replica?)" or CLIENT UNBLOCK ERROR: nothing lost, read again.
        return Trouble.DATA_LOST if "no longer exists" in text else Trouble.UNAVAILABLE
    if code in _UNAVAILABLE_CODES:
        return Trouble.UNAVAILABLE
    return None


@dataclass
class Outage:
    """Back-off and log-once bookkeeping for one loop that waits out Redis trouble.

    `failed` returns how long to wait (jittered exponential, `first` doubling up to `cap`) and
    logs a warning only for the first failure of an outage and when the kind of trouble
    changes; `succeeded` logs once that the loop recovered, with how long and how many failures.
    """

    event: str
    log: FilteringBoundLogger
    first: float = 0.1
    cap: float = 5.0
    fields: dict[str, Any] = field(default_factory=dict)
    failures: int = 0
    _delay: float = 0.0
    _since: float = 0.0
    _kind: Trouble | None = None

    def failed(self, error: BaseException, trouble: Trouble) -> float:
        if self.failures == 0:
            self._since = time.monotonic()
            self._delay = self.first
        else:
            self._delay = min(self._delay * 2, self.cap)
        self.failures += 1
        if trouble is not self._kind:
            self._kind = trouble
            self.log.warning(self.event, trouble=str(trouble), error=str(error) or type(error).__name__, **self.fields)
        return self._delay * random.uniform(0.5, 1.0)

    def succeeded(self) -> None:
        if self.failures:
            self.log.info(
                f"{self.event}_recovered",
                failures=self.failures,
                outage_s=round(time.monotonic() - self._since, 2),
                **self.fields,
            )
            self.failures = 0
            self._kind = None
