"""Retry policies: the backoff the coordinator schedules, and tenacity helpers for handler code."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, ParamSpec, TypeVar

import tenacity

from orchestrator.durations import MAX_DURATION
from orchestrator.errors import NonRetryableStepError

P = ParamSpec("P")
R = TypeVar("R")

Backoff = Literal["exponential", "fixed", "linear"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how fast a step is retried: the one complete retry policy.

    A workflow's `retry:` blocks (`orchestrator.spec.model.RetrySpec`, fields optional) become
    one through `orchestrator.workflow.retry_policy`; hooks and pre-checks use fixed ones.
    """

    max_attempts: int = 3
    backoff: Backoff = "exponential"
    initial_delay: float = 1.0
    max_delay: float = 60.0
    jitter: bool = True


def compute_backoff(failures: int, policy: RetryPolicy, rng: random.Random | None = None) -> float:
    """Delay in seconds before the retry that follows the `failures`-th failure (1-based).

    Exponential backoff uses "full jitter" when enabled: a uniform draw in [d/2, d], which
    spreads a burst of failures without ever retrying immediately. The delay never exceeds
    MAX_DURATION, whatever the policy says (validation bounds it too), so the due time it
    gives is always one PostgreSQL and `datetime` can store.
    """
    n = max(failures, 1)
    if policy.backoff == "fixed":
        delay = policy.initial_delay
    elif policy.backoff == "linear":
        delay = policy.initial_delay * n
    else:
        delay = policy.initial_delay * (2 ** min(n - 1, 32))
    delay = min(delay, policy.max_delay)
    if not 0 <= delay <= MAX_DURATION:  # also NaN: a policy built without validation
        delay = 0.0 if delay < 0 else MAX_DURATION
    if policy.jitter and delay > 0:
        delay = (rng or random).uniform(delay / 2, delay)
    return delay


def retrying(
    *,
    attempts: int = 5,
    initial: float = 0.1,
    maximum: float = 10.0,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorator for code inside handlers: exponential backoff with jitter, then re-raise.

    `NonRetryableStepError` is never retried. Works on sync and async functions.
    """
    return tenacity.retry(
        stop=tenacity.stop_after_attempt(attempts),
        wait=tenacity.wait_random_exponential(multiplier=initial, max=maximum),
        retry=tenacity.retry_if_exception_type(retry_on) & tenacity.retry_if_not_exception_type(NonRetryableStepError),
        reraise=True,
    )


def retry_call(func: Callable[..., R], *args: Any, attempts: int = 5, **kwargs: Any) -> R:
    """Call `func` with the default `retrying` policy."""
    return retrying(attempts=attempts)(func)(*args, **kwargs)
