"""Workflow documents: safe YAML loading, pydantic models, validation with file:line:col, inputs."""

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
    ResolvedCompensation,
    ResolvedStep,
    RetryPolicy,
    RetrySpec,
    StepDefaults,
    StepSpec,
    SwarmSpec,
    WorkflowSpec,
)
from orchestrator.spec.positions import Location, PositionMap
from orchestrator.spec.validate import load_workflow, load_workflow_file

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
    "ResolvedCompensation",
    "ResolvedStep",
    "RetryPolicy",
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
