"""Routes: runs under /v1 (bearer token when configured), probes at the root (always open)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from orchestrator.api import readiness
from orchestrator.api.errors import JSONBytes, problem
from orchestrator.api.models import (
    ErrorResponse,
    Health,
    Readiness,
    RequestAccepted,
    RunDocument,
    RunList,
    RunSummary,
    SubmitRequest,
    SubmitResponse,
)
from orchestrator.api.resources import Resources
from orchestrator.api.submission import Submission, parse_submission
from orchestrator.state import TERMINAL_RUN_STATUSES, RunStatus
from orchestrator.submit import Submitted

RunId = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._-]+$")]
RETRYABLE_STATUSES = (RunStatus.FAILED, RunStatus.CANCELLED)
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        401: "Missing or wrong bearer token",
        404: "No such run",
        409: "The run is not in a state that allows this",
        413: "Request body over STEPPE_API_MAX_BODY_BYTES",
        415: "Body is neither YAML nor JSON",
        422: "Invalid document, inputs or parameters; positions when known",
        503: "Redis or PostgreSQL unreachable",
    }.items()
}
SUBMIT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/yaml": {"schema": {"type": "string", "description": "The workflow document"}},
            "application/json": {"schema": SubmitRequest.model_json_schema()},
        },
    }
}

bearer = HTTPBearer(auto_error=False, description="Set STEPPE_API_TOKEN on the server to require it")


def resources(request: Request) -> Resources:
    res = request.app.state.resources
    assert isinstance(res, Resources)
    return res


def require_token(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]
) -> None:
    expected = request.app.state.api.token
    if expected is None:
        return
    given = credentials.credentials if credentials is not None else ""
    # Compare digests: constant time, and the token's length does not leak either.
    if not hmac.compare_digest(_digest(given), _digest(expected.get_secret_value())):
        raise HTTPException(
            401,
            "missing or wrong bearer token: send `Authorization: Bearer <token>` with the server's STEPPE_API_TOKEN",
            headers={"WWW-Authenticate": "Bearer"},
        )


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


Res = Annotated[Resources, Depends(resources)]
runs = APIRouter(prefix="/v1", tags=["runs"], dependencies=[Depends(require_token)], responses=ERRORS)
health = APIRouter(tags=["probes"])


@runs.post(
    "/runs",
    status_code=201,
    response_class=JSONBytes,
    responses={201: {"model": SubmitResponse}, 200: {"model": SubmitResponse, "description": "Existing run"}},
    openapi_extra=SUBMIT_BODY,
)
async def submit_run(
    request: Request,
    res: Res,
    wait: Annotated[float | None, Query(ge=0, description="Seconds to wait for a terminal state")] = None,
    input_: Annotated[list[str] | None, Query(alias="input", description="key=value, with a YAML body")] = None,
    filename: Annotated[str | None, Query(max_length=255, description="Document name in error positions")] = None,
    check_handlers: Annotated[bool, Query(description="Refuse handlers no live worker serves")] = True,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", min_length=1, max_length=255)] = None,
) -> JSONBytes:
    """Submit a run: the workflow YAML as the body, or a JSON object with `workflow` and `inputs`.

    201 with the new run; 200 when the idempotency key names an existing run.
    """
    if wait is not None and wait > res.api.max_wait:
        raise HTTPException(422, f"wait is at most {res.api.max_wait:g}s (STEPPE_API_MAX_WAIT); poll the run instead")
    body = await request.body()
    # Parsing a large JSON body (and rendering its mapping as YAML) is CPU work: keep it off the event loop.
    submission = await run_in_threadpool(
        parse_submission,
        body=body,
        content_type=request.headers.get("content-type"),
        filename=filename,
        input_pairs=input_ or [],
        header_key=idempotency_key,
    )
    submitted = await run_in_threadpool(_submit, res, submission, check_handlers)
    store = res.queries()
    if wait is not None:
        await _wait_until_terminal(request, lambda: store.run_status(submitted.run_id), wait)
        doc = await run_in_threadpool(run_document, res, submitted.run_id, False)
        status, run = doc["status"], doc
    else:
        run = None
        status = RunStatus.PENDING if submitted.created else await run_in_threadpool(store.run_status, submitted.run_id)
    content = {
        "run_id": submitted.run_id,
        "workflow": submitted.workflow,
        "created": submitted.created,
        "status": str(status),
        "run": run,
    }
    return JSONBytes(
        content, status_code=201 if submitted.created else 200, headers={"Location": f"/v1/runs/{submitted.run_id}"}
    )


def _submit(res: Resources, submission: Submission, check_handlers: bool) -> Submitted:
    submitter = res.submitter()
    if submission.ref is not None:
        from orchestrator.deployed import submit_ref

        return submit_ref(
            submitter,
            submission.ref,
            inputs=submission.inputs,
            idempotency_key=submission.idempotency_key,
            check_handlers=check_handlers,
        )
    spec = submitter.load(submission.source, filename=submission.filename)
    return submitter.submit(
        spec, inputs=submission.inputs, idempotency_key=submission.idempotency_key, check_handlers=check_handlers
    )


async def _wait_until_terminal(request: Request, status_of: Callable[[], str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.02
    while (await run_in_threadpool(status_of)) not in TERMINAL_RUN_STATUSES:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or await request.is_disconnected():
            return
        await asyncio.sleep(min(delay, remaining))
        delay = min(delay * 1.5, 0.5)


def run_document(res: Resources, run_id: str, include_definition: bool) -> dict[str, Any]:
    doc = res.queries().get_run(run_id)
    if not include_definition:
        doc.pop("definition", None)
    return doc


@runs.get("/runs/{run_id}", response_class=JSONBytes, responses={200: {"model": RunDocument}})
def get_run(
    run_id: RunId, res: Res, include_definition: Annotated[bool, Query(description="Add the workflow")] = False
) -> JSONBytes:
    """The status document of a run: status, inputs, outputs, error and every step."""
    return JSONBytes(run_document(res, run_id, include_definition))


@runs.get("/runs", response_model=RunList)
def list_runs(
    res: Res,
    status: Annotated[
        RunStatus | Literal["waiting"] | None, Query(description="A run status, or waiting: a step waits (§12.1)")
    ] = None,
    workflow: Annotated[str | None, Query(max_length=128)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> RunList:
    """Recent runs, newest first."""
    rows = res.queries().list_runs(status=status, workflow=workflow, limit=limit)
    return RunList(
        runs=[
            RunSummary(
                run_id=r["run_id"],
                workflow=r["workflow"],
                status=r["status"],
                created_at=r["created_at"].isoformat(),
                finished_at=r["finished_at"].isoformat() if r["finished_at"] else None,
                parent_run_id=r["parent_run_id"],
            )
            for r in rows
        ]
    )


@runs.post("/runs/{run_id}/cancel", status_code=202, response_model=RequestAccepted)
def cancel_run(run_id: RunId, res: Res) -> RequestAccepted:
    """Stop dispatching, cancel in-flight steps, and compensate if the workflow says so."""
    current = res.queries().run_status(run_id)
    if current in TERMINAL_RUN_STATUSES:
        raise HTTPException(409, f"run {run_id} is already {current}; there is nothing to cancel")
    res.submitter().request(run_id, "cancel")
    return RequestAccepted(run_id=run_id, requested="cancel")


@runs.post("/runs/{run_id}/retry", status_code=202, response_model=RequestAccepted)
def retry_run(run_id: RunId, res: Res) -> RequestAccepted:
    """Resume a failed or cancelled run from its failed steps, keeping succeeded outputs."""
    current = res.queries().run_status(run_id)
    if current not in RETRYABLE_STATUSES:
        raise HTTPException(409, f"run {run_id} is {current}; only failed or cancelled runs can be retried")
    res.submitter().request(run_id, "retry")
    return RequestAccepted(run_id=run_id, requested="retry")


@health.get("/healthz", response_model=Health)
def healthz() -> Health:
    """Liveness: the process answers."""
    return Health()


@health.get("/readyz", response_class=JSONBytes, responses={200: {"model": Readiness}, 503: {"model": Readiness}})
async def readyz(res: Res) -> JSONBytes:
    """Readiness: Redis answers PING and PostgreSQL answers SELECT 1; 503 says which does not
    (and what kind of failure, without URLs or user names: the probe is open to anyone)."""
    timeout = res.api.ready_timeout
    results = await asyncio.gather(
        readiness.check("redis", lambda: _ping_redis(res), timeout),
        readiness.check("postgres", lambda: _select_one(res), timeout),
    )
    checks = dict(zip(("redis", "postgres"), results, strict=True))
    errors = [problem(readiness.message(name, result)) for name, result in checks.items() if result != "ok"]
    body = {"status": "unavailable" if errors else "ready", "checks": checks, "errors": errors}
    return JSONBytes(body, status_code=503 if errors else 200)


def _ping_redis(res: Resources) -> object:
    return res.redis.ping()


def _select_one(res: Resources) -> object:
    with res.store().connection() as conn:
        return conn.execute("SELECT 1").fetchone()
