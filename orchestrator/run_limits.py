"""How much one run may make the coordinator, Redis and PostgreSQL hold: the checks, without I/O.

Each limit is a setting (`STEPPE_LIMITS__…`, `orchestrator.settings.LimitSettings`) and each is
checked as early as its value is known:

* the size of every block that travels in step messages or the stored run (`with`,
  `compensate.with`, `gate.with`, a literal `for_each`, `when`, hooks' `with`, and the same in
  every child workflow), measured after YAML aliases are expanded, against `payload_bytes`,
  and the whole expanded document against `document_bytes` — at validation, with positions;
* the width of a literal `for_each` and the step instances of a run (each for_each item and
  swarm replica counts) — at validation; a `for_each` that references `inputs` — at submit;
  one that references a step output — when the step fans out (the step fails, saying why);
* the child runs under one top-level run, all levels together (`descendants_per_run`) — when a
  child run is about to be created (`orchestrator.children`): the step fails instead.

Every message names the limit, the value and the setting to change.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from orchestrator.errors import TemplateError
from orchestrator.settings import LimitSettings
from orchestrator.spec.positions import Path
from orchestrator.state import StepRecord
from orchestrator.step_keys import StepRole, role_of
from orchestrator.templates import TemplateContext, find_references, resolve
from orchestrator.wire import dumps

PAYLOAD_SETTING = "STEPPE_LIMITS__PAYLOAD_BYTES"
DOCUMENT_SETTING = "STEPPE_LIMITS__DOCUMENT_BYTES"
FOR_EACH_SETTING = "STEPPE_LIMITS__FOR_EACH_ITEMS"
STEPS_SETTING = "STEPPE_LIMITS__STEPS_PER_RUN"
DESCENDANTS_SETTING = "STEPPE_LIMITS__DESCENDANTS_PER_RUN"
BY_REFERENCE = "pass large data by reference (a URL or object key) instead"


class RunLimitError(TemplateError):
    """A run grew past a limit while running (a for_each too wide, too many step instances)."""


@dataclass(frozen=True, slots=True)
class LimitProblem:
    """A limit a document exceeds, at `path` inside it."""

    message: str
    path: Path


def _size(value: Any) -> int | None:
    try:
        return len(dumps(value))
    except (TypeError, msgspec.EncodeError):
        return None  # not JSON data: the models report it


def _blocks(document: Mapping[str, Any], base: Path) -> Iterator[tuple[str, Path, Any]]:
    """(label, path, value) of every literal block that is sent or stored per step or hook."""
    steps = document.get("steps")
    for i, step in enumerate(steps if isinstance(steps, list) else []):
        if not isinstance(step, dict):
            continue
        name = f"step {step.get('id')!r}" if isinstance(step.get("id"), str) else f"step #{i + 1}"
        for key in ("with", "for_each", "when"):
            if step.get(key) is not None:
                yield f"{name} `{key}`", (*base, "steps", i, key), step[key]
        for key in ("compensate", "gate"):
            block = step.get(key)
            if isinstance(block, dict) and block.get("with") is not None:
                yield f"{name} `{key}.with`", (*base, "steps", i, key, "with"), block["with"]
    hooks = document.get("hooks")
    for h, hook in enumerate(hooks if isinstance(hooks, list) else []):
        if isinstance(hook, dict) and hook.get("with") is not None:
            yield f"hook #{h + 1} `with`", (*base, "hooks", h, "with"), hook["with"]


def _instances(step: Mapping[str, Any], widths: Mapping[str, int]) -> int:
    """Step instances one step becomes: its for_each items, swarm replicas, or itself."""
    items = step.get("for_each")
    if isinstance(items, list):
        return max(len(items), 1)
    if isinstance(step.get("id"), str) and step["id"] in widths:
        return max(widths[step["id"]], 1)
    swarm = step.get("swarm")
    replicas = swarm.get("replicas") if isinstance(swarm, dict) else None
    return max(replicas, 1) if isinstance(replicas, int) else 1


def step_instances(document: Mapping[str, Any], widths: Mapping[str, int] | None = None) -> int:
    """How many step instances a run of `document` has (for_each widths known from `widths`)."""
    steps = document.get("steps")
    return sum(_instances(s, widths or {}) for s in (steps if isinstance(steps, list) else []) if isinstance(s, dict))


def too_many_items(label: str, count: int, limits: LimitSettings) -> str | None:
    if count <= limits.for_each_items:
        return None
    return (
        f"{label} has {count:,} items, over the limit of {limits.for_each_items:,} items per for_each "
        f"({FOR_EACH_SETTING}); split the list over several runs or steps, or raise the limit"
    )


def too_many_steps(what: str, count: int, limits: LimitSettings) -> str | None:
    if count <= limits.steps_per_run:
        return None
    return (
        f"{what} has {count:,} step instances (each for_each item and swarm replica counts), over the "
        f"limit of {limits.steps_per_run:,} per run ({STEPS_SETTING}); split the work over several runs, "
        "or raise the limit"
    )


def document_problems(document: Mapping[str, Any], limits: LimitSettings, base: Path = ()) -> list[LimitProblem]:
    """What `document` (plain data, patterns expanded) exceeds, with its embedded child workflows."""
    problems: list[LimitProblem] = []
    total = _size(document)
    if total is not None and total > limits.document_bytes:
        problems.append(
            LimitProblem(
                f"the workflow is {total:,} bytes once YAML aliases are expanded, over the "
                f"{limits.document_bytes:,}-byte document limit ({DOCUMENT_SETTING}); use fewer aliases or "
                f"{BY_REFERENCE}",
                base,
            )
        )
    for label, path, value in _blocks(document, base):
        size = _size(value)
        if size is not None and size > limits.payload_bytes:
            problems.append(
                LimitProblem(
                    f"{label} is {size:,} bytes once YAML aliases are expanded, over the "
                    f"{limits.payload_bytes:,}-byte payload limit ({PAYLOAD_SETTING}); {BY_REFERENCE}",
                    path,
                )
            )
        if label.endswith("`for_each`") and isinstance(value, list):
            message = too_many_items(label, len(value), limits)
            if message is not None:
                problems.append(LimitProblem(message, path))
    steps_message = too_many_steps("the workflow", step_instances(document), limits)
    if steps_message is not None:
        problems.append(LimitProblem(steps_message, (*base, "steps")))
    children = document.get("workflows")
    for name, child in (children if isinstance(children, dict) else {}).items():
        if isinstance(child, dict):
            for problem in document_problems(child, limits, (*base, "workflows", name)):
                prefix = "" if problem.message.startswith("child workflow") else f"child workflow {name!r}: "
                problems.append(LimitProblem(prefix + problem.message, problem.path))
    return problems


def input_widths(document: Mapping[str, Any], inputs: Mapping[str, Any]) -> dict[str, int]:
    """Step id → number of items, for each `for_each` that references only the run's inputs."""
    widths: dict[str, int] = {}
    steps = document.get("steps")
    context = TemplateContext(inputs=inputs, run_id="", workflow=str(document.get("name") or ""))
    for step in steps if isinstance(steps, list) else []:
        expression = step.get("for_each") if isinstance(step, dict) else None
        if not isinstance(expression, str):
            continue
        if any(r.root not in ("inputs", "run") for r in find_references(expression)):
            continue  # decided when the step fans out
        try:
            items = resolve(expression, context)
        except TemplateError:
            continue  # reported when the step starts, with the reason
        if isinstance(items, list):
            widths[str(step["id"])] = len(items)
    return widths


