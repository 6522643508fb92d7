"""Request and response models of the HTTP API; they also draw the schemas shown at /docs."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from orchestrator.state import RunStatus


class SubmitRequest(BaseModel):
    """JSON body of `POST /v1/runs` (a YAML body is the workflow document itself)."""

    model_config = ConfigDict(extra="forbid")

    workflow: str | dict[str, Any] | None = Field(
        default=None,
        description="The workflow: YAML text, or the same document as a JSON object (error positions then "
        "refer to it rendered as block YAML). Give this or `workflow_ref`",
    )
    workflow_ref: str | None = Field(
        default=None,
        min_length=1,
        max_length=160,
        pattern=r"^[A-Za-z0-9._-]{1,128}(@[A-Za-z0-9]+)?$",
        description="A deployed workflow, `name` (its newest version) or `name@3` (`steppe workflows deploy`)",
        examples=["nightly-report@3"],
    )
    inputs: dict[str, Any] = Field(default_factory=dict, description="Values of the workflow's declared inputs")
    idempotency_key: str | None = Field(
        default=None, min_length=1, max_length=255, description="Submitting again with it returns the same run"
    )

    @model_validator(mode="after")
    def _one_workflow(self) -> SubmitRequest:
        if (self.workflow is None) == (self.workflow_ref is None):
            raise ValueError("give exactly one of `workflow` (the document) and `workflow_ref` (name@version)")
        return self


class ErrorDetail(BaseModel):
    message: str = Field(description="What is wrong and what to do about it")
    file: str | None = Field(default=None, description="Document the problem is in")
    line: int | None = Field(default=None, description="1-based line, when the problem has a position")
    column: int | None = Field(default=None, description="1-based column")


class ErrorResponse(BaseModel):
    errors: list[ErrorDetail]


class StepDocument(BaseModel):
    status: str
    attempts: int
    output: Any = None
    error: dict[str, Any] | None = None
    due_at: float | None = None
    detail: dict[str, Any] | None = None


class RunDocument(BaseModel):
    """The status document (`steppe status --json`)."""

    run_id: str
    workflow: str
    status: RunStatus
    inputs: dict[str, Any]
    outputs: Any = None
    error: dict[str, Any] | None = None
    created_at: str
    finished_at: str | None = None
    parent_run_id: str | None = None
    steps: dict[str, StepDocument]
    plan: dict[str, Any] | None = None
    limits: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Flow control: each concurrency slot or rate token a step waits on or holds, and the key's use",
    )
    definition: dict[str, Any] | None = Field(default=None, description="Only with ?include_definition=true")


class SubmitResponse(BaseModel):
    run_id: str
    workflow: str
    created: bool = Field(description="False when the idempotency key named an existing run")
    status: RunStatus
    run: RunDocument | None = Field(default=None, description="The status document, with ?wait=SECONDS")


class RunSummary(BaseModel):
    run_id: str
    workflow: str
    status: RunStatus
    created_at: str
    finished_at: str | None = None
    parent_run_id: str | None = None


class RunList(BaseModel):
    runs: list[RunSummary]


class RequestAccepted(BaseModel):
    run_id: str
    requested: Literal["cancel", "retry"]


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready", "unavailable"]
    checks: dict[str, str] = Field(description="redis and postgres: `ok` or why not")
    errors: list[ErrorDetail] = Field(default_factory=list)
