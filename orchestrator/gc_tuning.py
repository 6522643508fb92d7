"""Garbage-collector settings for the long-running processes (coordinator, worker).

A coordinator holds every active run of its partitions in memory (an engine, a projection and
its step records: tens of objects per run). With CPython's default thresholds (700, 10, 10) each
burst of admissions triggers young collections every 700 allocations and full collections each
time the live set grows by a quarter: profiled on 20,000 one-step runs, full collections took
more CPU than the rest of the coordinator together. `tune()` moves what start-up imported into
the permanent generation (never scanned again) and makes collections rarer; reference counting
still frees everything that is not a cycle at once, and cycles are collected as before, later.
"""

from __future__ import annotations

import gc

# Young collections every 200,000 net allocations (not 700); the middle generation after 20 of those;
# a full collection after 100 middle ones (and, as always, only once the live set grew by a quarter).
# Measured on 20,000 one-step workflows (coordinator, gc.callbacks): a young collection there costs
# ~17 ms however few objects it frees (it scans the live runs admitted since the last one), and
# 50,000 spent 0.57 s of the coordinator's CPU in them over ~42,000 runs, 200,000 0.17 s; the
# cyclic garbage they free is a few thousand objects (RunEngine.release breaks the engine's cycles).
THRESHOLDS = (200_000, 20, 100)


def tune() -> None:
    """Call once start-up is done (imports, settings), before the process's loop."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
