"""Handlers used by the end-to-end and fault tests (imported by worker subprocesses)."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import redis

from workers import NonRetryableStepError, StepContext, handler

_client: redis.Redis | None = None


def _redis() -> redis.Redis:
    """The witness's own Redis: STEPPE_TEST_WITNESS_URL when set (fault tests that stop, kill or
    empty the cluster's Redis keep their records elsewhere), else the cluster's."""
    global _client  # noqa: PLW0603 - one connection per worker process
    if _client is None:
        url = os.environ.get("STEPPE_TEST_WITNESS_URL") or os.environ["STEPPE_REDIS_URL"]
        _client = redis.Redis.from_url(url)
    return _client


def witness_key(kind: str) -> str:
    return f"witness:{os.environ.get('STEPPE_NAMESPACE', 'steppe')}:{kind}"


@handler("test.witness")
async def witness(ctx: StepContext, seconds: float = 0.0, value: Any = None) -> dict[str, Any]:
    """Records every call, sleeps, then records its single effect (I2 of docs/reliability.md)."""
    calls = _redis().hincrby(witness_key("calls"), ctx.idempotency_key, 1)
    if seconds:
        await asyncio.sleep(seconds)
    _redis().hincrby(witness_key("effects"), ctx.idempotency_key, 1)
    return {"key": ctx.idempotency_key, "calls": calls, "attempt": ctx.attempt, "value": value}


@handler("test.add")
def add(ctx: StepContext, a: float, b: float) -> dict[str, Any]:
    """A sync handler with typed inputs and outputs."""
    return {"sum": a + b, "parts": [a, b]}


@handler("test.hang")
def hang(ctx: StepContext, seconds: float = 30.0) -> dict[str, Any]:
    """Ignores cancellation: a sync sleep that the worker cannot interrupt."""
    time.sleep(seconds)
    return {}


@handler("test.crash")
def crash(ctx: StepContext) -> dict[str, Any]:
    """Kills its own worker process (a poison message)."""
    os._exit(17)


@handler("test.reject")
async def reject(ctx: StepContext, reason: str = "rejected") -> dict[str, Any]:
    raise NonRetryableStepError(reason)


@handler("test.flaky_once")
async def flaky_once(ctx: StepContext) -> dict[str, Any]:
    """Fails (retryably) on its first call per idempotency key, succeeds afterwards; counts calls."""
    if _redis().hincrby(witness_key("flaky_attempts"), ctx.idempotency_key, 1) == 1:
        raise RuntimeError("first call fails")
    return {"attempt": ctx.attempt}


@handler("test.inputs")
async def inputs(ctx: StepContext, seconds: float = 0.0, item: Any = None) -> dict[str, Any]:
    """Reads `ctx.inputs` (stored once per run in Redis, read by the worker): what it saw of them."""
    if seconds:
        await asyncio.sleep(seconds)
    return {"item": item, "keys": sorted(ctx.inputs), "order": ctx.inputs["order"], "blob": len(ctx.inputs["blob"])}


@handler("test.secret_echo")
async def secret_echo(ctx: StepContext, token: str) -> dict[str, Any]:
    """Fails with the secret in its message: the worker must redact it."""
    raise RuntimeError(f"upstream refused token {token}")


# -- fault tests (tests/faults) ----------------------------------------------------------------


@handler("test.ledger")
async def ledger(ctx: StepContext, seconds: float = 0.0, value: Any = None, hold: str | None = None) -> dict[str, Any]:
    """An idempotent side effect keyed by `ctx.idempotency_key` (like a payment API with one).

    Records every call and every completed execution; the effect itself is written once per key
    (HSETNX), so a redelivered or zombie execution completes without a second effect. With
    `hold`, the call stays in flight until the test sets that flag (at most 60 s): a test that
    needs a step in flight does not race a timer.
    """
    r = _redis()
    call = r.hincrby(witness_key("calls"), ctx.idempotency_key, 1)
    if seconds:
        await asyncio.sleep(seconds)
    if hold is not None:
        deadline = time.monotonic() + 60
        while not r.exists(witness_key(hold)) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    r.hincrby(witness_key("completions"), ctx.idempotency_key, 1)
    if r.hsetnx(witness_key("ledger"), ctx.idempotency_key, f"{os.getpid()}/{ctx.attempt}/{call}"):
        r.hincrby(witness_key("effects"), ctx.idempotency_key, 1)
    return {"key": ctx.idempotency_key, "call": call, "attempt": ctx.attempt, "pid": os.getpid(), "value": value}


@handler("test.record")
async def record(ctx: StepContext, seconds: float = 0.0) -> dict[str, Any]:
    """A witness that also appends its key to an ordered list (compensation order)."""
    r = _redis()
    r.hincrby(witness_key("calls"), ctx.idempotency_key, 1)
    if seconds:
        await asyncio.sleep(seconds)
    r.rpush(witness_key("order"), ctx.idempotency_key)
    r.hincrby(witness_key("effects"), ctx.idempotency_key, 1)
    return {"key": ctx.idempotency_key}


@handler("test.secret_log")
async def secret_log(ctx: StepContext, token: str) -> dict[str, Any]:
    """Logs its secret argument through `ctx.log` (the worker must redact it) and returns its length."""
    ctx.log.info("calling_upstream", token=token, header=f"Bearer {token}")
    return {"length": len(token)}


@handler("test.unstorable")
async def unstorable(ctx: StepContext, kind: str) -> Any:
    """Raises or returns what PostgreSQL cannot store as written (issue 14); YAML cannot carry NUL
    or lone surrogates, so the handler makes them: `nul_error`, `surrogate_error` (raise),
    `big_int` (an integer beyond 64 bits), `deep` (nesting deeper than the JSON encoder's 254)."""
    _redis().hincrby(witness_key("calls"), ctx.idempotency_key, 1)
    if kind == "nul_error":
        raise RuntimeError("bad\x00byte")
    if kind == "surrogate_error":
        raise RuntimeError("lone \ud800 surrogate")
    if kind == "big_int":
        return {"n": 2**70}
    value: Any = "bottom"
    for _ in range(300):
        value = [value]
    return value
