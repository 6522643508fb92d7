"""A coordinator's run engines, built from stored runs (`RunLoader.engine`).

A stored definition is validated and compiled once per content (a cache of 1,024 definitions;
the whole cache is dropped when it fills), and each new one is announced (`on_compiled`, for the
coordinator to create its queues' consumer groups). A definition that no longer loads — it
validated at submit, validation became stricter since — fails its run (`BatchSplitter.fail_unloadable`);
any other error is logged, and the run is left for an operator. No Redis here.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import orjson
import structlog

from orchestrator.engine import RunEngine
from orchestrator.errors import SteppeError
from orchestrator.hook_runner import HookRunner
from orchestrator.quarantine import BatchSplitter
from orchestrator.settings import Settings
from orchestrator.spec import WorkflowSpec
from orchestrator.store.runs import StoredRun
from orchestrator.workflow import CompiledWorkflow, compile_workflow

__all__ = ["COMPILED_CACHE_SIZE", "RunLoader"]

log = structlog.get_logger(__name__)

COMPILED_CACHE_SIZE = 1024


class RunLoader:
    """Builds the `RunEngine` of a stored run with the coordinator's settings, clock and hooks."""

    def __init__(
        self,
        *,
        settings: Settings,
        clock: Callable[[], float],
        rng: random.Random,
        hooks: HookRunner,
        splitter: BatchSplitter,
        on_compiled: Callable[[CompiledWorkflow], None],
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.rng = rng
        self.hooks = hooks
        self.splitter = splitter
        self.on_compiled = on_compiled
        self._compiled: dict[bytes, CompiledWorkflow] = {}

    def engine(self, stored: StoredRun) -> RunEngine | None:
        """The run's engine, or None when its definition no longer loads (see the module docstring)."""
        try:
            workflow = self.compile(stored.definition)
        except (ValueError, SteppeError) as e:  # it validated at submit; validation became stricter since
            self.splitter.fail_unloadable(stored.run_id, e)
            return None
        except Exception as e:  # a stored definition that no longer loads is an operator problem
            log.error("run_definition_unloadable", run_id=stored.run_id, error=str(e))
            return None
        return RunEngine(
            workflow=workflow,
            projection=stored.projection,
            inputs=stored.inputs,
            partition=stored.partition,
            timeout_grace=self.settings.coordinator.timeout_grace,
            clock=self.clock,
            rng=self.rng,
            depth=stored.depth,
            max_depth=self.settings.limits.workflow_depth,
            limits=self.settings.limits,
            pre_checks=self.hooks.pre_checks(workflow),
        )

    def compile(self, definition: dict[str, Any]) -> CompiledWorkflow:
        cache_key = orjson.dumps(definition, option=orjson.OPT_SORT_KEYS)
        compiled = self._compiled.get(cache_key)
        if compiled is None:
            compiled = compile_workflow(WorkflowSpec.model_validate(definition))
            if len(self._compiled) > COMPILED_CACHE_SIZE:
                self._compiled.clear()
            self._compiled[cache_key] = compiled
            self.on_compiled(compiled)
        return compiled
