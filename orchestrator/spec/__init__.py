"""Workflow documents: safe YAML loading, pydantic models, validation with file:line:col, inputs."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator.spec.inputs import parse_cli_inputs, validate_inputs
    from orchestrator.spec.loader import LoadedDocument, load_yaml
    from orchestrator.spec.model import (
        DEFAULT_PRIORITY,
        DEFAULT_QUEUE,
        DEFAULT_TIMEOUT,
        BreakerSpec,
        CompensateSpec,
        GateSpec,
        HookSpec,
        InputSpec,
        RetrySpec,
        StepDefaults,
        StepSpec,
        SwarmSpec,
        WorkflowSpec,
    )
    from orchestrator.spec.positions import Location, PositionMap
    from orchestrator.spec.validate import load_workflow, load_workflow_file

# The submodule that defines each public name. Names are imported on first use (PEP 562) so
# that `orchestrator.spec.model` alone does not also load validation, the planner and NetworkX.
_SOURCES = {
    "parse_cli_inputs": "inputs",
    "validate_inputs": "inputs",
    "LoadedDocument": "loader",
    "load_yaml": "loader",
    "DEFAULT_PRIORITY": "model",
    "DEFAULT_QUEUE": "model",
    "DEFAULT_TIMEOUT": "model",
    "BreakerSpec": "model",
    "CompensateSpec": "model",
    "GateSpec": "model",
    "HookSpec": "model",
    "InputSpec": "model",
    "RetrySpec": "model",
    "StepDefaults": "model",
    "StepSpec": "model",
    "SwarmSpec": "model",
    "WorkflowSpec": "model",
    "Location": "positions",
    "PositionMap": "positions",
    "load_workflow": "validate",
    "load_workflow_file": "validate",
}

__all__ = [
    "DEFAULT_PRIORITY",
    "DEFAULT_QUEUE",
    "DEFAULT_TIMEOUT",
    "BreakerSpec",
    "CompensateSpec",
    "GateSpec",
    "HookSpec",
    "InputSpec",
    "LoadedDocument",
    "Location",
    "PositionMap",
    "RetrySpec",
    "StepDefaults",
    "StepSpec",
    "SwarmSpec",
    "WorkflowSpec",
    "load_workflow",
    "load_workflow_file",
    "load_yaml",
    "parse_cli_inputs",
    "validate_inputs",
]

if not TYPE_CHECKING:  # mypy sees the imports above; a visible __getattr__ would make every name Any

    def __getattr__(name: str) -> Any:
        source = _SOURCES.get(name)
        if source is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{__name__}.{source}"), name)
        globals()[name] = value
        return value
