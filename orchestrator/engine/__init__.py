"""The run engine: pure decision logic that turns results and timers into events and dispatches.

`core` holds `RunEngine`, which delegates to two collaborators acting through `ops.EngineOps`:
`patterns.PatternTransitions` (for_each, swarm, handoff, `pre` hooks, child workflows) and
`unwind.Unwinding` (failure, cancel, saga). `indexes` holds the counters they share, `output`
what a drain hands the coordinator. No I/O happens in this package.
"""

from orchestrator.engine.core import DEFER_DELAY, RunEngine
from orchestrator.engine.output import EngineOutput, Timer
from orchestrator.messages import PRE_CHECK_QUEUE, Dispatch, PreCheck

__all__ = ["DEFER_DELAY", "PRE_CHECK_QUEUE", "Dispatch", "EngineOutput", "PreCheck", "RunEngine", "Timer"]
