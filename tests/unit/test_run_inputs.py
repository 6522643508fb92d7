"""`ctx.inputs` without a copy per step: the coordinator stores each run's inputs once in Redis
(orchestrator/run_inputs.py), workers read them once per run (workers/inputs.py). Real Redis."""

from __future__ import annotations

import asyncio
import logging
import random
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
import structlog
from redis.cluster import key_slot

from orchestrator.engine import RunEngine
from orchestrator.keys import Keys
from orchestrator.messages import Dispatch
from orchestrator.run_inputs import INPUTS_TTL, InputsPublisher, RunInputs, encode_inputs
from orchestrator.spec import load_workflow
from orchestrator.state import RunProjection
from orchestrator.wire import ResultMessage, StepMessage, decode_step, encode
from orchestrator.workflow import compile_workflow
from workers.context import StepContext
from workers.inputs import HOOK_INPUTS, InputsCache, InputsUnavailableError
from workers.registry import HandlerRegistry
from workers.runner import Redactor, StepRunner

BLOB = "x" * (100 * 1024)
FAN_OUT = """
name: fan
inputs:
  blob: {type: string}
  items: {type: array}
  nested: {type: object}
steps:
  - id: each
    handler: t.read
    for_each: "${{ inputs.items }}"
    with: {n: "${{ item }}"}
"""


class CountingRedis(aioredis.Redis):  # type: ignore[misc]  # redis is untyped here (pyproject)
    """A real client that counts its GETs."""

    gets = 0

    async def get(self, name: Any) -> Any:
        self.gets += 1
        return await super().get(name)


@pytest.fixture
def keys(namespace: str) -> Keys:
    return Keys(namespace)


