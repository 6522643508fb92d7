"""TEST-ONLY crash points of the coordinator, driven by the fault tests (tests/faults).

`crash_point` costs one environment lookup per batch that dispatches steps and does
nothing unless `STEPPE_FAULT_CRASH_BEFORE_COMMIT` / `STEPPE_FAULT_CRASH_AFTER_COMMIT` is set.
"""

from __future__ import annotations

import os

_batches: dict[str, int] = {}


def crash_point(point: str, dispatches: int) -> None:
    """TEST-ONLY: die at once, as SIGKILL would, right before or after a commit that dispatches steps
    (or child runs).

    With `STEPPE_FAULT_CRASH_BEFORE_COMMIT=N` or `STEPPE_FAULT_CRASH_AFTER_COMMIT=N` in its
    environment, the coordinator exits with status 137 at its N-th batch that dispatches steps.
    Never set outside the fault tests; costs one environment lookup per dispatching batch.
    """
    wanted = os.environ.get(f"STEPPE_FAULT_CRASH_{point}") if dispatches else None
    if wanted is not None:
        _batches[point] = _batches.get(point, 0) + 1
        if _batches[point] == int(wanted):
            os._exit(137)
