"""Redis stream maintenance for the coordinator: presence checks, safe trimming, queue metrics.

Also what the coordinator and the workers both send, written once for either kind of client:
consumer-group creation (`add_group_creates` + `check_group_replies`) and registry heartbeats
(`add_heartbeat`). Each queues its commands on a pipeline without MULTI, which synchronous and
asyncio pipelines do alike; only the caller's `execute()` (awaited or not) differs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import msgspec
import orjson
import redis
import structlog

from orchestrator import metrics, redis_clients
from orchestrator.keys import COORDINATOR_GROUP, WORKER_GROUP, Keys
from orchestrator.wire import FIELD, decode_result, decode_step
from patterns.dead_letter import unreadable_entry

log = structlog.get_logger(__name__)
# A results or control entry the coordinator will not apply: (stream, id, fields, reason, error).
Unreadable = tuple[str, bytes, dict[bytes, bytes], str, str]


# -- sent by the coordinator and the workers alike -----------------------------------------------


def add_group_creates(pipe: Any, groups: Iterable[tuple[str, str]]) -> None:
    """Queue XGROUP CREATE <stream> <group> 0 MKSTREAM for each (stream, group) on `pipe` (a sync or
    asyncio pipeline without MULTI); execute it with raise_on_error=False, then `check_group_replies`."""
    for stream, group in groups:
        pipe.xgroup_create(stream, group, id="0", mkstream=True)


def check_group_replies(replies: Iterable[object]) -> None:
    """Raise the first error among the replies of `add_group_creates` but BUSYGROUP (the group exists)."""
    for reply in replies:
        if isinstance(reply, Exception) and "BUSYGROUP" not in str(reply):
            raise reply


def add_heartbeat(
    pipe: Any, *, index: str, key: str, member: str, info: Mapping[str, Any], ttl: int, now: float
) -> None:
    """Queue a registry heartbeat on `pipe`: `info` (JSON) at `key` for `ttl` seconds, and `member`
    scored `now` in the `index` sorted set (`keys.workers`/`keys.worker(id)`, or
    `keys.coordinators`/`keys.coordinator(id)`); readers skip members whose key expired."""
    pipe.set(key, orjson.dumps(dict(info)), ex=ttl)
    pipe.zadd(index, {member: now})


def scan(client: redis.Redis, stream: str, chunk: int = 1000) -> Iterable[tuple[bytes, dict[bytes, bytes]]]:
    """Every entry of a stream, in chunks (deleted-but-pending entries have no fields and are skipped)."""
    start = "-"
    while True:
        entries = client.xrange(stream, min=start, max="+", count=chunk)
        if not entries:
            return
        yield from ((i, f) for i, f in entries if f is not None)
        if len(entries) < chunk:
            return
        start = "(" + entries[-1][0].decode()


def attempts_in_redis(
    client: redis.Redis, keys: Keys, queues: Iterable[str], partitions: Iterable[int]
) -> set[tuple[str, str, int]]:
    """(run, step, attempt) of every step message still queued or pending, and of every result not yet trimmed."""
    present: set[tuple[str, str, int]] = set()
    for stream in (s for q in queues for s in keys.queue_streams(q)):
        for _, fields in scan(client, stream):
            try:
                m = decode_step(fields.get(FIELD, b""))
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue
            present.add((m.run, m.step, m.attempt))
    for p in partitions:
        for _, fields in scan(client, keys.results_stream(p)):
            try:
                r = decode_result(fields.get(FIELD, b""))
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue
            if r.status != "started":
                present.add((r.run, r.step, r.attempt))
    return present


def safe_trim_floor(client: redis.Redis, stream: str, group: str) -> str | None:
    """The smallest id still needed by `group`: its oldest pending entry, else its next undelivered one."""
    try:
        groups = client.xinfo_groups(stream)
    except redis.ResponseError:
        return None
    mine = next(
        (g for g in groups if (g["name"].decode() if isinstance(g["name"], bytes) else g["name"]) == group),
        None,
    )
    if mine is None:
        return None
    pending = client.xpending(stream, group)
    if pending and pending.get("pending"):
        low = pending["min"]
        return low.decode() if isinstance(low, bytes) else str(low)
    last = mine["last-delivered-id"]
    last = last.decode() if isinstance(last, bytes) else str(last)
    if last == "0-0":
        return None
    ms, seq = last.split("-")
    return f"{ms}-{int(seq) + 1}"


def trim_acknowledged(client: redis.Redis, keys: Keys, queues: Iterable[str], partitions: Iterable[int]) -> None:
    """Trim acknowledged entries only: never below the oldest pending or undelivered id (XTRIM MINID)."""
    parts = list(partitions)
    targets = [(s, WORKER_GROUP) for q in queues for s in keys.queue_streams(q)]
    targets += [(keys.results_stream(p), COORDINATOR_GROUP) for p in parts]
    targets += [(keys.control_stream(p), COORDINATOR_GROUP) for p in parts]
    for stream, group in targets:
        floor = safe_trim_floor(client, stream, group)
        if floor:
            client.xtrim(stream, minid=floor, approximate=False)


def export_queue_metrics(client: redis.Redis, keys: Keys, queues: Iterable[str]) -> None:
    """Depth, lag, pending count and oldest pending age per queue; dead-letter depth."""
    for queue in queues:
        depth = lag = pending = 0
        oldest = 0.0
        for stream in keys.queue_streams(queue):
            depth += int(client.xlen(stream))
            try:
                groups = client.xinfo_groups(stream)
                summary = client.xpending_range(stream, WORKER_GROUP, "-", "+", 1)
            except redis.ResponseError as e:  # no such key / NOGROUP: Redis lost it; the reconciler recreates it
                if redis_clients.classify(e) is not redis_clients.Trouble.DATA_LOST:
                    raise
                continue
            for group in groups:
                pending += int(group.get("pending", 0))
                lag += int(group.get("lag") or 0)
            if summary:
                oldest = max(oldest, summary[0]["time_since_delivered"] / 1000)
        metrics.QUEUE_DEPTH.labels(queue=queue).set(depth)
        metrics.QUEUE_LAG.labels(queue=queue).set(lag)
        metrics.QUEUE_PENDING.labels(queue=queue).set(pending)
        metrics.QUEUE_OLDEST_PENDING_AGE.labels(queue=queue).set(oldest)
    metrics.DLQ_DEPTH.set(int(client.xlen(keys.dlq_stream)))


def claim_backlog(client: redis.Redis, keys: Keys, partitions: Iterable[int], *, consumer: str) -> None:
    """Move the entries another (dead) coordinator had read but not acknowledged to `consumer`."""
    for p in partitions:
        for stream in (keys.control_stream(p), keys.results_stream(p)):
            cursor: bytes | str = "0-0"
            while True:
                # Redis 6.2 replies [cursor, entries]; 7.x appends the ids of deleted entries.
                reply = client.xautoclaim(stream, COORDINATOR_GROUP, consumer, 0, cursor, count=500)
                cursor = reply[0]
                if cursor in (b"0-0", "0-0") or not reply[1]:
                    break


def dead_letter_unreadable(client: redis.Redis, keys: Keys, entries: list[Unreadable], *, by: str) -> None:
    """Put results and control entries that are garbage or of an unknown schema version into
    `{ns}:dlq` (with their raw fields, bounded), so that `steppe dlq` shows them; call before acking."""
    for stream, entry_id, _, reason, error in entries:
        log.warning("stream_entry_dead_lettered", stream=stream, entry=entry_id.decode(), reason=reason, error=error)
        metrics.DEAD_LETTERS.labels(queue=stream, reason=reason).inc()
    # Imported here: workers import this module for the helpers below, and never the database stack.
    from orchestrator.store.dead_letters import add_to_stream

    add_to_stream(client, keys, [unreadable_entry(*entry, by=by) for entry in entries])
