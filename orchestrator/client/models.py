"""What the client returns: the status document of `steppe status --json` and `GET /v1/runs/{id}`,
run summaries (`steppe runs`) and history events (`steppe history`), as typed, read-only models.

Both transports fill the same models from the same documents; fields the server adds later are
kept (`model_extra`) rather than refused, so an older client can read a newer server.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, ConfigDict

from orchestrator.state import FAILED_STEP_STATUSES, TERMINAL_RUN_STATUSES, RunStatus, StepStatus

_CONFIG = ConfigDict(frozen=True, extra="allow")


class StepDocument(BaseModel):
    """One step (or one for_each item, `step[3]`) of a run."""

    model_config = _CONFIG

    status: StepStatus
    attempts: int
    output: Any = None
    error: dict[str, Any] | None = None
    due_at: float | None = None  # unix seconds of a scheduled retry
    detail: dict[str, Any] | None = None  # what a pattern recorded (child run, swarm vote, gate)


class RunDocument(BaseModel):
    """The status document of a run (docs/spec.md §8)."""

    model_config = _CONFIG

    run_id: str
    workflow: str
    status: RunStatus
    inputs: dict[str, Any]
    outputs: Any = None
    error: dict[str, Any] | None = None
    created_at: dt.datetime
    finished_at: dt.datetime | None = None
    parent_run_id: str | None = None
    steps: dict[str, StepDocument]
    plan: dict[str, Any] | None = None

    @property
    def finished(self) -> bool:
        """The run reached a terminal status and will not change unless retried."""
        return self.status in TERMINAL_RUN_STATUSES

    @property
    def succeeded(self) -> bool:
        return self.status == RunStatus.SUCCEEDED

    @property
    def step_errors(self) -> dict[str, dict[str, Any]]:
        """The error of every failed or dead-lettered step, by step key."""
        return {
            key: step.error or {"message": f"step {step.status}"}
            for key, step in self.steps.items()
            if step.status in FAILED_STEP_STATUSES
        }


class RunSummary(BaseModel):
    """One row of `client.runs()`."""

    model_config = _CONFIG

    run_id: str
    workflow: str
    status: RunStatus
    created_at: dt.datetime
    finished_at: dt.datetime | None = None
    parent_run_id: str | None = None


class HistoryEvent(BaseModel):
    """One entry of a run's append-only event log."""

    model_config = _CONFIG

    seq: int
    type: str  # an orchestrator.state.EventType value, e.g. "step.succeeded"
    step_key: str | None = None
    attempt: int | None = None
    data: dict[str, Any] | None = None
    created_at: dt.datetime
