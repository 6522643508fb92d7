"""How errors become HTTP responses: one body shape, `{"errors": [{message, file, line, column}]}`.

SpecValidationError                    422, one entry per problem, with its position
SpecError, TemplateError, SubmitError  422
RunNotFoundError                       404
ConflictError                          409
InfrastructureError, Redis errors      503
other SteppeError                      500
HTTPException (401, 404, 405, 415, …)  its own status
request validation (query, path)       422
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import redis
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response

from orchestrator.errors import (
    ConflictError,
    InfrastructureError,
    RunNotFoundError,
    SpecError,
    SpecValidationError,
    SteppeError,
    SubmitError,
    TemplateError,
)

log = structlog.get_logger(__name__)

STATUS_BY_ERROR: tuple[tuple[type[SteppeError], int], ...] = (
    (SpecError, 422),
    (TemplateError, 422),
    (SubmitError, 422),
    (RunNotFoundError, 404),
    (ConflictError, 409),
    (InfrastructureError, 503),
)


class JSONBytes(JSONResponse):
    """JSON rendered by orjson (status documents can be large; no jsonable_encoder pass).

    A JSONResponse subclass, so that FastAPI documents a route's responses by their models alone
    (for other response classes it adds `type: string` beside the model's `$ref`)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def problem(
    message: str, file: str | None = None, line: int | None = None, column: int | None = None
) -> dict[str, Any]:
    return {"message": message, "file": file, "line": line, "column": column}


def error_response(
    status: int, problems: Sequence[dict[str, Any]], headers: Mapping[str, str] | None = None
) -> JSONBytes:
    return JSONBytes({"errors": list(problems)}, status_code=status, headers=headers)


def steppe_error_response(e: SteppeError) -> JSONBytes:
    if isinstance(e, SpecValidationError):
        return error_response(422, [problem(p.message, p.file, p.line, p.column) for p in e.problems])
    status = next((code for kind, code in STATUS_BY_ERROR if isinstance(e, kind)), 500)
    return error_response(status, [problem(str(e))])


def install_error_handlers(app: FastAPI) -> None:
    async def on_steppe_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, SteppeError)
        response = steppe_error_response(exc)
        if response.status_code >= 500:
            log.warning("api_request_failed", path=request.url.path, status=response.status_code, error=str(exc))
        return response

    async def on_redis_error(request: Request, exc: Exception) -> Response:
        # Paths that reach Redis outside `bus.ping` (the live-handler check) raise redis-py errors.
        log.warning("api_request_failed", path=request.url.path, status=503, error=str(exc))
        message = f"Redis is unreachable ({exc}); check STEPPE_REDIS_URL and that the server is up"
        return error_response(503, [problem(message)])

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code in (204, 304):  # pragma: no cover - no body allowed
            return Response(status_code=exc.status_code, headers=exc.headers)
        return error_response(exc.status_code, [problem(str(exc.detail))], headers=exc.headers)

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        problems = [
            problem(f"{'.'.join(str(part) for part in err.get('loc', ()))}: {err.get('msg', 'invalid')}")
            for err in exc.errors()
        ]
        return error_response(422, problems)

    app.add_exception_handler(SteppeError, on_steppe_error)
    app.add_exception_handler(redis.ConnectionError, on_redis_error)
    app.add_exception_handler(redis.TimeoutError, on_redis_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
