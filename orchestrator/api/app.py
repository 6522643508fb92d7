"""The FastAPI application of `steppe api`: one per process, its clients opened in the lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from orchestrator import __version__
from orchestrator.api import ui
from orchestrator.api.config import ApiSettings
from orchestrator.api.deployments import deployments
from orchestrator.api.errors import install_error_handlers
from orchestrator.api.follow import follow
from orchestrator.api.limits import BodyLimitMiddleware
from orchestrator.api.query import QueryTextMiddleware
from orchestrator.api.resources import Resources
from orchestrator.api.routes import health, runs
from orchestrator.api.waits import waits
from orchestrator.settings import Settings

log = structlog.get_logger(__name__)

DESCRIPTION = """Submit workflow runs, follow them, cancel or retry them, and probe the service.

Errors have one shape: `{"errors": [{"message", "file", "line", "column"}]}`, with positions for
problems in a workflow document (the same messages as `steppe validate`). When the server has
`STEPPE_API_TOKEN`, every `/v1` route needs `Authorization: Bearer <token>`; probes stay open.
"""


def create_app(settings: Settings | None = None, api: ApiSettings | None = None) -> FastAPI:
    """Build the application; settings are read from the environment when not given (uvicorn factory)."""
    settings = settings or Settings()
    api = api or ApiSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        res = Resources(settings=settings, api=api)
        await run_in_threadpool(res.open)
        app.state.resources = res
        log.info(
            "api_started", namespace=settings.namespace, auth=api.token is not None, max_body_bytes=api.max_body_bytes
        )
        try:
            yield
        finally:
            await run_in_threadpool(res.close)
            log.info("api_stopped")

    app = FastAPI(title="Steppe", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.api = api
    app.add_middleware(BodyLimitMiddleware, max_bytes=api.max_body_bytes)
    app.add_middleware(QueryTextMiddleware)
    install_error_handlers(app)
    app.include_router(runs)
    app.include_router(waits)  # signals and approvals (docs/spec.md §12.1)
    app.include_router(follow)
    app.include_router(deployments)  # /v1/workflows, /v1/schedules
    app.include_router(health)
    ui.install(app)  # the web UI at /ui
    return app
