"""Read-ahead (issue 21): a worker's flush carries its next XREADGROUP, against the real Redis the
fixtures start; the concurrency limit holds and every entry read ahead is run and acknowledged."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis

from orchestrator.keys import WORKER_GROUP, Keys
from orchestrator.settings import Settings
from orchestrator.wire import FIELD, ResultMessage, decode_result, encode
from tests.unit.test_worker_streams import message, publish, run
from workers.consumer import Worker
from workers.context import StepContext
from workers.entries import Delivery, Outgoing
from workers.registry import HandlerRegistry
from workers.streams import WorkerStreams


def test_a_flush_carries_a_read_of_at_most_the_slots_it_is_given_per_stream(redis_url: str, namespace: str) -> None:
    async def test(io: WorkerStreams, keys: Keys) -> tuple[list[Delivery] | None, list[Any], list[Any]]:
        await publish(io, "normal", "done")
        (done,) = await io.read(count=1, block=100)
        for priority, step in (("normal", "b1"), ("normal", "b2"), ("normal", "b3"), ("high", "a")):
            await publish(io, priority, step)
        finished = ResultMessage(run="r1", step="done", attempt=1, status="succeeded", worker="w1")
        ahead = await io.flush([Outgoing(done.stream, done.entry_id, 2, finished)], read_ahead=2)
        pending = [
            r
            for s in keys.queue_streams("default")
            for r in await io.client.xpending_range(s, WORKER_GROUP, "-", "+", 10)
        ]
        return ahead, pending, await io.client.xrange(keys.results_stream(2))

    ahead, pending, results = run(redis_url, namespace, test)
    assert ahead is not None
    # Highest priority first; COUNT is per stream in XREADGROUP, as for the read loop's reads.
    assert [d.decode() for d in ahead] == [message("a"), message("b1"), message("b2")]
    assert sorted(r["message_id"] for r in pending) == sorted(d.entry_id for d in ahead)  # "done" was acked
    assert {r["consumer"] for r in pending} == {b"w1"}
    assert [decode_result(f[FIELD]).step for _, f in results] == ["done"]


def test_a_read_ahead_that_fails_leaves_the_flush_done(redis_url: str, namespace: str) -> None:
    async def test(io: WorkerStreams, keys: Keys) -> tuple[list[Delivery] | None, list[Any], list[Any]]:
        await publish(io, "normal", "done")
        (done,) = await io.read(count=1, block=100)
        await io.client.xgroup_destroy(keys.queue_stream("default", "low"), WORKER_GROUP)  # NOGROUP for the read
        finished = ResultMessage(run="r1", step="done", attempt=1, status="succeeded", worker="w1")
        ahead = await io.flush([Outgoing(done.stream, done.entry_id, 2, finished)], read_ahead=4)
        pending = await io.client.xpending_range(done.stream, WORKER_GROUP, "-", "+", 10)
        return ahead, pending, await io.client.xrange(keys.results_stream(2))

    ahead, pending, results = run(redis_url, namespace, test)
    assert ahead is None  # the caller reads on its own (and recreates the group)
    assert pending == []
    assert len(results) == 1


async def _backlog(redis_url: str, namespace: str, *, steps: int, concurrency: int) -> dict[str, Any]:
    """Run a worker over a backlog of `steps` entries: what it ran at most at once, what it read."""
    settings = Settings(_env_file=None, redis_url=redis_url, namespace=namespace, worker={"drain_timeout": 5})
    keys = Keys(namespace)
    running = 0
    most = 0

    async def step(ctx: StepContext, **kwargs: Any) -> dict[str, Any]:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.002)
        running -= 1
        return {}

    registry = HandlerRegistry()
    registry.register("test.echo", step)
    worker = Worker(settings=settings, registry=registry, queues=["default"], concurrency=concurrency)
    flushes: list[int] = []
    reads: list[int] = []
    inflight: list[int] = []
    io_flush, io_read = worker.io.flush, worker.io.read

    async def flush(batch: Sequence[Outgoing], *, read_ahead: int = 0) -> list[Delivery] | None:
        flushes.append(read_ahead)
        got = await io_flush(batch, read_ahead=read_ahead)
        inflight.append(len(worker.inflight) - sum(1 for o in batch if o.finishes) + len(got or []))
        return got

    async def read(*, count: int, block: int) -> list[Delivery]:
        reads.append(count)
        return await io_read(count=count, block=block)

    worker.io.flush = flush  # type: ignore[method-assign]
    worker.io.read = read  # type: ignore[method-assign]
    client = aioredis.Redis.from_url(redis_url)
    stream = keys.queue_stream("default")
    await WorkerStreams(client, keys, worker_id="producer", streams=[stream]).ensure_groups()
    pipe = client.pipeline(transaction=False)
    for i in range(steps):
        pipe.xadd(stream, {FIELD: encode(message(f"s{i}"))})
    await pipe.execute()
    task = asyncio.create_task(worker.run(install_signals=False))
    try:
        async with asyncio.timeout(60):
            while await client.xlen(keys.results_stream(2)) < steps:
                await asyncio.sleep(0.05)
            while (await client.xpending(stream, WORKER_GROUP))["pending"]:
                await asyncio.sleep(0.05)
    finally:
        worker.request_stop()
        code = await asyncio.wait_for(task, 30)
        results = await client.xrange(keys.results_stream(2))
        await client.aclose()
    steps_done = {decode_result(f[FIELD]).step for _, f in results}
    return {"code": code, "most": most, "flushes": flushes, "reads": reads, "inflight": inflight, "done": steps_done}


def test_a_backlog_is_read_by_the_flushes_within_the_concurrency_limit(redis_url: str, namespace: str) -> None:
    seen = asyncio.run(_backlog(redis_url, namespace, steps=200, concurrency=4))
    assert seen["code"] == 0
    assert seen["done"] == {f"s{i}" for i in range(200)}
    assert seen["most"] <= 4, "more handlers ran at once than the worker's concurrency"
    assert max(seen["flushes"]) <= 4, "a read-ahead asked for more than the free slots"
    assert max(seen["reads"]) <= 4
    assert max(seen["inflight"]) <= 2 * 4, "a read-ahead took more entries than the free slots"
    ahead = [n for n in seen["flushes"] if n]
    assert sum(ahead) > 100, f"the flushes read little of the backlog: {seen['flushes']}"
    assert len(seen["reads"]) < len(ahead), f"the read loop kept reading: {seen['reads']}"
