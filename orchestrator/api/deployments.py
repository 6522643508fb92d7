"""Routes for deployed workflows (`/v1/workflows`) and schedules (`/v1/schedules`), docs/spec.md §12.3.

The same operations as `steppe workflows …` and `steppe schedules …` (orchestrator/deployed.py,
orchestrator/schedule_ops.py), behind the same bearer token as the run routes.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from orchestrator.api.models import ErrorResponse
from orchestrator.api.routes import Res, require_token
from orchestrator.api.submission import check_values
from orchestrator.store.schedules import ScheduleNotFoundError
from orchestrator.store.workflows import WorkflowNotDeployedError

Name = Annotated[str, Path(min_length=1, max_length=160, pattern=r"^[A-Za-z0-9._-]+(@[A-Za-z0-9]+)?$")]
ScheduleId = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "The body is not JSON",
        401: "Missing or wrong bearer token",
        404: "No such workflow, version or schedule",
        413: "Request body over STEPPE_API_MAX_BODY_BYTES",
        422: "Invalid document, schedule or parameters",
        503: "Redis or PostgreSQL unreachable",
    }.items()
}
deployments = APIRouter(prefix="/v1", dependencies=[Depends(require_token)], responses=ERRORS)


class Deployment(BaseModel):
    name: str
    version: int
    created: bool = Field(description="False when identical content was deployed before (that version)")
    digest: str = Field(description="SHA-256 of the canonical definition")


class WorkflowSummary(BaseModel):
    name: str
    version: int = Field(description="The newest version")
    versions: int
    created_at: str
    description: str | None = None


class WorkflowVersion(BaseModel):
    name: str
    version: int
    digest: str
    created_at: str
    definition: dict[str, Any]
    source: str
    versions: list[int]


class ScheduleCreate(BaseModel):
    """Body of `POST /v1/schedules` (durations as `10s`, `5m`, `1h` or seconds)."""

    model_config = ConfigDict(extra="forbid")

    schedule_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    workflow: str = Field(min_length=1, max_length=160, description="NAME (newest at each tick) or NAME@VERSION")
    cron: str | None = Field(default=None, max_length=200, description="Five-field cron, e.g. `0 2 * * *`")
    timezone: str = Field(default="UTC", max_length=64, description="IANA time zone of `cron`")
    every: str | float | None = Field(default=None, description="Interval instead of `cron`, e.g. `10s`")
    inputs: dict[str, Any] = Field(default_factory=dict)
    overlap: str = Field(default="skip", description="skip | allow | cancel_previous")
    catchup: str = Field(default="latest", description="none | latest | all")
    catchup_window: str | float = Field(default="1h")
    jitter: str | float = Field(default=0)


class Schedule(BaseModel):
    """A schedule as `steppe schedules list --json` prints it."""

    schedule_id: str
    workflow: str
    cron: str | None
    timezone: str
    every_seconds: float | None
    inputs: dict[str, Any]
    overlap: str
    catchup: str
    catchup_window_seconds: float
    jitter_seconds: float
    paused: bool
    next_fire_at: str | None = Field(description="In the schedule's time zone; null while paused")
    upcoming: list[str]
    last_tick_at: str | None
    last_run_id: str | None
    last_error: str | None
    fired: int
    skipped: int
    created_at: str


class ScheduleList(BaseModel):
    schedules: list[Schedule]


class Triggered(BaseModel):
    run_id: str
    workflow: str
    version: int | None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _not_found(e: Exception) -> HTTPException:
    return HTTPException(404, str(e))


@deployments.post("/workflows", status_code=201, response_model=Deployment, tags=["workflows"])
async def deploy_workflow(request: Request, res: Res) -> Deployment:
    """Deploy the workflow YAML in the body as the next version of its name (the existing version when
    identical content was deployed before)."""
    from orchestrator.deployed import deploy

    body = await request.body()
    done = await run_in_threadpool(deploy, res.submitter(), body, filename="<request body>", base_dir=None)
    return Deployment(name=done.name, version=done.version, created=done.created, digest=done.digest)


@deployments.get("/workflows", response_model=list[WorkflowSummary], tags=["workflows"])
def list_workflows(res: Res) -> list[WorkflowSummary]:
    """Every deployed workflow with its newest version."""
    from orchestrator.store.workflows import WorkflowStore

    return [
        WorkflowSummary(
            name=r["name"],
            version=r["version"],
            versions=r["versions"],
            created_at=r["created_at"].isoformat(),
            description=r["description"],
        )
        for r in WorkflowStore(res.store()).list_latest()
    ]


@deployments.get("/workflows/{ref}", response_model=WorkflowVersion, tags=["workflows"])
def show_workflow(ref: Name, res: Res) -> WorkflowVersion:
    """`name` (its newest version) or `name@3`: the document and the versions of that name."""
    from orchestrator.store.workflows import WorkflowStore, parse_ref

    name, version = parse_ref(ref)
    store = WorkflowStore(res.store())
    try:
        row = store.get(name, version)
    except WorkflowNotDeployedError as e:
        raise _not_found(e) from None
    return WorkflowVersion(
        name=row["name"],
        version=row["version"],
        digest=row["digest"],
        created_at=row["created_at"].isoformat(),
        definition=row["definition"],
        source=row["source"],
        versions=[v["version"] for v in store.versions(name)],
    )


@deployments.post("/schedules", status_code=201, response_model=Schedule, tags=["schedules"])
def add_schedule(res: Res, body: Annotated[ScheduleCreate, Body()]) -> Schedule:
    """Add a schedule of a deployed workflow; its first tick is the first after now."""
    from orchestrator import schedule_ops

    values = body.model_dump()
    check_values(values)  # NUL, unpaired surrogates and deep nesting refused before anything is stored
    request = schedule_ops.ScheduleRequest(**values)
    return Schedule(**schedule_ops.add(res.submitter(), request, now=_now()))


@deployments.get("/schedules", response_model=ScheduleList, tags=["schedules"])
def list_schedules(res: Res) -> ScheduleList:
    """Every schedule with its next fire times."""
    from orchestrator import schedule_ops
    from orchestrator.store.schedules import ScheduleStore

    return ScheduleList(schedules=[Schedule(**schedule_ops.describe(r)) for r in ScheduleStore(res.store()).all()])


@deployments.get("/schedules/{schedule_id}", response_model=Schedule, tags=["schedules"])
def show_schedule(schedule_id: ScheduleId, res: Res) -> Schedule:
    from orchestrator import schedule_ops
    from orchestrator.store.schedules import ScheduleStore

    try:
        return Schedule(**schedule_ops.describe(ScheduleStore(res.store()).get(schedule_id)))
    except ScheduleNotFoundError as e:
        raise _not_found(e) from None


@deployments.post("/schedules/{schedule_id}/pause", response_model=Schedule, tags=["schedules"])
def pause_schedule(schedule_id: ScheduleId, res: Res) -> Schedule:
    """Stop firing; ticks while paused are not caught up."""
    from orchestrator import schedule_ops

    try:
        return Schedule(**schedule_ops.pause(res.submitter(), schedule_id))
    except ScheduleNotFoundError as e:
        raise _not_found(e) from None


@deployments.post("/schedules/{schedule_id}/resume", response_model=Schedule, tags=["schedules"])
def resume_schedule(schedule_id: ScheduleId, res: Res) -> Schedule:
    """Fire again from the next tick after now."""
    from orchestrator import schedule_ops

    try:
        return Schedule(**schedule_ops.resume(res.submitter(), schedule_id, now=_now()))
    except ScheduleNotFoundError as e:
        raise _not_found(e) from None


@deployments.post("/schedules/{schedule_id}/trigger", status_code=201, response_model=Triggered, tags=["schedules"])
def trigger_schedule(schedule_id: ScheduleId, res: Res) -> Triggered:
    """Start a run of the schedule's workflow now, besides its ticks."""
    from orchestrator import schedule_ops

    try:
        done = schedule_ops.trigger(res.submitter(), schedule_id, now=_now())
    except ScheduleNotFoundError as e:
        raise _not_found(e) from None
    return Triggered(run_id=done.run_id, workflow=done.workflow, version=done.version)


@deployments.delete("/schedules/{schedule_id}", status_code=204, tags=["schedules"])
def remove_schedule(schedule_id: ScheduleId, res: Res) -> None:
    """Delete the schedule (its runs stay)."""
    from orchestrator.store.schedules import ScheduleStore

    try:
        ScheduleStore(res.store()).remove(schedule_id)
    except ScheduleNotFoundError as e:
        raise _not_found(e) from None
