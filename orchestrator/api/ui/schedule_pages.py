"""The UI's schedules page (docs/spec.md §12.5): schedules with their next fire times, deployed workflows,
and the pause, resume and trigger actions (POST, CSRF-checked like cancel and retry)."""

from __future__ import annotations

import datetime as dt
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from starlette.responses import Response

from orchestrator import schedule_ops
from orchestrator.api.ui.actions import _act
from orchestrator.api.ui.web import NOTICES, Ui, page
from orchestrator.store.schedules import ScheduleStore
from orchestrator.store.workflows import WorkflowStore

__all__ = ["schedule_pages"]

schedule_pages = APIRouter(prefix="/ui", include_in_schema=False)
NOTICES.update(
    {
        "pause": "Schedule paused: no tick starts until it is resumed (ticks meanwhile are not caught up).",
        "resume": "Schedule resumed: it fires again from its next tick.",
        "trigger": "Run started: the schedule's workflow runs now, besides its ticks.",
    }
)


@schedule_pages.get("/schedules")
def schedules_page(request: Request) -> Response:
    return page(request, _schedules)


def _schedules(ui: Ui) -> tuple[str, dict[str, Any]]:
    store = ui.res.store()
    return "schedules.html", {
        "schedules": [schedule_ops.describe(r, upcoming=1) for r in ScheduleStore(store).all()],
        "workflows": WorkflowStore(store).list_latest(),
        "live": True,
    }


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@schedule_pages.post("/schedules/{schedule_id}/pause")
async def pause(request: Request, schedule_id: str) -> Response:
    def do(ui: Ui, form: dict[str, str]) -> str:
        schedule_ops.pause(ui.res.submitter(), schedule_id)
        return "/ui/schedules?done=pause"

    return await _act(request, do)


@schedule_pages.post("/schedules/{schedule_id}/resume")
async def resume(request: Request, schedule_id: str) -> Response:
    def do(ui: Ui, form: dict[str, str]) -> str:
        schedule_ops.resume(ui.res.submitter(), schedule_id, now=_now())
        return "/ui/schedules?done=resume"

    return await _act(request, do)


@schedule_pages.post("/schedules/{schedule_id}/trigger")
async def trigger(request: Request, schedule_id: str) -> Response:
    def do(ui: Ui, form: dict[str, str]) -> str:
        done = schedule_ops.trigger(ui.res.submitter(), schedule_id, now=_now())
        return f"/ui/runs/{quote(done.run_id)}?done=trigger"

    return await _act(request, do)
