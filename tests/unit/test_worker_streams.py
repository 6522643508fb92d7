"""`WorkerStreams`, every Redis command of a worker, against the real Redis the fixtures start;
and the group creation and registry heartbeat the coordinator shares with it (orchestrator/streams.py,
called through orchestrator/bus.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
import pytest
import redis
import redis.asyncio as aioredis

from orchestrator import bus
from orchestrator.keys import WORKER_GROUP, Keys
from orchestrator.wire import FIELD, ResultMessage, StepMessage, decode_result, encode
from workers import entries
from workers.entries import Delivery, Outgoing, Refused
from workers.registry import entry_ttl
from workers.streams import WorkerStreams

T = TypeVar("T")


def run(redis_url: str, namespace: str, test: Callable[[WorkerStreams, Keys], Awaitable[T]]) -> T:
    """Run `test` with the streams of a worker "w1" on queue "default" (groups created)."""
    keys = Keys(namespace)

    async def main() -> T:
        io = WorkerStreams(
            aioredis.Redis.from_url(redis_url), keys, worker_id="w1", streams=keys.queue_streams("default")
        )
        try:
            await io.ensure_groups()
            return await test(io, keys)
        finally:
            await io.aclose()

    return asyncio.run(main())


def message(step: str, partition: int = 2) -> StepMessage:
    return StepMessage(run="r1", step=step, attempt=1, handler="test.echo", partition=partition)


async def publish(io: WorkerStreams, priority: str, step: str) -> bytes:
    stream = io.keys.queue_stream("default", priority)
    return bytes(await io.client.xadd(stream, {FIELD: encode(message(step))}))


def test_groups_are_created_once_from_the_first_entry(redis_url: str, namespace: str) -> None:
    async def test(io: WorkerStreams, keys: Keys) -> list[Any]:
        await io.client.xadd(keys.queue_stream("default", "low"), {FIELD: b"x"})
        await io.ensure_groups()  # again: BUSYGROUP is no error
        return [await io.client.xinfo_groups(s) for s in keys.queue_streams("default")]

    groups = run(redis_url, namespace, test)
    assert [[(g["name"], g["last-delivered-id"]) for g in gs] for gs in groups] == [[(b"workers", b"0-0")]] * 3


def test_a_stream_key_of_another_type_is_an_error_not_an_existing_group(redis_url: str, namespace: str) -> None:
    keys = Keys(namespace)
    redis.Redis.from_url(redis_url).set(keys.queue_stream("default", "normal"), "not a stream")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        run(redis_url, namespace, lambda io, keys: asyncio.sleep(0))


def test_the_coordinator_creates_its_groups_and_the_queues_with_the_same_commands(
    redis_url: str, namespace: str
) -> None:
    keys = Keys(namespace)
    client = redis.Redis.from_url(redis_url)
    client.xadd(keys.results_stream(0), {FIELD: b"a result the coordinator must still read"})
    for _ in range(2):  # BUSYGROUP the second time: no error
        bus.ensure_partition_groups(client, keys, [0, 1])
        bus.ensure_queue_groups(client, keys, ["q"])
    streams = [keys.results_stream(0), keys.control_stream(0), keys.results_stream(1), *keys.queue_streams("q")]
    groups = [[(g["name"], g["last-delivered-id"]) for g in client.xinfo_groups(s)] for s in streams]
    assert groups == [[(b"coordinators", b"0-0")]] * 3 + [[(b"workers", b"0-0")]] * 3
    client.set(keys.control_stream(2), "not a stream")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        bus.ensure_partition_groups(client, keys, [2])


def test_reads_come_highest_priority_first(redis_url: str, namespace: str) -> None:
    async def test(io: WorkerStreams, keys: Keys) -> tuple[list[Delivery], list[Delivery]]:
        for priority, step in (("low", "c"), ("normal", "b"), ("high", "a")):
            await publish(io, priority, step)
        first = await io.read(count=10, block=100)
        return first, await io.read(count=10, block=50)

    first, later = run(redis_url, namespace, test)
    assert [(d.stream.rsplit(":", 1)[1], d.deliveries) for d in first] == [("high", 1), ("normal", 1), ("low", 1)]
    assert [d.decode() for d in first] == [message("a"), message("b"), message("c")]
    assert later == []  # nothing new after the block


def test_a_flush_publishes_results_and_dead_letters_and_acks_only_what_is_finished(
    redis_url: str, namespace: str
) -> None:
    async def test(io: WorkerStreams, keys: Keys) -> tuple[list[Any], list[Any], list[bytes], list[bytes]]:
        ids = [await publish(io, "normal", step) for step in ("done", "running")]
        garbage = bytes(await io.client.xadd(keys.queue_stream("default"), {FIELD: b"garbage"}))
        done, running, bad = await io.read(count=10, block=100)
        finished = ResultMessage(run="r1", step="done", attempt=1, status="succeeded", worker="w1")
        refused = bad.decode()
        assert isinstance(refused, Refused)
        batch = [
            Outgoing(done.stream, done.entry_id, 2, finished),
            entries.started(running.stream, running.entry_id, message("running"), worker="w1"),
            entries.dead_letter(bad, refused, queue="default", worker="w1", error=refused.error),
        ]
        await io.flush(batch)
        pending = await io.client.xpending_range(keys.queue_stream("default"), WORKER_GROUP, "-", "+", 10)
        assert [*ids, garbage] == [done.entry_id, running.entry_id, bad.entry_id]
        results = await io.client.xrange(keys.results_stream(2))
        return results, await io.client.xrange(keys.dlq_stream), [r["message_id"] for r in pending], ids

    results, dead, pending, ids = run(redis_url, namespace, test)
    assert [decode_result(f[FIELD]).status for _, f in results] == ["succeeded", "started"]
    assert [(f[b"reason"], f[b"m"], f[b"worker"]) for _, f in dead] == [(b"UndecodableMessage", b"garbage", b"w1")]
    assert pending == [ids[1]]  # the running step's entry stays pending


def test_a_heartbeat_registers_the_worker_and_evicts_only_dead_ones(redis_url: str, namespace: str) -> None:
    now = time.time()
    keys = Keys(namespace)
    admin = redis.Redis.from_url(redis_url)
    slow = {"id": "slow", "heartbeat": now - 50, "heartbeat_interval": 20}  # alive for 60 s
    admin.set(keys.worker("slow"), orjson.dumps(slow), ex=60)
    admin.zadd(keys.workers, {"slow": now - 50, "dead": now - 51})  # dead: its key expired

    async def test(io: WorkerStreams, keys: Keys) -> None:
        await io.heartbeat({"id": "w1", "heartbeat": now, "heartbeat_interval": 0.5}, interval=0.5)

    run(redis_url, namespace, test)
    assert sorted(admin.zrange(keys.workers, 0, -1)) == [b"slow", b"w1"]
    assert orjson.loads(admin.get(keys.worker("w1")) or b"")["heartbeat"] == now
    assert 0 < admin.ttl(keys.worker("w1")) <= int(entry_ttl(0.5)) + 1

    run(redis_url, namespace, lambda io, keys: io.deregister(timeout=5))
    assert admin.zrange(keys.workers, 0, -1) == [b"slow"]
    assert admin.get(keys.worker("w1")) is None


def test_the_coordinator_heartbeat_writes_the_same_registry_shape(redis_url: str, namespace: str) -> None:
    keys = Keys(namespace)
    client = redis.Redis.from_url(redis_url)
    now = time.time()
    client.zadd(keys.coordinators, {"gone": now - 30})
    info = {"id": "c1", "heartbeat": now}
    assert bus.coordinator_heartbeat(client, keys, info, ttl=10) == 1  # "gone" missed a whole lease TTL
    assert client.zrange(keys.coordinators, 0, -1, withscores=True) == [(b"c1", now)]
    assert orjson.loads(client.get(keys.coordinator("c1")) or b"") == info
    assert 0 < client.ttl(keys.coordinator("c1")) <= 20


def test_lease_extension_resets_the_idle_time_and_the_cancel_set_is_read(redis_url: str, namespace: str) -> None:
    async def test(io: WorkerStreams, keys: Keys) -> tuple[int, int, list[bool]]:
        await publish(io, "normal", "a")
        [d] = await io.read(count=1, block=100)
        await asyncio.sleep(0.3)
        [before] = await io.client.xpending_range(d.stream, WORKER_GROUP, "-", "+", 1)
        io.extend([(d.stream, d.entry_id)])
        deadline = time.monotonic() + 10
        while True:  # in the background: wait for it
            [after] = await io.client.xpending_range(d.stream, WORKER_GROUP, "-", "+", 1)
            if after["time_since_delivered"] < 200 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.02)
        await io.client.zadd(keys.cancelled, {"r2": 1})
        return before["time_since_delivered"], after["time_since_delivered"], await io.cancelled(["r1", "r2"])

    before, after, cancelled = run(redis_url, namespace, test)
    assert before >= 300
    assert after < 200
    assert cancelled == [False, True]


def test_reclaim_takes_a_dead_workers_idle_entries_and_reports_trimmed_ones(redis_url: str, namespace: str) -> None:
    async def test(io: WorkerStreams, keys: Keys) -> tuple[list[list[Delivery]], list[Any]]:
        ids = [await publish(io, "normal", step) for step in ("a", "b", "c")]
        stream = keys.queue_stream("default")
        await io.client.xreadgroup(WORKER_GROUP, "dead", {stream: ">"}, count=10)
        await io.client.xdel(stream, ids[1])  # trimmed while pending
        batches = [batch async for batch in io.reclaim(free=10, min_idle=0, suspect_running=False)]
        pending = await io.client.xpending_range(stream, WORKER_GROUP, "-", "+", 10)
        return batches, [(r["message_id"], r["consumer"], r["times_delivered"]) for r in pending]

    [batch], pending = run(redis_url, namespace, test)
    claimed = [(d.decode(), d.deliveries) for d in batch if d.fields is not None]
    assert claimed == [(message("a"), 2), (message("c"), 2)]
    [trimmed] = [d for d in batch if d.fields is None]
    assert trimmed.deliveries == 2
    assert isinstance(trimmed.decode(), Refused)
    assert [(c, n) for _, c, n in pending] == [(b"w1", 2), (b"w1", 2)]


def test_reclaim_stops_at_the_free_slots_and_leaves_busy_entries(redis_url: str, namespace: str) -> None:
    async def test(io: WorkerStreams, keys: Keys) -> tuple[list[Delivery], list[Delivery]]:
        for step in ("a", "b", "c"):
            await publish(io, "normal", step)
        await io.client.xreadgroup(WORKER_GROUP, "dead", {keys.queue_stream("default"): ">"}, count=10)
        one = [d async for batch in io.reclaim(free=1, min_idle=0, suspect_running=False) for d in batch]
        # Idle for an hour: none is, so nothing is claimed.
        none = [d async for batch in io.reclaim(free=10, min_idle=3_600_000, suspect_running=False) for d in batch]
        return one, none

    one, none = run(redis_url, namespace, test)
    assert [d.decode() for d in one] == [message("a")]
    assert none == []
