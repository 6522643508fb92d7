"""TEST-ONLY crash points of the coordinator, driven by the fault tests (tests/faults).

`crash_point` costs one environment lookup per batch that dispatches steps (or loads signals) and does
nothing unless its point's variable (`STEPPE_FAULT_CRASH_BEFORE_COMMIT`, `…_AFTER_COMMIT`, …) is set.

The points, each armed by `STEPPE_FAULT_CRASH_<POINT>=N` (exit 137 the N-th time it is reached with work):
  BEFORE_COMMIT         coordinator.py, a batch that dispatches steps, before its PostgreSQL commit
  AFTER_COMMIT          coordinator.py, the same batch after the commit, before the XADDs
  SCHEDULE_AFTER_SUBMIT scheduler.py, a schedule's run submitted, its tick not recorded yet
  SIGNAL_BEFORE_APPLY   signal_delivery.py, accepted signals or decisions loaded from PostgreSQL for
                        delivery, before the engine applies them and the batch commits their consumption
"""

from __future__ import annotations

import os

_batches: dict[str, int] = {}


def crash_point(point: str, dispatches: int) -> None:
    """TEST-ONLY: die at once, as SIGKILL would, right before or after a commit that dispatches steps
    (or child runs).

    With `STEPPE_FAULT_CRASH_BEFORE_COMMIT=N` or `STEPPE_FAULT_CRASH_AFTER_COMMIT=N` in its
    environment, the coordinator exits with status 137 at its N-th batch that dispatches steps
    (for SIGNAL_BEFORE_APPLY: its N-th delivery that loaded at least one signal; `dispatches` is then
    the number of signals loaded).
    Never set outside the fault tests; costs one environment lookup per dispatching batch.
    """
    wanted = os.environ.get(f"STEPPE_FAULT_CRASH_{point}") if dispatches else None
    if wanted is not None:
        _batches[point] = _batches.get(point, 0) + 1
        if _batches[point] == int(wanted):
            os._exit(137)
