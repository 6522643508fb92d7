"""What every UI page and action shares: templates, the session cookie, security headers, error pages."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

import jinja2
import redis
import structlog
from fastapi import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from orchestrator.api.errors import STATUS_BY_ERROR
from orchestrator.api.resources import Resources
from orchestrator.api.ui import session as sessions
from orchestrator.durations import DurationError
from orchestrator.errors import SteppeError
from orchestrator.store.dead_letters import DeadLetterNotFoundError

log = structlog.get_logger(__name__)

# Nothing inline runs or styles: even a value that escaped escaping could not execute.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
UI_STATUS_BY_ERROR: tuple[tuple[type[SteppeError], int], ...] = (
    (DeadLetterNotFoundError, 404),
    (DurationError, 422),
    *STATUS_BY_ERROR,
)
MAX_FORM_FIELDS = 20
NOTICES = {
    "cancel": "Cancel requested: the coordinator stops dispatching and cancels the steps in flight.",
    "retry": "Retry requested: the run resumes from its failed steps, keeping the outputs of those that succeeded.",
    "replay": "Replay requested: the run resumes from its failed steps.",
    "purge": "Old dead letters purged.",
    "approve": "Approval accepted: the step succeeds once the coordinator applies it.",
    "reject": "Rejection accepted: the step fails with ApprovalRejected and the workflow's on_failure applies.",
    "signal": "Signal accepted: the first step waiting for it continues with its payload.",
}


@dataclass(slots=True)
class Ui:
    """One request's view of the browser: its session, and a new cookie to set when it had none."""

    request: Request
    session: sessions.Session
    fresh_cookie: str | None
    auth: bool

    @property
    def res(self) -> Resources:
        res = self.request.app.state.resources
        assert isinstance(res, Resources)
        return res


@cache
def templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("orchestrator.api.ui", "templates"),
        autoescape=True,  # step outputs, errors and tracebacks are user data: every value is escaped
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = when
    env.filters["took"] = took
    return env


def when(value: dt.datetime | str | None) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def took(start: dt.datetime | str | None, end: dt.datetime | str | None) -> str:
    if not start or not end:
        return "-"
    a = dt.datetime.fromisoformat(start) if isinstance(start, str) else start
    b = dt.datetime.fromisoformat(end) if isinstance(end, str) else end
    seconds = (b - a).total_seconds()
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min"


def ui_of(request: Request) -> Ui:
    token = request.app.state.api.token
    key = sessions.session_key(token.get_secret_value()) if token is not None else None
    found = sessions.read(request.cookies.get(sessions.COOKIE), key)
    if found is not None:
        return Ui(request=request, session=found, fresh_cookie=None, auth=key is not None)
    fresh, cookie = sessions.anonymous()
    if key is None:
        fresh = sessions.Session(nonce=fresh.nonce, signed_in=True)
    return Ui(request=request, session=fresh, fresh_cookie=cookie, auth=key is not None)


def set_cookie(response: Response, request: Request, value: str) -> None:
    response.set_cookie(
        sessions.COOKIE,
        value,
        max_age=sessions.SESSION_TTL,
        path="/ui",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def finish(ui: Ui, response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    if ui.fresh_cookie is not None:
        set_cookie(response, ui.request, ui.fresh_cookie)
    return response


def html(ui: Ui, template: str, context: Mapping[str, Any], status: int = 200) -> Response:
    request = ui.request
    notice = NOTICES.get(request.query_params.get("done", ""))
    page = (
        templates()
        .get_template(template)
        .render(
            {
                "csrf": ui.session.csrf,
                "auth": ui.auth,
                "signed_in": ui.session.signed_in,
                "path": request.url.path,
                "notice": notice,
                "refresh": refresh_seconds(request.query_params.get("refresh")),
                "refresh_on": _with_query(request, refresh="5"),
                "refresh_off": _with_query(request, refresh=None),
                **context,
            }
        )
    )
    return finish(ui, HTMLResponse(page, status_code=status))


def _with_query(request: Request, **changes: str | None) -> str:
    """This page's URL with some query parameters set (or removed, for None)."""
    params = {k: v for k, v in request.query_params.items() if k not in changes and k != "done"}
    params.update({k: v for k, v in changes.items() if v is not None})
    return request.url.path + ("?" + urlencode(params) if params else "")


def refresh_seconds(value: str | None) -> int | None:
    """`?refresh=N`: a meta refresh for browsers without JavaScript (2 to 300 seconds)."""
    if value is None or not value.isdigit():
        return None
    return min(max(int(value), 2), 300)


def redirect(ui: Ui, target: str) -> Response:
    return finish(ui, RedirectResponse(target, status_code=303))


def to_login(ui: Ui) -> Response:
    request = ui.request
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return redirect(ui, "/ui/login?next=" + quote(here, safe=""))


def error_page(ui: Ui, status: int, message: str) -> Response:
    return html(ui, "error.html", {"status": status, "message": message}, status)


def status_of(e: SteppeError) -> int:
    return next((code for kind, code in UI_STATUS_BY_ERROR if isinstance(e, kind)), 500)


def page(request: Request, build: Callable[[Ui], tuple[str, dict[str, Any]] | Response]) -> Response:
    """A GET page: the login when one is needed, then `build`'s template, or an error page."""
    ui = ui_of(request)
    if not ui.session.signed_in:
        return to_login(ui)
    try:
        built = build(ui)
    except SteppeError as e:
        status = status_of(e)
        if status >= 500:
            log.warning("ui_request_failed", path=request.url.path, status=status, error=str(e))
        return error_page(ui, status, str(e))
    except (redis.ConnectionError, redis.TimeoutError) as e:
        log.warning("ui_request_failed", path=request.url.path, status=503, error=str(e))
        return error_page(ui, 503, f"Redis is unreachable ({e}); check STEPPE_REDIS_URL and that the server is up")
    if isinstance(built, Response):
        return finish(ui, built)
    template, context = built
    return html(ui, template, context)


async def form_of(request: Request) -> dict[str, str] | None:
    """The fields of an urlencoded form (last value wins), or None when the body is not one."""
    ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        return None
    try:
        text = (await request.body()).decode("utf-8")
        parsed = parse_qs(text, keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS, errors="strict")
    except (UnicodeDecodeError, ValueError):
        return None
    return {k: v[-1] for k, v in parsed.items()}


def csrf_refusal(ui: Ui, form: Mapping[str, str]) -> str | None:
    headers = ui.request.headers
    known = None if ui.fresh_cookie is not None else ui.session  # no cookie came with the POST
    return sessions.csrf_problem(
        known,
        form.get("csrf"),
        origin=headers.get("origin"),
        referer=headers.get("referer"),
        host=headers.get("host", ""),
    )
