"""The web UI of `steppe api`, at /ui: server-rendered pages over the API's read paths (docs/spec.md §12.5).

web.py        templates, the session cookie, security headers, error pages, form parsing
session.py    sessions and CSRF tokens (pure): what the cookie holds and how a POST is checked
pages.py      GET pages: runs, a run (DAG, steps, events), dead letters, workers, the login form
actions.py    POST actions: login/logout, cancel, retry, replay and purge dead letters
wait_actions.py  POST actions on waiting steps: approve, reject, send a signal
schedule_pages.py  schedules (next fire times) and deployed workflows; pause, resume, trigger
views.py      what a page shows, from status documents and events (pure)
dag.py        the DAG's layout by the planner's waves (pure), drawn as SVG by templates/_dag.html
templates/    Jinja2, autoescaped; static/: ui.css and a few lines of ui.js (live refresh)
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from starlette.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).parent / "static"


def install(app: FastAPI) -> None:
    """Serve the UI's pages, actions and assets on `app` (none of them in the OpenAPI document)."""
    from orchestrator.api.ui.actions import actions
    from orchestrator.api.ui.pages import pages
    from orchestrator.api.ui.schedule_pages import schedule_pages
    from orchestrator.api.ui.wait_actions import wait_actions

    app.include_router(pages)
    app.include_router(actions)
    app.include_router(schedule_pages)  # schedules and deployed workflows (docs/spec.md §12.3)
    app.include_router(wait_actions)  # approve, reject, signal (docs/spec.md §12.1)
    app.mount("/ui/static", StaticFiles(directory=STATIC_DIR), name="ui-static")
