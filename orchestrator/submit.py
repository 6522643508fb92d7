"""Submitting runs, and the requests (cancel, retry) that the owning coordinator carries out."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from orchestrator import bus, run_limits
from orchestrator.errors import SubmitError
from orchestrator.keys import Keys
from orchestrator.planner import plan as make_plan
from orchestrator.settings import LimitSettings, Settings
from orchestrator.spec import WorkflowSpec, load_workflow, validate_inputs
from orchestrator.store.leases import partition_of
from orchestrator.store.runs import NewRun, RunStore
from orchestrator.wire import ControlMessage, dumps
from orchestrator.workflow import CompiledWorkflow, compile_workflow
from patterns.hierarchical import collect_children


@dataclass(frozen=True, slots=True)
class Submitted:
    run_id: str
    created: bool
    workflow: str
    version: int | None = None  # the deployed version it runs (`submit NAME@V`), else None


def new_run_id() -> str:
    return f"r-{uuid.uuid4().hex[:20]}"


def check_run_limits(definition: dict[str, Any], inputs: dict[str, Any], limits: LimitSettings) -> None:
    """Every limit a run of `definition` (children embedded) with `inputs` exceeds, as one SubmitError.

    Literal blocks travel in step messages and the stored run, so they are held to the payload
    limit after YAML aliases are expanded; for_each widths and step counts to theirs (run_limits).
    """
    problems = [p.message for p in run_limits.document_problems(definition, limits)]
    problems += run_limits.run_problems(definition, inputs, limits)
    if problems:
        raise SubmitError("; ".join(problems))


def _with_children(definition: dict[str, Any]) -> list[CompiledWorkflow]:
    documents = [definition, *(definition.get("workflows") or {}).values()]
    return [compile_workflow(WorkflowSpec.model_validate(d)) for d in documents]


class Submitter:
    """Validates and records runs; the coordinator picks them up from PostgreSQL."""

    def __init__(self, *, settings: Settings, store: RunStore, client: redis.Redis) -> None:
        self.settings = settings
        self.store = store
        self.redis = client
        self.keys = Keys(settings.namespace)

    def load(self, source: str | bytes, *, filename: str = "<string>") -> WorkflowSpec:
        return load_workflow(source, filename=filename, limits=self.settings.limits)

    def load_file(self, path: Path) -> WorkflowSpec:
        try:
            data = path.read_bytes()
        except OSError as e:
            raise SubmitError(f"cannot read {path}: {e.strerror}; check the path") from e
        return self.load(data, filename=str(path))

    def submit(
        self,
        spec: WorkflowSpec,
        *,
        inputs: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
        check_handlers: bool = True,
        parent_run_id: str | None = None,
        parent_step: str | None = None,
        depth: int = 0,
        base_dir: Path | None = None,
        workflow_version: int | None = None,
    ) -> Submitted:
        """Validate and record one run. `base_dir` is where child workflows are looked for
        (the parent file's directory), besides `STEPPE_WORKFLOW_PATH`."""
        values = validate_inputs(spec, inputs or {})
        size = len(dumps(values))
        if size > self.settings.limits.payload_bytes:
            raise SubmitError(
                f"inputs are {size} bytes, over the {self.settings.limits.payload_bytes}-byte limit; pass large "
                "data by reference (a URL or object key) instead"
            )
        definition = self.definition(spec, base_dir=base_dir)
        check_run_limits(definition, values, self.settings.limits)
        if check_handlers:
            self.check_handlers(self.handlers_of(definition))
        run_id = new_run_id()
        partition = partition_of(run_id, self.settings.coordinator.partitions)
        run_id, created = self.store.create_run(
            NewRun(
                run_id=run_id,
                workflow=spec.name,
                partition=partition,
                definition=definition,
                inputs=values,
                plan=make_plan(spec).to_json(),
                idempotency_key=idempotency_key,
                parent_run_id=parent_run_id,
                parent_step=parent_step,
                depth=depth,
                workflow_version=workflow_version,
            )
        )
        if created:
            bus.notify(self.redis, self.keys, partition, ControlMessage(kind="submitted", run=run_id))
        return Submitted(run_id=run_id, created=created, workflow=spec.name, version=workflow_version)

    def submit_many(
        self, spec: WorkflowSpec, inputs: list[dict[str, Any]], *, check_handlers: bool = True
    ) -> list[str]:
        """Submit one run per inputs mapping in a single transaction (bulk loads, benchmarks)."""
        definition = self.definition(spec, base_dir=None)
        check_run_limits(definition, {}, self.settings.limits)
        if check_handlers:
            self.check_handlers(self.handlers_of(definition))
        plan = make_plan(spec).to_json()
        partitions = self.settings.coordinator.partitions
        rows: list[NewRun] = []
        for values in inputs:
            checked = validate_inputs(spec, values)
            problems = run_limits.run_problems(definition, checked, self.settings.limits)
            if problems:
                raise SubmitError("; ".join(problems))
            run_id = new_run_id()
            rows.append(
                NewRun(
                    run_id=run_id,
                    workflow=spec.name,
                    partition=partition_of(run_id, partitions),
                    definition=definition,
                    inputs=checked,
                    plan=plan,
                )
            )
        self.store.create_runs(rows)
        bus.send(
            self.redis,
            [(self.keys.control_stream(r.partition), ControlMessage(kind="submitted", run=r.run_id)) for r in rows],
        )
        return [r.run_id for r in rows]

    def definition(self, spec: WorkflowSpec, *, base_dir: Path | None) -> dict[str, Any]:
        """The document to store: the spec, with every child workflow it may start embedded."""
        definition = spec.model_dump(mode="json", by_alias=True, exclude_none=True)
        if any(step.workflow for step in spec.steps) or spec.workflows:
            children = collect_children(
                definition,
                base_dir=base_dir,
                load=lambda path: self.load_file(path).model_dump(mode="json", by_alias=True, exclude_none=True),
            )
            for name, child in children.items():
                try:
                    WorkflowSpec.model_validate(child)
                except ValueError as e:
                    raise SubmitError(f"child workflow {name!r} is not valid: {e}") from e
            definition["workflows"] = children
        return definition

    @staticmethod
    def handlers_of(definition: dict[str, Any]) -> set[str]:
        """Handlers a run may call: its own, its gates', compensations' and hooks', and its children's."""
        names: set[str] = set()
        for compiled in _with_children(definition):
            names |= compiled.handlers()
            names |= {hook.handler for hook in compiled.hooks}
        return names

    @staticmethod
    def queues_of(definition: dict[str, Any]) -> set[str]:
        """Queues a run may use, its children's included."""
        return {q for compiled in _with_children(definition) for q in compiled.queues}

    def check_handlers(self, needed: set[str]) -> None:
        live = bus.live_handlers(self.redis, self.keys)
        missing = sorted(h for h in needed if h not in live)
        if not missing:
            return
        if not live:
            raise SubmitError(
                "no live workers advertise handlers, so these cannot be checked: "
                + ", ".join(missing)
                + "; start a worker (`steppe worker --import your.module`) or pass --no-handler-check"
            )
        raise SubmitError(
            "unknown handler(s): "
            + ", ".join(missing)
            + "; live workers serve: "
            + ", ".join(sorted(live))
            + ". Start a worker that imports the module defining them (`steppe worker --import MODULE`), "
            "or pass --no-handler-check to submit anyway"
        )

    def request(self, run_id: str, command: str) -> None:
        """Record a cancel/retry request durably, then wake the owning coordinator."""
        self.store.add_command(run_id, command)
        partition = partition_of(run_id, self.settings.coordinator.partitions)
        bus.notify(self.redis, self.keys, partition, ControlMessage(kind=command, run=run_id))  # type: ignore[arg-type]
