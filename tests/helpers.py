"""Helpers shared by the test suites: polling instead of sleeping."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def assert_eventually(
    predicate: Callable[[], T],
    *,
    timeout: float = 10.0,
    interval: float = 0.05,
    message: str | Callable[[], str] = "",
) -> T:
    """Poll `predicate` until it returns a truthy value (returned) or fail after `timeout` seconds.

    Exceptions raised by `predicate` count as "not yet"; the last one is chained to the failure.
    `message` (or a callable producing it, evaluated only on failure) explains what was awaited.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    last_value: T | None = None
    while True:
        try:
            last_value = predicate()
            if last_value:
                return last_value
            last_error = None
        except Exception as e:
            last_error = e
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    text = message() if callable(message) else message
    detail = f"last error: {last_error!r}" if last_error is not None else f"last value: {last_value!r}"
    raise AssertionError(
        f"condition not met within {timeout}s: {text or getattr(predicate, '__name__', predicate)} ({detail})"
    ) from last_error
