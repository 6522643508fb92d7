"""Deploying workflow documents and submitting runs of deployed versions (`NAME` or `NAME@VERSION`).

The CLI, both client transports, the HTTP API and the scheduler go through these two functions,
so a deployed version is validated, stored and started the same way everywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from orchestrator.spec import WorkflowSpec
from orchestrator.store.workflows import Deployed, WorkflowStore, parse_ref
from orchestrator.submit import Submitted, Submitter, check_run_limits


def deploy(submitter: Submitter, text: str | bytes, *, filename: str, base_dir: Path | None) -> Deployed:
    """Validate a document (children resolved and embedded, as for a submission) and store it as
    the next version of its name, or return the version that already has this content."""
    spec = submitter.load(text, filename=filename)
    definition = submitter.definition(spec, base_dir=base_dir)
    check_run_limits(definition, {}, submitter.settings.limits)
    source = text.decode("utf-8", errors="replace") if isinstance(text, bytes) else text
    return WorkflowStore(submitter.store).deploy(spec.name, definition, source)


def submit_ref(
    submitter: Submitter,
    ref: str,
    *,
    inputs: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
    check_handlers: bool = True,
) -> Submitted:
    """Start a run of deployed `name@version` (the newest version without one)."""
    name, version = parse_ref(ref)
    row = WorkflowStore(submitter.store).get(name, version)
    spec = WorkflowSpec.model_validate(row["definition"])
    return submitter.submit(
        spec,
        inputs=inputs,
        idempotency_key=idempotency_key,
        check_handlers=check_handlers,
        workflow_version=int(row["version"]),
    )


def looks_like_ref(value: str) -> bool:
    """A CLI argument that names a deployed workflow rather than a file: no such file, no
    YAML/JSON suffix, no path separator."""
    stripped = value.strip()
    return (
        bool(stripped)
        and not Path(stripped).exists()
        and not stripped.lower().endswith((".yaml", ".yml", ".json"))
        and "/" not in stripped
        and "\n" not in stripped
    )
