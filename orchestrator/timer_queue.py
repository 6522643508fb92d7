"""The coordinator's pending timers (retries, timeouts of its runs' steps), by due time. No I/O."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable

from orchestrator.engine import Timer

__all__ = ["TimerQueue"]


class TimerQueue:
    """A heap of `Timer`s by due time; timers due at the same time fire in the order they came."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, timers: Iterable[Timer]) -> None:
        for timer in timers:
            heapq.heappush(self._heap, (timer.due, next(self._seq), timer))

    def next_due(self) -> float | None:
        """When the earliest timer is due (unix seconds); None without timers."""
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> list[Timer]:
        """Remove and return the timers due at `now` or before, earliest first."""
        due: list[Timer] = []
        while self._heap and self._heap[0][0] <= now:
            due.append(heapq.heappop(self._heap)[2])
        return due

    def clear(self) -> None:
        self._heap.clear()
