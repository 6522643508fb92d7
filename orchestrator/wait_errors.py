"""Errors of signals and approvals (docs/spec.md §12.1); light, so that the HTTP client maps them too.

Each is a SubmitError (the request was refused, nothing was stored), like a refused cancel:

RunFinishedError      the run is finished              CLI exit 1, HTTP 409
NotWaitingError       the step is not waiting          CLI exit 1, HTTP 409
ApproverRefusedError  not an approver the step names   CLI exit 2, HTTP 403
"""

from __future__ import annotations

from orchestrator.errors import ConflictError, SubmitError

__all__ = ["ApproverRefusedError", "NotWaitingError", "RunFinishedError"]


class RunFinishedError(SubmitError, ConflictError):
    """The run is finished: nothing of it waits any more."""

    exit_code = 1


class NotWaitingError(SubmitError, ConflictError):
    """The step is not waiting for an approval (or already has a decision being applied)."""

    exit_code = 1


class ApproverRefusedError(SubmitError):
    """The step names its approvers and this one is not among them."""

    exit_code = 2
