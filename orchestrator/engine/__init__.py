"""The run engine: pure decision logic that turns results and timers into events and dispatches.

`core` holds `RunEngine`; `patterns` the for_each/swarm, handoff, `pre` hook and child-workflow
transitions it delegates to. No I/O happens in this package.
"""

from orchestrator.engine.core import DEFER_DELAY, PRE_CHECK_QUEUE, Dispatch, EngineOutput, PreCheck, RunEngine, Timer

__all__ = ["DEFER_DELAY", "PRE_CHECK_QUEUE", "Dispatch", "EngineOutput", "PreCheck", "RunEngine", "Timer"]
