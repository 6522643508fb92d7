"""Following one run over HTTP (what `orchestrator.Client(api_url=…)` needs beyond routes.py):

GET /v1/runs/{id}/wait?timeout=S   a long poll: the status document as soon as the run is
                                   finished, or after S seconds (≤ STEPPE_API_MAX_WAIT) with
                                   whatever status it has then; 404 for an unknown run
GET /v1/runs/{id}/events?after=N   the run's event log after sequence number N (`steppe history`)
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from orchestrator.api.errors import JSONBytes
from orchestrator.api.models import RunDocument
from orchestrator.api.routes import ERRORS, Res, RunId, require_token, run_document
from orchestrator.client.transport import poll_delays
from orchestrator.state import TERMINAL_RUN_STATUSES

MAX_SEQ = 2**63 - 1  # workflow_events.seq is a BIGINT

follow = APIRouter(prefix="/v1", tags=["runs"], dependencies=[Depends(require_token)], responses=ERRORS)


class EventDocument(BaseModel):
    seq: int
    type: str = Field(description="e.g. run.submitted, step.dispatched, step.succeeded")
    step_key: str | None = None
    attempt: int | None = None
    data: dict[str, object] | None = None
    created_at: str


class EventList(BaseModel):
    events: list[EventDocument]


@follow.get("/runs/{run_id}/wait", response_class=JSONBytes, responses={200: {"model": RunDocument}})
async def wait_for_run(
    request: Request,
    run_id: RunId,
    res: Res,
    timeout: Annotated[float, Query(ge=0, description="Seconds to wait at most for the run to finish")] = 30.0,
) -> JSONBytes:
    """The status document once the run is finished, or after `timeout` seconds (check `status`)."""
    if timeout > res.api.max_wait:
        raise HTTPException(
            422, f"timeout is at most {res.api.max_wait:g}s (STEPPE_API_MAX_WAIT); ask again to wait longer"
        )
    queries = res.queries()
    deadline = time.monotonic() + timeout
    # The coordinator announces no finished run, so poll its status (5 ms, x1.5, up to 0.5 s);
    # the first poll is also the 404 of an unknown run.
    for delay in poll_delays(cap=0.5):
        status = await run_in_threadpool(queries.run_status, run_id)
        remaining = deadline - time.monotonic()
        if status in TERMINAL_RUN_STATUSES or remaining <= 0 or await request.is_disconnected():
            break
        await asyncio.sleep(min(delay, remaining))
    return JSONBytes(await run_in_threadpool(run_document, res, run_id, False))


@follow.get("/runs/{run_id}/events", response_class=JSONBytes, responses={200: {"model": EventList}})
def run_events(
    run_id: RunId, res: Res, after: Annotated[int, Query(ge=0, le=MAX_SEQ, description="Only seq > after")] = 0
) -> JSONBytes:
    """The run's append-only event log, oldest first."""
    rows = res.queries().events(run_id, after=after)
    return JSONBytes({"events": [{**row, "created_at": row["created_at"].isoformat()} for row in rows]})
