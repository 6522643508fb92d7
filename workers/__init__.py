"""The worker process and the handler API users write against.

from workers import handler, StepContext, RetryableStepError, NonRetryableStepError

@handler("payments.charge")
async def charge(ctx: StepContext, amount: int, currency: str = "EUR") -> dict:
    return {"id": "ch_1"}
"""

from orchestrator.errors import NonRetryableStepError, RetryableStepError, StepError
from workers.context import StepContext
from workers.registry import HandlerRegistry, default_registry, handler

__all__ = [
    "HandlerRegistry",
    "NonRetryableStepError",
    "RetryableStepError",
    "StepContext",
    "StepError",
    "default_registry",
    "handler",
]
