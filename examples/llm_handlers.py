"""Handlers of examples/llm_batch.yaml: a stand-in for an LLM API that must not be overwhelmed."""

from __future__ import annotations

import asyncio
from typing import Any

from workers import StepContext, handler


@handler("llm.chunk")
async def chunk(ctx: StepContext, count: int = 200) -> dict[str, Any]:
    """Split the batch into `count` documents (here: their names)."""
    return {"documents": [f"document-{i:03d}" for i in range(int(count))]}


@handler("llm.summarise")
async def summarise(ctx: StepContext, text: str, seconds: float = 0.1) -> dict[str, Any]:
    """Pretend to call the model: wait `seconds`, return a summary."""
    await asyncio.sleep(float(seconds))
    return {"document": text, "summary": f"{text}: a summary", "model": "stand-in"}
