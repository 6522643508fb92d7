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
    global _client  # noqa: PLW0603 - one connection per worker process
    if _client is None:
        _client = redis.Redis.from_url(os.environ["STEPPE_REDIS_URL"])
    return _client


def witness_key(kind: str) -> str:
    return f"witness:{os.environ.get('STEPPE_NAMESPACE', 'steppe')}:{kind}"


@handler("test.witness")
async def witness(ctx: StepContext, seconds: float = 0.0, value: Any = None) -> dict[str, Any]:
    """Records every call, sleeps, then records its single effect (I2 of RELIABILITY.md)."""
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


@handler("test.secret_echo")
async def secret_echo(ctx: StepContext, token: str) -> dict[str, Any]:
    """Fails with the secret in its message: the worker must redact it."""
    raise RuntimeError(f"upstream refused token {token}")