@pytest.fixture
def sync_redis(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture(autouse=True)
def restore_output() -> Iterator[None]:
    saved = structlog.get_config()
    processors = list(saved["processors"])
    factory = logging.getLogRecordFactory()
    streams = sys.stdout, sys.stderr
    yield
    structlog.configure(**{**saved, "processors": processors})
    logging.setLogRecordFactory(factory)
    sys.stdout, sys.stderr = streams


def fan_out(items: int, inputs: dict[str, Any] | None = None) -> list[Dispatch]:
    engine = RunEngine(
        workflow=compile_workflow(load_workflow(FAN_OUT)),
        projection=RunProjection(run_id="r1"),
        inputs=inputs if inputs is not None else {"blob": BLOB, "items": list(range(items)), "nested": {"l": [1]}},
        partition=3,
        clock=lambda: 1_000_000.0,
        rng=random.Random(1),
    )
    engine.start()
    return engine.drain().dispatches


def stored_form(outbox: list[Dispatch]) -> bytes:
    inputs = outbox[0].inputs
    assert inputs is not None
    return encode_inputs(inputs.values)


def publish(client: redis.Redis, publisher: InputsPublisher, dispatches: list[Dispatch]) -> None:
    """What Coordinator._flush_unpublished does: inputs keys first, then the steps."""
    pipe = client.pipeline(transaction=False)
    staged = publisher.stage(pipe, dispatches)
    for d in dispatches:
        pipe.xadd(publisher.keys.queue_stream(d.queue, d.priority), {b"m": encode(d.message)})
    publisher.published(staged, pipe.execute(), client)


def run_steps(
    redis_url: str, keys: Keys, messages: list[StepMessage], handler: Any, *, cache_entries: int = 1024
) -> tuple[list[ResultMessage], int]:
    """Run `messages` through one worker's StepRunner (16 at a time); the results and its GET count."""
    registry = HandlerRegistry()
    for name in {m.handler for m in messages}:
        registry.register(name, handler)

    async def main() -> tuple[list[ResultMessage], int]:
        client = CountingRedis.from_url(redis_url)
        slots = asyncio.Semaphore(16)
        with ThreadPoolExecutor(max_workers=4) as executor:
            runner = StepRunner(
                registry=registry, executor=executor, worker_id="w1", payload_limit=1 << 20, redactor=Redactor()
            )
            runner.inputs = InputsCache(client, keys, max_entries=cache_entries)

            async def one(m: StepMessage) -> ResultMessage:
                async with slots:
                    return await runner.run(m, on_heartbeat=lambda: None, cancelled=asyncio.Event())

            results = list(await asyncio.gather(*(one(m) for m in messages)))
        await client.aclose()
        return results, client.gets

    return asyncio.run(main())


def read_inputs(ctx: StepContext, n: int) -> dict[str, Any]:
    return {"n": n, "blob": len(ctx.inputs["blob"]), "keys": sorted(ctx.inputs), "nested": ctx.inputs["nested"]}


# -- worker ------------------------------------------------------------------------------------------


def test_every_step_of_a_run_reads_ctx_inputs_for_one_get(redis_url: str, sync_redis: redis.Redis, keys: Keys) -> None:
    outbox = fan_out(2000)
    publish(sync_redis, InputsPublisher(keys), outbox)
    messages = [decode_step(encode(d.message)) for d in outbox]  # as a worker reads them
    assert max(len(encode(m)) for m in messages) < 1024  # the inputs travel once, not per item

    results, gets = run_steps(redis_url, keys, messages, read_inputs)

    assert [r.status for r in results] == ["succeeded"] * 2000, results[0].error
    assert results[1999].output == {
        "n": 1999,
        "blob": 100 * 1024,
        "keys": ["blob", "items", "nested"],
        "nested": {"l": [1]},
    }
    assert gets == 1  # 16 steps in flight at once waited for the same read, the others hit the cache


def test_a_missing_inputs_key_fails_the_step_retryably_before_its_handler_runs(
    redis_url: str, sync_redis: redis.Redis, keys: Keys
) -> None:
    outbox = fan_out(3)
    messages = [d.message for d in outbox]  # never published: Redis has no inputs key
    called: list[int] = []

    def handler(ctx: StepContext, n: int) -> None:
        called.append(n)

    results, gets = run_steps(redis_url, keys, messages, handler)

    assert called == []
    assert {r.status for r in results} == {"failed"}
    error = results[0].error
    assert error is not None
    assert (error.type, error.retryable) == ("InputsUnavailableError", True)
    key = keys.run_inputs(3, "r1")
    assert error.message == (
        f"the inputs of run r1 are missing from Redis (key {key}): Redis lost them, and the coordinator "
        "writes them back when it publishes the run's steps again; the step is retried"
    )
    assert gets == 1  # the three steps in flight waited for the same read

    async def later_attempts() -> tuple[list[str], int]:
        client = CountingRedis.from_url(redis_url)
        cache = InputsCache(client, keys)
        found = []
        for attempt in range(3):
            if attempt == 2:  # the reconciler re-published the run's steps, and its key with them
                await asyncio.to_thread(publish, sync_redis, InputsPublisher(keys), outbox)
            try:
                found.append(str(len(await cache.get(messages[0]))))
            except InputsUnavailableError:
                found.append("missing")
        await client.aclose()
        return found, client.gets

    found, gets = asyncio.run(later_attempts())
    assert found[:2] == ["missing", "missing"]
    assert int(found[2]) > 100 * 1024
    assert gets == 3  # a missing key is not remembered: each later attempt looks again


def test_a_key_holding_other_inputs_than_the_message_names_is_not_used(
    redis_url: str, sync_redis: redis.Redis, keys: Keys
) -> None:
    outbox = fan_out(1)
    sync_redis.set(keys.run_inputs(3, "r1"), encode_inputs({"blob": "other"}))
    results, _ = run_steps(redis_url, keys, [outbox[0].message], read_inputs)
    error = results[0].error
    assert error is not None
    assert error.retryable
    assert "Redis holds other inputs for run r1" in error.message


def test_ctx_inputs_is_read_only_and_a_step_changing_a_nested_value_changes_only_its_own_copy(
    redis_url: str, sync_redis: redis.Redis, keys: Keys
) -> None:
    outbox = fan_out(2, {"blob": "b", "items": [0, 1], "nested": {"l": [1]}})
    publish(sync_redis, InputsPublisher(keys), outbox)

    def handler(ctx: StepContext, n: int) -> dict[str, Any]:
        seen = list(ctx.inputs["nested"]["l"])
        ctx.inputs["nested"]["l"].append(n)
        with pytest.raises(TypeError):
            ctx.inputs["blob"] = "changed"  # type: ignore[index]
        return {"seen": seen, "repr": repr(ctx.inputs)}

    results, gets = run_steps(redis_url, keys, [d.message for d in outbox], handler)
    assert [r.output for r in results] == [{"seen": [1], "repr": "<ctx.inputs ['blob', 'items', 'nested']>"}] * 2
    assert gets == 1


def test_a_run_without_inputs_names_no_digest_and_its_steps_read_nothing(redis_url: str, keys: Keys) -> None:
    engine = RunEngine(
        workflow=compile_workflow(load_workflow("name: w\nsteps:\n  - {id: a, handler: t.h, with: {n: 1}}\n")),
        projection=RunProjection(run_id="r2"),
        inputs={},
        partition=0,
        clock=lambda: 1_000_000.0,
    )
    engine.start()
    [dispatch] = engine.drain().dispatches
    assert dispatch.inputs is None
    assert "inputs" not in encode(dispatch.message).decode()  # neither a digest nor a copy

    def handler(ctx: StepContext, n: int) -> dict[str, Any]:
        return {"inputs": dict(ctx.inputs)}

    results, gets = run_steps(redis_url, keys, [dispatch.message], handler)
    assert results[0].output == {"inputs": {}}
    assert gets == 0


def test_a_version_1_message_gives_its_inline_inputs(redis_url: str, keys: Keys) -> None:
    old = (
        b'{"run":"r1","step":"a","attempt":1,"handler":"t.h","partition":0,"args":{"n":1},"inputs":{"blob":"x"},"v":1}'
    )

    def handler(ctx: StepContext, n: int) -> dict[str, Any]:
        return {"inputs": dict(ctx.inputs)}

    results, gets = run_steps(redis_url, keys, [decode_step(old)], handler)
    assert results[0].output == {"inputs": {"blob": "x"}}
    assert gets == 0


def test_hooks_are_told_to_pass_inputs_in_their_with(redis_url: str, keys: Keys) -> None:
    hook = StepMessage(run="r1", step="hook:7:5", attempt=1, handler="t.h", partition=0, kind="hook")

    def handler(ctx: StepContext) -> Any:
        return ctx.inputs.get("blob")

    results, _ = run_steps(redis_url, keys, [hook], handler)
    error = results[0].error
    assert error is not None
    assert not error.retryable
    assert error.message == HOOK_INPUTS
    assert "with:" in HOOK_INPUTS


def test_the_cache_is_bounded_and_evicts_the_least_recently_used_run(
    redis_url: str, sync_redis: redis.Redis, keys: Keys
) -> None:
    messages = []
    publisher = InputsPublisher(keys)
    for run in ("a", "b", "c"):
        inputs = RunInputs.of(run, 0, {"v": run})
        assert inputs is not None
        m = StepMessage(run=run, step="s", attempt=1, handler="t.h", partition=0, inputs_digest=inputs.digest)
        publish(sync_redis, publisher, [Dispatch("default", "normal", m, inputs)])
        messages.append(m)

    def handler(ctx: StepContext) -> Any:
        return ctx.inputs["v"]

    # a, b, a (hit), c (evicts b), b (miss): 4 GETs with room for two runs
    order = [messages[0], messages[1], messages[0], messages[2], messages[1]]

    async def main() -> tuple[list[Any], int]:
        client = CountingRedis.from_url(redis_url)
        registry = HandlerRegistry()
        registry.register("t.h", handler)
        with ThreadPoolExecutor(max_workers=1) as executor:
            runner = StepRunner(
                registry=registry, executor=executor, worker_id="w1", payload_limit=1 << 20, redactor=Redactor()
            )
            runner.inputs = InputsCache(client, keys, max_entries=2)
            outputs = [
                (await runner.run(m, on_heartbeat=lambda: None, cancelled=asyncio.Event())).output for m in order
            ]
            assert len(runner.inputs) == 2
        await client.aclose()
        return outputs, client.gets

    outputs, gets = asyncio.run(main())
    assert outputs == ["a", "b", "a", "c", "b"]
    assert gets == 4


# -- coordinator -------------------------------------------------------------------------------------


def test_the_coordinator_writes_the_inputs_once_and_then_only_refreshes_their_expiry(
    sync_redis: redis.Redis, keys: Keys
) -> None:
    publisher = InputsPublisher(keys)
    outbox = fan_out(10)
    key = keys.run_inputs(3, "r1")
    pipe = sync_redis.pipeline(transaction=False)
    first = publisher.stage(pipe, outbox)
    assert first.commands == 2  # SET NX EX and EXPIRE, once for all ten steps
    publisher.published(first, pipe.execute(), sync_redis)
    assert sync_redis.get(key) == stored_form(outbox)
    assert INPUTS_TTL - 5 < sync_redis.ttl(key) <= INPUTS_TTL

    sync_redis.expire(key, 100)
    pipe = sync_redis.pipeline(transaction=False)
    again = publisher.stage(pipe, outbox[:1])
    assert again.commands == 1  # EXPIRE only: the inputs are not sent again
    publisher.published(again, pipe.execute(), sync_redis)
    assert sync_redis.ttl(key) > INPUTS_TTL - 5  # refreshed on write


def test_a_key_redis_lost_is_written_back_at_the_next_publish(sync_redis: redis.Redis, keys: Keys) -> None:
    publisher = InputsPublisher(keys)
    outbox = fan_out(2)
    key = keys.run_inputs(3, "r1")
    publish(sync_redis, publisher, outbox[:1])
    sync_redis.delete(key)  # lost, while the epoch key survived (a failover to a lagging replica)
    publish(sync_redis, publisher, outbox[1:])
    assert sync_redis.get(key) == stored_form(outbox)
    assert sync_redis.ttl(key) > INPUTS_TTL - 5

    sync_redis.delete(key)
    publisher.forget()  # a detected data loss: every run writes its key again with its steps
    pipe = sync_redis.pipeline(transaction=False)
    staged = publisher.stage(pipe, outbox)
    assert staged.commands == 2  # SET NX again
    publisher.published(staged, pipe.execute(), sync_redis)
    assert sync_redis.exists(key)


def test_a_finished_run_s_key_is_deleted_at_the_next_publish_unless_it_was_retried(
    sync_redis: redis.Redis, keys: Keys
) -> None:
    publisher = InputsPublisher(keys)
    outbox = fan_out(2)
    key = keys.run_inputs(3, "r1")
    publish(sync_redis, publisher, outbox)
    publisher.finished("r1", 3)
    assert publisher.has_deletes
    publish(sync_redis, publisher, [])
    assert not sync_redis.exists(key)
    assert not publisher.has_deletes

    publish(sync_redis, publisher, outbox)
    publisher.finished("r1", 3)
    publish(sync_redis, publisher, outbox[:1])  # `steppe retry` re-admitted it before the delete went out
    assert sync_redis.get(key) == stored_form(outbox)
    assert not publisher.has_deletes


def test_an_inputs_key_is_in_the_redis_cluster_slot_of_its_partition(keys: Keys) -> None:
    for partition in (0, 7, 63):
        assert key_slot(keys.run_inputs(partition, "r1").encode()) == key_slot(keys.results_stream(partition).encode())
