"""The UI's actions (POST, each CSRF-checked): log in and out, cancel and retry a run, replay and purge
dead letters. Each ends in a redirect (303) to the page that shows its effect."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from urllib.parse import quote

import redis
from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from orchestrator.api.routes import RETRYABLE_STATUSES
from orchestrator.api.ui import pages
from orchestrator.api.ui import session as sessions
from orchestrator.api.ui.web import (
    Ui,
    csrf_refusal,
    error_page,
    form_of,
    html,
    redirect,
    set_cookie,
    status_of,
    to_login,
    ui_of,
)
from orchestrator.durations import parse_duration
from orchestrator.errors import ConflictError, RunNotFoundError, SteppeError, SubmitError
from orchestrator.keys import Keys
from orchestrator.state import TERMINAL_RUN_STATUSES
from orchestrator.store.dead_letters import DeadLetterStore, check_replayable, replay, trim_stream
from patterns.dead_letter import parse_args

actions = APIRouter(prefix="/ui", include_in_schema=False)

Action = Callable[[Ui, dict[str, str]], Response | str]


async def _act(request: Request, action: Action) -> Response:
    """Parse the form, refuse it without a matching CSRF token or a login, then run `action`
    (in a thread: it talks to PostgreSQL and Redis) and redirect where it says."""
    ui = ui_of(request)
    form = await form_of(request)
    if form is None:
        return error_page(ui, 415, "the UI's actions are HTML forms (application/x-www-form-urlencoded)")
    refusal = csrf_refusal(ui, form)
    if refusal is not None:
        return error_page(ui, 403, refusal)
    if not ui.session.signed_in:
        return to_login(ui)
    try:
        outcome = await run_in_threadpool(action, ui, form)
    except SteppeError as e:
        return error_page(ui, status_of(e), str(e))
    except (redis.ConnectionError, redis.TimeoutError) as e:
        return error_page(ui, 503, f"Redis is unreachable ({e}); nothing was changed, try again when it is back")
    return outcome if isinstance(outcome, Response) else redirect(ui, outcome)


@actions.post("/runs/{run_id}/cancel")
async def cancel(request: Request, run_id: str) -> Response:
    def do(ui: Ui, form: dict[str, str]) -> str:
        current = _status(ui, run_id)
        if current in TERMINAL_RUN_STATUSES:
            raise ConflictError(f"run {run_id} is already {current}; there is nothing to cancel")
        ui.res.submitter().request(run_id, "cancel")
        return f"/ui/runs/{quote(run_id)}?done=cancel"

    return await _act(request, do)


@actions.post("/runs/{run_id}/retry")
async def retry(request: Request, run_id: str) -> Response:
    def do(ui: Ui, form: dict[str, str]) -> str:
        current = _status(ui, run_id)
        if current not in RETRYABLE_STATUSES:
            raise ConflictError(f"run {run_id} is {current}; only failed or cancelled runs can be retried")
        ui.res.submitter().request(run_id, "retry")
        return f"/ui/runs/{quote(run_id)}?done=retry&requested={time.time():.3f}"

    return await _act(request, do)


def _status(ui: Ui, run_id: str) -> str:
    if not pages.RUN_ID.match(run_id):
        raise RunNotFoundError(f"no run {run_id[:140]!r}; run ids are letters, digits, '.', '_' and '-'")
    return ui.res.queries().run_status(run_id)


@actions.post("/dead-letters/{dead_letter_id}/replay")
async def replay_dead_letter(request: Request, dead_letter_id: str) -> Response:
    def do(ui: Ui, form: dict[str, str]) -> Response | str:
        store = DeadLetterStore(ui.res.store())
        row = store.get(pages.dead_letter_id_of(dead_letter_id))
        check_replayable(store, row)
        args = None
        if form.get("mode") == "edited":
            text = form.get("args", "")
            try:
                args = parse_args(text, source="the edited arguments")
            except ValueError as e:
                # The form again, with the user's text and what is wrong with it.
                template, context = pages.dead_letter_view(ui, dead_letter_id, edited=text, problem=str(e))
                return html(ui, template, context, 422)
        settings = ui.res.settings
        replay(
            store,
            ui.res.redis,
            Keys(settings.namespace),
            partitions=settings.coordinator.partitions,
            row=row,
            args=args,
        )
        return f"/ui/runs/{quote(row['run_id'])}?done=replay&requested={time.time():.3f}"

    return await _act(request, do)


@actions.post("/dead-letters/purge")
async def purge_dead_letters(request: Request) -> Response:
    def do(ui: Ui, form: dict[str, str]) -> str:
        if form.get("confirm") != "yes":
            raise SubmitError("tick the confirmation box to purge dead letters; nothing was deleted")
        age = parse_duration(form.get("older_than") or "7d", what="older than")
        before = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=age)
        DeadLetterStore(ui.res.store()).purge(before=before)
        trim_stream(ui.res.redis, Keys(ui.res.settings.namespace), before=before)
        return "/ui/dead-letters?done=purge"

    return await _act(request, do)


@actions.post("/login")
async def login(request: Request) -> Response:
    ui = ui_of(request)
    form = await form_of(request)
    if form is None:
        return error_page(ui, 415, "log in with the form of /ui/login")
    target = sessions.safe_next(form.get("next"))
    if not ui.auth:
        return redirect(ui, target)
    refusal = csrf_refusal(ui, form)
    if refusal is not None:
        return pages.login_form(ui, target, problem=refusal, status=403)
    expected = request.app.state.api.token.get_secret_value()
    if not sessions.token_matches(form.get("token", ""), expected):
        return pages.login_form(ui, target, problem="wrong token: enter the server's STEPPE_API_TOKEN", status=401)
    _, cookie = sessions.signed(sessions.session_key(expected))
    response = redirect(ui, target)
    set_cookie(response, request, cookie)
    return response


@actions.post("/logout")
async def logout(request: Request) -> Response:
    def do(ui: Ui, form: dict[str, str]) -> Response:
        _, cookie = sessions.anonymous()
        response = redirect(ui, "/ui/login" if ui.auth else "/ui/runs")
        set_cookie(response, request, cookie)
        return response

    return await _act(request, do)
