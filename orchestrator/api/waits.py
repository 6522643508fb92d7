"""Routes of durable waits (docs/spec.md §12.1): signals, and approval decisions, under /v1.

POST /v1/runs/{id}/signals/{name}        body = the JSON payload (the waiting step's output)
POST /v1/runs/{id}/steps/{step}/approve  body = {"by", "comment"} (both optional)
POST /v1/runs/{id}/steps/{step}/reject

202 accepted (stored durably before the answer); 200 a repeated Idempotency-Key; 404 unknown run;
409 a finished run, or a step that is not waiting for an approval; 403 an approver the step does not
name; 422 a bad name or payload.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Header, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from orchestrator.api.errors import JSONBytes
from orchestrator.api.models import ErrorResponse
from orchestrator.api.resources import Resources
from orchestrator.api.routes import ERRORS, Res, RunId, require_token
from orchestrator.signals import MAX_COMMENT_LENGTH, MAX_KEY_LENGTH, Signaller
from orchestrator.spec.model import ID_PATTERN, NAME_PATTERN, SIGNAL_PATTERN
from orchestrator.store.signals import SignalReceipt
from orchestrator.wait_errors import ApproverRefusedError, NotWaitingError, RunFinishedError

__all__ = ["waits"]

# Checked by Signaller (a 422 saying what a name may hold), so that both client transports say the same.
SignalName = Annotated[
    str, Path(max_length=256, description=f"The signal's name, e.g. payment-webhook (`{SIGNAL_PATTERN}`)")
]
StepId = Annotated[str, Path(max_length=256, description=f"The id of a waiting `approval:` step (`{ID_PATTERN}`)")]
waits = APIRouter(
    prefix="/v1",
    tags=["waits"],
    dependencies=[Depends(require_token)],
    responses={**ERRORS, 403: {"model": ErrorResponse, "description": "Not an approver this step names"}},
)
ANY_JSON: dict[str, Any] = {
    "requestBody": {
        "required": False,
        "content": {"application/json": {"schema": {"description": "Any JSON value: the waiting step's output"}}},
    }
}


class SignalAccepted(BaseModel):
    run_id: str
    name: str
    signal_id: int = Field(description="The stored signal's id (the same for a repeated idempotency key)")
    duplicate: bool = Field(description="True when the idempotency key had been accepted before")


class Decision(BaseModel):
    model_config = ConfigDict(extra="forbid")

    by: str | None = Field(default=None, pattern=NAME_PATTERN, description="Who decides")
    comment: str | None = Field(default=None, max_length=MAX_COMMENT_LENGTH)


class DecisionAccepted(BaseModel):
    run_id: str
    step: str
    decision: Literal["approve", "reject"]
    signal_id: int


def _signaller(res: Resources) -> Signaller:
    return Signaller(settings=res.settings, store=res.store(), client=res.redis)


def _json(body: bytes) -> Any:
    if not body.strip():
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise HTTPException(422, f"the body is not JSON ({e}); send the payload as a JSON value") from e


@waits.post(
    "/runs/{run_id}/signals/{name}",
    status_code=202,
    response_class=JSONBytes,
    responses={202: {"model": SignalAccepted}, 200: {"model": SignalAccepted, "description": "Repeated key"}},
    openapi_extra=ANY_JSON,
)
async def send_signal(
    run_id: RunId,
    name: SignalName,
    request: Request,
    res: Res,
    idempotency_key: Annotated[
        str | None, Header(alias="Idempotency-Key", min_length=1, max_length=MAX_KEY_LENGTH)
    ] = None,
    key: Annotated[
        str | None,
        Query(alias="idempotency_key", min_length=1, max_length=MAX_KEY_LENGTH, description="Or the header"),
    ] = None,
) -> JSONBytes:
    """Send a signal: the first step of the run waiting for `name` (now or later) succeeds with the payload.

    The same idempotency key (the `Idempotency-Key` header, or `?idempotency_key=`) is accepted once."""
    idempotency_key = idempotency_key or key
    payload = _json(await request.body())
    try:
        receipt: SignalReceipt = await run_in_threadpool(
            _signaller(res).signal, run_id, name, payload, idempotency_key=idempotency_key
        )
    except RunFinishedError as e:
        raise HTTPException(409, str(e)) from e
    body = SignalAccepted(run_id=run_id, name=name, signal_id=receipt.signal_id, duplicate=receipt.duplicate)
    return JSONBytes(body.model_dump(), status_code=200 if receipt.duplicate else 202)


async def _decide(run_id: str, step: str, request: Request, res: Resources, *, approve: bool) -> DecisionAccepted:
    raw = _json(await request.body())
    try:
        decision = Decision.model_validate(raw or {})
    except ValidationError as e:
        raise HTTPException(422, f"the body must be {{'by': NAME, 'comment': TEXT}}: {e.errors()[0]['msg']}") from e
    try:
        receipt: SignalReceipt = await run_in_threadpool(
            _signaller(res).decide, run_id, step, approve=approve, by=decision.by, comment=decision.comment
        )
    except ApproverRefusedError as e:
        raise HTTPException(403, str(e)) from e
    except (RunFinishedError, NotWaitingError) as e:
        raise HTTPException(409, str(e)) from e
    return DecisionAccepted(
        run_id=run_id, step=step, decision="approve" if approve else "reject", signal_id=receipt.signal_id
    )


@waits.post(
    "/runs/{run_id}/steps/{step}/approve", status_code=202, response_model=DecisionAccepted, openapi_extra=ANY_JSON
)
async def approve_step(run_id: RunId, step: StepId, request: Request, res: Res) -> DecisionAccepted:
    """Approve a waiting `approval:` step; it succeeds with `{approved, by, comment, at}`."""
    return await _decide(run_id, step, request, res, approve=True)


@waits.post(
    "/runs/{run_id}/steps/{step}/reject", status_code=202, response_model=DecisionAccepted, openapi_extra=ANY_JSON
)
async def reject_step(run_id: RunId, step: StepId, request: Request, res: Res) -> DecisionAccepted:
    """Reject a waiting `approval:` step; it fails with the non-retryable `ApprovalRejected`."""
    return await _decide(run_id, step, request, res, approve=False)
