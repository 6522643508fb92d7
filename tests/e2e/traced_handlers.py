"""Handlers that open their own OpenTelemetry spans (tests/e2e/test_tracing.py imports them in workers)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from opentelemetry import trace

from workers import StepContext, handler

tracer = trace.get_tracer("tests.traced_handlers")


@handler("traced.sync_work")
def sync_work(ctx: StepContext, n: int = 1) -> dict[str, Any]:
    """A sync handler (run on a thread) whose own span must nest under its step's span."""
    with tracer.start_as_current_span("handler.sync_work") as span:
        span.set_attribute("work.n", n)
        time.sleep(0.01)
    return {"n": n}


@handler("traced.async_work")
async def async_work(ctx: StepContext, n: int = 1) -> dict[str, Any]:
    """An async handler: its span, and a nested one, under its step's span."""
    with tracer.start_as_current_span("handler.async_work"), tracer.start_as_current_span("handler.async_inner"):
        await asyncio.sleep(0.01)
    return {"n": n + 1}
