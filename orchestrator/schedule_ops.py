"""Schedule operations shared by the CLI and the HTTP API: add, pause, resume, trigger, remove, describe."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from orchestrator.deployed import submit_ref
from orchestrator.durations import DurationError, parse_duration
from orchestrator.errors import SubmitError
from orchestrator.schedule_times import Catchup, Overlap, Policy, Timing, fire_time, zone
from orchestrator.spec import WorkflowSpec, validate_inputs
from orchestrator.store.leases import partition_of
from orchestrator.store.schedules import ID_PATTERN, NewSchedule, ScheduleStore, policy_of, timing_of
from orchestrator.store.workflows import WorkflowStore, format_ref, parse_ref
from orchestrator.submit import Submitted, Submitter

UPCOMING = 3  # next fire times `schedules show` and the API list


@dataclass(frozen=True, slots=True)
class ScheduleRequest:
    """What `steppe schedules add` and `POST /v1/schedules` take (durations as text or seconds)."""

    schedule_id: str
    workflow: str
    cron: str | None = None
    timezone: str = "UTC"
    every: str | float | None = None
    inputs: dict[str, Any] = field(default_factory=dict)
    overlap: str = "skip"
    catchup: str = "latest"
    catchup_window: str | float = "1h"
    jitter: str | float = 0


def _choice(value: str, kind: type[Overlap] | type[Catchup], option: str) -> Any:
    try:
        return kind(value)
    except ValueError:
        allowed = "|".join(m.value for m in kind)
        raise SubmitError(f"{option} is {allowed}, not {value!r}") from None


def _duration(value: object, option: str) -> float:
    try:
        return parse_duration(value, what=option)
    except DurationError as e:
        raise SubmitError(f"{option}: {e}") from None


def add(submitter: Submitter, request: ScheduleRequest, *, now: dt.datetime) -> dict[str, Any]:
    """Validate and store a schedule; its first tick is the first after `now`. Returns its description."""
    if not re.match(ID_PATTERN, request.schedule_id):
        raise SubmitError(
            f"schedule id {request.schedule_id!r} is not valid: 1-128 characters of [A-Za-z0-9._-], "
            "starting with a letter or digit"
        )
    every = _duration(request.every, "--every") if request.every is not None else None
    timing = Timing(cron=request.cron, timezone=request.timezone, every=every)
    policy = Policy(
        catchup=_choice(request.catchup, Catchup, "--catchup"),
        catchup_window=_duration(request.catchup_window, "--catchup-window"),
        jitter=_duration(request.jitter, "--jitter"),
    )
    overlap = _choice(request.overlap, Overlap, "--overlap")
    name, version = parse_ref(request.workflow)
    deployed = WorkflowStore(submitter.store).get(name, version)  # refuses what is not deployed
    validate_inputs(WorkflowSpec.model_validate(deployed["definition"]), request.inputs)
    store = ScheduleStore(submitter.store)
    new = NewSchedule(
        schedule_id=request.schedule_id,
        partition=partition_of(request.schedule_id, submitter.settings.coordinator.partitions),
        workflow=name,
        workflow_version=version,
        timing=timing,
        inputs=dict(request.inputs),
        overlap=overlap,
        policy=policy,
    )
    tick = timing.next_after(now)
    store.add(new, next_tick=tick, next_fire_at=fire_time(request.schedule_id, tick, policy.jitter))
    return describe(store.get(request.schedule_id))


def resume(submitter: Submitter, schedule_id: str, *, now: dt.datetime) -> dict[str, Any]:
    store = ScheduleStore(submitter.store)
    row = store.get(schedule_id)
    tick = timing_of(row).next_after(now)
    store.resume(schedule_id, next_tick=tick, next_fire_at=fire_time(schedule_id, tick, policy_of(row).jitter))
    return describe(store.get(schedule_id))


def pause(submitter: Submitter, schedule_id: str) -> dict[str, Any]:
    store = ScheduleStore(submitter.store)
    store.pause(schedule_id)
    return describe(store.get(schedule_id))


def trigger(submitter: Submitter, schedule_id: str, *, now: dt.datetime) -> Submitted:
    """Start a run of the schedule now, outside its ticks (whatever its overlap policy)."""
    store = ScheduleStore(submitter.store)
    row = store.get(schedule_id)
    key = f"schedule:{schedule_id}:manual:{now.strftime('%Y-%m-%dT%H:%M:%SZ')}:{uuid.uuid4().hex[:8]}"
    submitted = submit_ref(
        submitter,
        format_ref(row["workflow"], row["workflow_version"]),
        inputs=row["inputs"],
        idempotency_key=key,
        check_handlers=False,
    )
    store.record_trigger(schedule_id, submitted.run_id)
    return submitted


def describe(row: dict[str, Any], *, upcoming: int = UPCOMING) -> dict[str, Any]:
    """The JSON document of a schedule (`schedules list --json`, `GET /v1/schedules`)."""
    timing, policy = timing_of(row), policy_of(row)
    tz = zone(timing.timezone)
    fire_times: list[str] = []
    if not row["paused"]:
        fire_times.append(row["next_fire_at"].astimezone(tz).isoformat())
        tick = row["next_tick_at"]
        for _ in range(upcoming - 1):
            tick = timing.next_after(tick)
            fire_times.append(fire_time(row["schedule_id"], tick, policy.jitter).astimezone(tz).isoformat())
    return {
        "schedule_id": row["schedule_id"],
        "workflow": format_ref(row["workflow"], row["workflow_version"]),
        "cron": timing.cron,
        "timezone": timing.timezone,
        "every_seconds": timing.every,
        "inputs": row["inputs"],
        "overlap": row["overlap"],
        "catchup": row["catchup"],
        "catchup_window_seconds": policy.catchup_window,
        "jitter_seconds": policy.jitter,
        "paused": row["paused"],
        "next_fire_at": fire_times[0] if fire_times else None,
        "upcoming": fire_times,
        "last_tick_at": row["last_tick_at"].isoformat() if row["last_tick_at"] else None,
        "last_run_id": row["last_run_id"],
        "last_error": row["last_error"],
        "fired": row["fired_count"],
        "skipped": row["skipped_count"],
        "created_at": row["created_at"].isoformat(),
    }
