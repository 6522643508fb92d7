"""Handlers of the flow-control tests (tests/e2e/test_flow_control.py): a witness of intervals."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import orjson
import redis

from workers import StepContext, handler

_client: redis.Redis | None = None


def _redis() -> redis.Redis:
    global _client  # noqa: PLW0603 - one connection per worker process
    if _client is None:
        _client = redis.Redis.from_url(os.environ.get("STEPPE_TEST_WITNESS_URL") or os.environ["STEPPE_REDIS_URL"])
    return _client


def intervals_key(label: str) -> str:
    return f"witness:{os.environ.get('STEPPE_NAMESPACE', 'steppe')}:intervals:{label}"


@handler("test.interval")
async def interval(ctx: StepContext, label: str = "all", seconds: float = 0.1) -> dict[str, Any]:
    """Records the wall-clock start and end of every execution under `label`."""
    start = time.time()
    await asyncio.sleep(seconds)
    end = time.time()
    _redis().rpush(intervals_key(label), orjson.dumps({"key": ctx.idempotency_key, "start": start, "end": end}))
    return {"start": start, "end": end}
