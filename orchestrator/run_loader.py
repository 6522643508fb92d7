"""A coordinator's runs, loaded from PostgreSQL with their engines (`RunLoader.load`).

A stored definition is validated and compiled once per content (a cache of 1,024 definitions;
the whole cache is dropped when it fills), and each new one is announced (`on_compiled`, for the
coordinator to create its queues' consumer groups). A definition that no longer loads — it
validated at submit, validation became stricter since — fails its run (`BatchSplitter.fail_unloadable`);
any other error is logged, and the run is left for an operator. Reads PostgreSQL, never Redis.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Sequence

import orjson
import structlog

from orchestrator.batch import Tracked
from orchestrator.engine import RunEngine
from orchestrator.errors import SteppeError
from orchestrator.hook_runner import HookRunner
from orchestrator.quarantine import BatchSplitter
from orchestrator.settings import Settings
from orchestrator.spec import WorkflowSpec
from orchestrator.state import TERMINAL_RUN_STATUSES
from orchestrator.store.runs import RunStore, StoredRun
from orchestrator.workflow import CompiledWorkflow, compile_workflow

__all__ = ["COMPILED_CACHE_SIZE", "RunLoader"]

log = structlog.get_logger(__name__)

COMPILED_CACHE_SIZE = 1024


class RunLoader:
    """Builds the `RunEngine` of a stored run with the coordinator's settings, clock and hooks."""

    def __init__(
        self,
        *,
        store: RunStore,
        settings: Settings,
        clock: Callable[[], float],
        rng: random.Random,
        hooks: HookRunner,
        splitter: BatchSplitter,
        on_compiled: Callable[[CompiledWorkflow], None],
    ) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        self.rng = rng
        self.hooks = hooks
        self.splitter = splitter
        self.on_compiled = on_compiled
        self._compiled: dict[str, CompiledWorkflow] = {}

    def load(self, run_ids: Sequence[str], partitions: Collection[int], *, finished_too: bool) -> list[Tracked]:
        """The runs of these ids in `partitions`, finished ones only with `finished_too` (late results of
        a finished run are duplicates), but those whose definition no longer loads."""
        tracked: list[Tracked] = []
        for stored in self.store.load_runs(list(run_ids)):
            if stored.partition not in partitions:
                continue
            if stored.projection.status in TERMINAL_RUN_STATUSES and not finished_too:
                continue
            engine = self.engine(stored)
            if engine is not None:
                tracked.append(Tracked(engine=engine, version=stored.version, workflow=stored.workflow))
        return tracked

    def engine(self, stored: StoredRun) -> RunEngine | None:
        """The run's engine, or None when its definition no longer loads (see the module docstring)."""
        try:
            workflow = self.compile(stored.definition_text)
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

    def compile(self, definition: str) -> CompiledWorkflow:
        """The compiled workflow of a definition, as PostgreSQL's text of its jsonb (`StoredRun`):
        equal contents have equal texts, so the text is the cache key and is decoded only on a miss."""
        compiled = self._compiled.get(definition)
        if compiled is None:
            compiled = compile_workflow(WorkflowSpec.model_validate(orjson.loads(definition)))
            if len(self._compiled) >= COMPILED_CACHE_SIZE:
                self._compiled.clear()
            self._compiled[definition] = compiled
            self.on_compiled(compiled)
        return compiled
