"""The UI's pages (GET): runs, one run, dead letters, workers and coordinators, the login form."""

from __future__ import annotations

import datetime as dt
import re
import time
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import RedirectResponse, Response

from orchestrator import bus
from orchestrator.api.routes import RETRYABLE_STATUSES
from orchestrator.api.ui import dag, views
from orchestrator.api.ui import session as sessions
from orchestrator.api.ui.web import Ui, error_page, html, page, redirect, ui_of
from orchestrator.durations import parse_duration
from orchestrator.errors import RunNotFoundError, SubmitError
from orchestrator.keys import Keys
from orchestrator.state import TERMINAL_RUN_STATUSES, RunStatus
from orchestrator.store.dead_letters import DeadLetterNotFoundError, DeadLetterStore, sync_from_stream
from orchestrator.waits_view import waiting_steps
from patterns.dead_letter import REPLAYABLE_RUN_STATUSES, one_line

pages = APIRouter(prefix="/ui", include_in_schema=False)

RUN_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
SINCE_CHOICES = ("15m", "1h", "6h", "24h", "7d", "30d")
RUN_LIMITS = (50, 100, 200, 500)
EVENTS_SHOWN = 500  # the newest events of a run's log; `?events=all` shows every one
ITEMS_SHOWN = 100  # items of one fan-out listed in its row; failed ones first
DEAD_LETTER_STATUSES = ("dead", "replayed")
RESUME_WAIT = 60.0


@pages.get("")
@pages.get("/")
def index() -> Response:
    return RedirectResponse("/ui/runs", status_code=303)


@pages.get("/runs")
def runs_page(request: Request) -> Response:
    return page(request, _runs)


def _runs(ui: Ui) -> tuple[str, dict[str, Any]]:
    q = ui.request.query_params
    status = q.get("status") or None
    if status is not None and status not in set(RunStatus):
        raise SubmitError(f"unknown status {status!r}: use one of {', '.join(RunStatus)}")
    workflow = (q.get("workflow") or "").strip()[:128] or None
    since = (q.get("since") or "").strip() or None
    created_after = None
    if since is not None:
        created_after = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=parse_duration(since, what="since"))
    before = _timestamp(q.get("before"))
    limit = int(q["limit"]) if q.get("limit", "").isdigit() and int(q["limit"]) in RUN_LIMITS else RUN_LIMITS[0]
    rows = ui.res.queries().list_runs(
        status=status, workflow=workflow, limit=limit, created_after=created_after, created_before=before
    )
    older = None
    if len(rows) == limit:
        params = {k: v for k, v in (("status", status), ("workflow", workflow), ("since", since)) if v}
        older = {**params, "limit": str(limit), "before": rows[-1]["created_at"].isoformat()}
    return "runs.html", {
        "runs": rows,
        "filters": {"status": status or "", "workflow": workflow or "", "since": since or "", "limit": limit},
        "statuses": list(RunStatus),
        "since_choices": SINCE_CHOICES,
        "limits": RUN_LIMITS,
        "older": older,
        "live": True,
    }


