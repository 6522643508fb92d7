"""Hierarchical workflows: a step with `workflow: NAME` runs a child run as one step.

Where children come from: the parent document's `workflows:` section, which
`steppe submit FILE` fills with `NAME.yaml` / `NAME.yml` found beside the parent file
(then in `STEPPE_WORKFLOW_PATH`), recursively, so that a stored run never depends on
files that may change later. The child's run id is derived from the parent's, the step
and the attempt, so that the coordinator can create it idempotently and find it again
after a crash. The child's outputs become the step's output; a child that does not
succeed fails the step, which then follows the parent's retry and failure policy (a
child that failed with a non-retryable error is not retried).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.errors import SubmitError
from orchestrator.state import RunStatus
from orchestrator.wire import ResultMessage, StepErrorInfo

CHILD_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True, slots=True)
class ChildStart:
    """A child run to create once the parent's `step.dispatched` event is committed."""

    run_id: str
    workflow: str
    definition: dict[str, Any]
    inputs: dict[str, Any]
    parent_run_id: str
    parent_step: str
    depth: int


def child_run_id(parent_run_id: str, step_key: str, attempt: int) -> str:
    return f"{parent_run_id}.{step_key}.{attempt}"


def parent_of(child_run_id: str) -> tuple[str, str, int] | None:
    """(parent run id, step key, attempt) of a child run id; None for a top-level run."""
    parts = child_run_id.rsplit(".", 2)
    if len(parts) != 3 or not parts[2].isdigit():
        return None
    return parts[0], parts[1], int(parts[2])


def root_of(run_id: str) -> str:
    """The top-level run a (child) run descends from; itself for a top-level run."""
    while (link := parent_of(run_id)) is not None:
        run_id = link[0]
    return run_id


def outcome(child_run_id: str, status: RunStatus, state: dict[str, Any]) -> ResultMessage | None:
    """The result a finished child run reports to its parent's step."""
    link = parent_of(child_run_id)
    if link is None:
        return None
    parent, step, attempt = link
    if status is RunStatus.SUCCEEDED:
        return ResultMessage(run=parent, step=step, attempt=attempt, status="succeeded", output=state.get("outputs"))
    error = state.get("error") or {}
    detail = error.get("message") or error.get("type") or "no error recorded"
    where = f" at step {error['step']!r}" if error.get("step") else ""
    return ResultMessage(
        run=parent,
        step=step,
        attempt=attempt,
        status="cancelled" if status is RunStatus.CANCELLED else "failed",
        error=StepErrorInfo(
            type="ChildRunFailed",
            message=f"child run {child_run_id} ended {status}{where}: {detail}",
            # A permanent failure inside the child (non-retryable error, depth limit) is not retried
            # by starting another child; anything else follows the parent step's retry policy.
            retryable=bool(error.get("retryable", True)) and status is not RunStatus.CANCELLED,
        ),
    )


def search_path() -> list[Path]:
    raw = os.environ.get("STEPPE_WORKFLOW_PATH", "")
    return [Path(p) for p in raw.split(os.pathsep) if p]


def collect_children(
    document: dict[str, Any],
    *,
    base_dir: Path | None,
    load: Callable[[Path], dict[str, Any]],
    limit: int = 256,
) -> dict[str, dict[str, Any]]:
    """Every child workflow a document may start, by name, found recursively.

    `load` reads and validates one file and returns its document (as stored). Names
    already in the document's `workflows:` section win over files.
    """
    found: dict[str, dict[str, Any]] = dict(document.get("workflows") or {})
    dirs = ([base_dir] if base_dir is not None else []) + search_path()
    queue = [document, *found.values()]
    while queue:
        current = queue.pop()
        for step in current.get("steps") or []:
            name = step.get("workflow")
            if not name or name in found:
                continue
            if name == document.get("name"):  # recursion: bounded at run time by the depth limit
                found[name] = {k: v for k, v in document.items() if k != "workflows"}
                continue
            path = _find(name, dirs)
            if path is None:
                where = ", ".join(str(d) for d in dirs) or "nowhere (no parent directory, STEPPE_WORKFLOW_PATH unset)"
                raise SubmitError(
                    f"step {step.get('id')!r} runs child workflow {name!r}, which was not found: looked for "
                    f"{name}.yaml / {name}.yml in {where}. Put the file beside the parent, add its directory to "
                    f"STEPPE_WORKFLOW_PATH, or define it under `workflows:` in the parent"
                )
            child = load(path)
            if child.get("name") != name:
                raise SubmitError(f"{path} defines workflow {child.get('name')!r}, not {name!r}: rename one of them")
            found[name] = child
            queue.append(child)
            if len(found) > limit:
                raise SubmitError(f"more than {limit} distinct child workflows: flatten the hierarchy")
    return found


def _find(name: str, dirs: list[Path]) -> Path | None:
    for directory in dirs:
        for suffix in CHILD_SUFFIXES:
            candidate = directory / f"{name}{suffix}"
            if candidate.is_file():
                return candidate
    return None
