"""Built-in handlers, so that demos, load tests and smoke tests need no user code."""

from __future__ import annotations

import asyncio
from typing import Any

from orchestrator.errors import NonRetryableStepError, RetryableStepError
from workers.context import StepContext
from workers.registry import HandlerRegistry


async def echo(ctx: StepContext, **kwargs: Any) -> dict[str, Any]:
    """Output is the resolved `with` mapping."""
    return kwargs


async def noop(ctx: StepContext, **kwargs: Any) -> dict[str, Any]:
    """Return `{}` as fast as possible."""
    return {}


async def sleep(ctx: StepContext, seconds: float = 1.0, **kwargs: Any) -> dict[str, Any]:
    """Sleep `seconds`, heartbeating; cancellation interrupts it."""
    remaining = float(seconds)
    while remaining > 0:
        chunk = min(remaining, 1.0)
        await asyncio.sleep(chunk)
        remaining -= chunk
        ctx.heartbeat()
    return {"slept": float(seconds)}


async def fail(
    ctx: StepContext,
    message: str = "builtin.fail",
    times: int | None = None,
    retryable: bool = True,
    **kwargs: Any,
) -> dict[str, Any]:
    """Fail the first `times` attempts (every attempt when null), then succeed with `{attempts: n}`."""
    if times is None or ctx.attempt <= int(times):
        if retryable:
            raise RetryableStepError(message)
        raise NonRetryableStepError(message)
    return {"attempts": ctx.attempt}


def register_builtins(registry: HandlerRegistry) -> None:
    for name, func in (
        ("builtin.echo", echo),
        ("builtin.noop", noop),
        ("builtin.sleep", sleep),
        ("builtin.fail", fail),
    ):
        registry.register(name, func)