def _timestamp(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError as e:
        raise SubmitError(f"before={value!r} is not an ISO timestamp; use the page's 'older runs' link") from e
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


@pages.get("/runs/{run_id}")
def run_page(request: Request, run_id: str) -> Response:
    return page(request, lambda ui: _run(ui, run_id))


def _run(ui: Ui, run_id: str) -> tuple[str, dict[str, Any]]:
    if not RUN_ID.match(run_id):
        raise RunNotFoundError(f"no run {run_id[:140]!r}; run ids are letters, digits, '.', '_' and '-'")
    queries = ui.res.queries()
    doc = queries.get_run(run_id)
    events = queries.events(run_id)
    definition = doc.get("definition") or {}
    waves = views.waves_of(doc)
    needs = views.needs_of(definition)
    states = views.node_states(doc, views.fan_out_steps(definition))
    drawing = dag.layout(waves, needs, states, critical_path=(doc.get("plan") or {}).get("critical_path") or ())
    groups = views.step_groups(doc, events, waves)
    all_events = ui.request.query_params.get("events") == "all"
    shown = events if all_events else events[-EVENTS_SHOWN:]
    return "run.html", {
        "run": doc,
        "drawing": drawing,
        "groups": groups,
        "items_shown": ITEMS_SHOWN,
        "events": views.event_rows(shown),
        "events_hidden": len(events) - len(shown),
        "inputs": views.pretty(doc.get("inputs")),
        "outputs": views.pretty(doc["outputs"]) if doc.get("outputs") is not None else None,
        "error": doc.get("error"),
        "can_cancel": doc["status"] not in TERMINAL_RUN_STATUSES,
        "can_retry": doc["status"] in RETRYABLE_STATUSES,
        "waits": waiting_steps(doc, now=time.time()),  # approve / reject / signal forms (§12.1)
        "live": doc["status"] not in TERMINAL_RUN_STATUSES or _awaiting_resume(ui, doc),
        "step_count": len(doc.get("steps", {})),
    }


def _awaiting_resume(ui: Ui, doc: dict[str, Any]) -> bool:
    """A retry or replay was just requested of this finished run (`?requested=` is when): keep the
    page live until the coordinator resumes it, for at most RESUME_WAIT seconds."""
    try:
        requested = float(ui.request.query_params.get("requested", ""))
    except ValueError:
        return False
    finished = dt.datetime.fromisoformat(doc["finished_at"]).timestamp() if doc.get("finished_at") else None
    return 0 <= time.time() - requested < RESUME_WAIT and (finished is None or finished < requested)


@pages.get("/dead-letters")
def dead_letters_page(request: Request) -> Response:
    return page(request, _dead_letters)


def _synced(ui: Ui) -> DeadLetterStore:
    store = DeadLetterStore(ui.res.store())
    sync_from_stream(ui.res.redis, Keys(ui.res.settings.namespace), store)  # undecodable entries live only there
    return store


def _dead_letters(ui: Ui) -> tuple[str, dict[str, Any]]:
    q = ui.request.query_params
    status = q.get("status") or None
    if status is not None and status not in DEAD_LETTER_STATUSES:
        raise SubmitError(f"unknown status {status!r}: use dead or replayed")
    run = (q.get("run") or "").strip()[:128] or None
    reason = (q.get("reason") or "").strip()[:128] or None
    rows = _synced(ui).find(run_id=run, status=status, reason=reason, limit=200)
    return "dead_letters.html", {
        "rows": rows,
        "one_line": one_line,
        "filters": {"status": status or "", "run": run or "", "reason": reason or ""},
        "statuses": DEAD_LETTER_STATUSES,
        "live": False,  # each read merges up to 10,000 stream entries: not every few seconds
    }


@pages.get("/dead-letters/{dead_letter_id}")
def dead_letter_page(request: Request, dead_letter_id: str) -> Response:
    return page(request, lambda ui: dead_letter_view(ui, dead_letter_id))


def dead_letter_id_of(text: str) -> int:
    if not text.isdigit() or len(text) > 18:
        raise DeadLetterNotFoundError(f"no dead letter {text[:40]!r}; ids are the numbers in the first column")
    return int(text)


def dead_letter_view(
    ui: Ui, dead_letter_id: str, *, edited: str | None = None, problem: str | None = None
) -> tuple[str, dict[str, Any]]:
    store = _synced(ui)
    row = store.get(dead_letter_id_of(dead_letter_id))
    run_status = store.run_status(row["run_id"]) if row["run_id"] else None
    original = (row["payload"] or {}).get("args")
    return "dead_letter.html", {
        "row": row,
        "run_status": run_status,
        "payload": views.pretty(row["payload"]) if row["payload"] is not None else None,
        "args_text": edited if edited is not None else (views.pretty(original, 1 << 20).text if original else ""),
        "has_args": original is not None,
        "replayable": bool(row["run_id"]) and run_status in REPLAYABLE_RUN_STATUSES and row["status"] == "dead",
        "problem": problem,
        "live": False,
    }


@pages.get("/workers")
def workers_page(request: Request) -> Response:
    return page(request, _workers)


def _workers(ui: Ui) -> tuple[str, dict[str, Any]]:
    keys = Keys(ui.res.settings.namespace)
    workers = bus.live_members(ui.res.redis, keys.workers, keys.worker)
    coordinators = bus.live_members(ui.res.redis, keys.coordinators, keys.coordinator)
    now = time.time()
    return "workers.html", {
        "workers": sorted(workers, key=lambda w: str(w.get("id"))),
        "coordinators": sorted(coordinators, key=lambda c: str(c.get("id"))),
        "ago": lambda ts: views.ago(float(ts), now),
        "live": True,
    }


@pages.get("/login")
def login_page(request: Request) -> Response:
    ui = ui_of(request)
    if not ui.auth:
        return redirect(ui, "/ui/runs")
    target = sessions.safe_next(request.query_params.get("next"))
    if ui.session.signed_in:
        return redirect(ui, target)
    return login_form(ui, target)


def login_form(ui: Ui, target: str, *, problem: str | None = None, status: int = 200) -> Response:
    if problem is not None and status >= 400 and status != 401:
        return error_page(ui, status, problem)
    return html(ui, "login.html", {"next": target, "problem": problem, "live": False}, status)