def run_problems(document: Mapping[str, Any], inputs: Mapping[str, Any], limits: LimitSettings) -> list[str]:
    """What a run of `document` with `inputs` exceeds that only the inputs reveal (submit time)."""
    widths = input_widths(document, inputs)
    problems = [
        message
        for step_id, count in widths.items()
        if (message := too_many_items(f"step {step_id!r} `for_each` (from the inputs)", count, limits))
    ]
    if widths:
        message = too_many_steps("with these inputs the run", step_instances(document, widths), limits)
        if message is not None:
            problems.append(message)
    certain = certain_children(document, 0, limits)
    if certain > limits.descendants_per_run:
        problems.append(
            f"the run would start at least {certain:,} child runs (entry steps with `workflow:` and no `when:`, "
            f"all levels up to the depth limit of {limits.workflow_depth}), over the limit of "
            f"{limits.descendants_per_run:,} ({DESCENDANTS_SETTING}); does a child workflow call itself without a "
            "`when:` that stops it? Fix the recursion, or raise the limit"
        )
    return problems


def check_fan_out(
    sid: str, count: int, steps: Mapping[str, StepRecord], *, static_steps: int, limits: LimitSettings
) -> None:
    """Raise RunLimitError when step `sid` fanning out to `count` items outgrows the limits.

    `steps` are the run's step records (fanned-out steps record their width under `items`);
    `static_steps` is the number of steps in the workflow.
    """
    message = too_many_items(f"for_each of step {sid!r}", count, limits)
    if message is None:
        widths = {
            other: int(record.detail.get("items") or 0)
            for other, record in steps.items()
            if other != sid and record.detail.get("items") is not None and role_of(other) is StepRole.STEP
        }
        widths[sid] = count
        total = static_steps + sum(max(n, 1) - 1 for n in widths.values())
        message = too_many_steps("the run", total, limits)
    if message is not None:
        raise RunLimitError(message)


def certain_children(document: Mapping[str, Any], depth: int, limits: LimitSettings) -> int:
    """Child runs that a run of `document` at `depth` starts whatever happens, all levels together:
    those of its entry steps (no `needs`) that run a child workflow without a `when:`, counted up
    to the depth limit, and capped just past the descendants limit (enough to refuse)."""
    if depth >= limits.workflow_depth:
        return 0
    children = document.get("workflows")
    children = children if isinstance(children, dict) else {}
    steps = document.get("steps")
    total = 0
    for step in steps if isinstance(steps, list) else []:
        if not isinstance(step, dict) or step.get("needs") or step.get("when") is not None:
            continue
        child = children.get(step.get("workflow"))
        if isinstance(child, dict):
            nested = {**child, "workflows": {**children, **(child.get("workflows") or {})}}
            total += 1 + certain_children(nested, depth + 1, limits)
        if total > limits.descendants_per_run:
            break
    return total


def too_many_descendants(root_run_id: str, existing: int, limits: LimitSettings) -> str:
    return (
        f"starting another child run would put {existing + 1:,} child runs under run {root_run_id} (all levels), "
        f"over the limit of {limits.descendants_per_run:,} ({DESCENDANTS_SETTING}); does a child workflow "
        "call itself without a `when:` that stops it? Fix the recursion, or raise the limit"
    )
