"""Retry policies: the backoff the coordinator schedules, and the tenacity helpers for handler code."""

from __future__ import annotations

import asyncio
import random

import pytest

from orchestrator.errors import NonRetryableStepError, RetryableStepError
from patterns.retry import RetryPolicy, compute_backoff, retry_call, retrying

FAST = {"initial": 0.001, "maximum": 0.005}


@pytest.mark.parametrize(
    ("backoff", "expected"),
    [("fixed", [2.0, 2.0, 2.0, 2.0]), ("linear", [2.0, 4.0, 6.0, 8.0]), ("exponential", [2.0, 4.0, 8.0, 16.0])],
)
def test_backoff_shapes_without_jitter(backoff: str, expected: list[float]) -> None:
    policy = RetryPolicy(backoff=backoff, initial_delay=2.0, max_delay=100.0, jitter=False)  # type: ignore[arg-type]
    assert [compute_backoff(n, policy) for n in range(1, 5)] == expected


def test_backoff_is_capped_by_max_delay_even_after_many_failures() -> None:
    policy = RetryPolicy(initial_delay=1.0, max_delay=60.0, jitter=False)
    assert compute_backoff(7, policy) == 60.0
    assert compute_backoff(10_000, policy) == 60.0  # no overflow
    assert compute_backoff(0, policy) == 1.0  # failures are 1-based; 0 is treated as the first


def test_jitter_stays_between_half_and_the_full_delay_and_is_reproducible_with_a_seed() -> None:
    policy = RetryPolicy(initial_delay=1.0, max_delay=60.0, jitter=True)
    delays = [compute_backoff(4, policy, random.Random(seed)) for seed in range(200)]
    assert all(4.0 <= d <= 8.0 for d in delays)
    assert len(set(delays)) > 100  # spread, so that a burst of failures does not retry in lockstep
    assert compute_backoff(4, policy, random.Random(7)) == compute_backoff(4, policy, random.Random(7))
    assert compute_backoff(3, RetryPolicy(initial_delay=0.0, jitter=True)) == 0.0


def flaky(failures: int, error: type[Exception] = ConnectionError) -> tuple[list[int], object]:
    calls: list[int] = []

    def call(value: int) -> int:
        calls.append(value)
        if len(calls) <= failures:
            raise error(f"attempt {len(calls)} failed")
        return value * 2

    return calls, call


def test_retrying_retries_a_sync_function_until_it_succeeds() -> None:
    calls, call = flaky(2)
    assert retrying(attempts=5, **FAST)(call)(21) == 42  # type: ignore[arg-type]
    assert calls == [21, 21, 21]


def test_retrying_reraises_the_last_error_once_attempts_are_used_up() -> None:
    calls, call = flaky(10)
    with pytest.raises(ConnectionError, match="attempt 3 failed"):
        retrying(attempts=3, **FAST)(call)(1)  # type: ignore[arg-type]
    assert len(calls) == 3


def test_retrying_never_retries_a_non_retryable_step_error() -> None:
    calls, call = flaky(10, NonRetryableStepError)
    with pytest.raises(NonRetryableStepError):
        retrying(attempts=5, **FAST)(call)(1)  # type: ignore[arg-type]
    assert len(calls) == 1


def test_retrying_retries_only_the_given_error_types() -> None:
    calls, call = flaky(10, KeyError)
    with pytest.raises(KeyError):
        retrying(attempts=5, retry_on=(ConnectionError, RetryableStepError), **FAST)(call)(1)  # type: ignore[arg-type]
    assert len(calls) == 1
    calls, call = flaky(1, RetryableStepError)
    assert retrying(attempts=5, retry_on=(RetryableStepError,), **FAST)(call)(2) == 4  # type: ignore[arg-type]


def test_retrying_works_on_coroutines_without_blocking_the_loop() -> None:
    calls: list[int] = []

    @retrying(attempts=4, **FAST)
    async def fetch() -> str:
        calls.append(1)
        await asyncio.sleep(0)
        if len(calls) < 3:
            raise TimeoutError("slow upstream")
        return "ok"

    assert asyncio.run(fetch()) == "ok"
    assert len(calls) == 3


def test_retry_call_uses_the_default_policy_with_the_given_attempts() -> None:
    calls, call = flaky(1)
    assert retry_call(call, 5, attempts=2) == 10  # type: ignore[arg-type]
    calls, call = flaky(5)
    with pytest.raises(ConnectionError):
        retry_call(call, 5, attempts=2)  # type: ignore[arg-type]
    assert len(calls) == 2
