"""Handlers for the pattern examples: handoff, swarm, hierarchical and pre hooks.

steppe run examples/handoff.yaml --import examples.pattern_handlers
"""

from __future__ import annotations

from typing import Any

from workers import NonRetryableStepError, StepContext, handler

_DRAFTS = [
    "Steppe ships.",
    "Steppe ships workflows that finish.",
    "Steppe ships workflows that finish or are undone cleanly, on Redis Streams and PostgreSQL.",
]


@handler("demo.draft")
def draft(ctx: StepContext, topic: str) -> dict[str, Any]:
    """Writes a longer draft each time the reviewer's gate sends it back (`ctx.feedback`)."""
    text = _DRAFTS[min(ctx.attempt - 1, len(_DRAFTS) - 1)]
    return {"topic": topic, "text": text, "words": len(text.split()), "after_feedback": ctx.feedback}


@handler("demo.review")
def review(ctx: StepContext, output: dict[str, Any], min_words: int) -> dict[str, Any]:
    """A gate: approves a draft of at least `min_words` words, else says what is missing."""
    words = int(output.get("words", 0))
    if words >= min_words:
        return {"approved": True}
    return {"approved": False, "feedback": f"{words} words; at least {min_words} needed"}


@handler("demo.classify")
def classify(ctx: StepContext, text: str, dissenters: list[int] | None = None) -> dict[str, Any]:
    """A swarm replica: labels a text; the replicas listed in `dissenters` disagree on purpose."""
    replica = int(ctx.step_key.rsplit("[", 1)[1].rstrip("]"))
    label = "urgent" if "now" in text.lower() or "down" in text.lower() else "routine"
    if replica in (dissenters or []):
        label = "routine" if label == "urgent" else "urgent"
    return {"label": label}


@handler("demo.reserve_stock")
def reserve_stock(ctx: StepContext, sku: str, qty: int) -> dict[str, Any]:
    if qty > 100:
        raise NonRetryableStepError(f"cannot reserve {qty} of {sku}: at most 100 in stock")
    return {"reservation": f"res-{sku}-{qty}"}


@handler("demo.budget_check")
def budget_check(ctx: StepContext, amount: float, limit: float) -> dict[str, Any]:
    """A `pre` hook: vetoes a step of a run whose amount is over the limit, annotates the others."""
    step = (ctx.event or {}).get("step")
    if amount > limit:
        return {"veto": True, "reason": f"amount {amount:g} is over the limit of {limit:g} (step {step})"}
    return {"annotations": {"budget_checked": True, "headroom": limit - amount}}


@handler("demo.pay")
def pay(ctx: StepContext, amount: float) -> dict[str, Any]:
    """Charges `amount`; shows what the `pre` hooks added (`ctx.annotations`)."""
    return {"charged": amount, "annotations": ctx.annotations}
