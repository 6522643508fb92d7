"""`steppe api`: the HTTP API (FastAPI under uvicorn), with OpenAPI docs at /docs."""

from __future__ import annotations

import ipaddress

import typer

from orchestrator.cli.common import console, load_settings, report_errors


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@report_errors
def api(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0 for every interface)"),
    port: int = typer.Option(8080, "--port", "-p", help="TCP port"),
    workers: int = typer.Option(1, "--workers", "-w", min=1, help="Server processes (each has its own pools)"),
    access_log: bool = typer.Option(True, "--access-log/--no-access-log", help="Log every request"),
) -> None:
    """Serve the HTTP API: submit, status, cancel, retry, list runs, /healthz, /readyz; docs at /docs."""
    import structlog
    import uvicorn

    from orchestrator.api import ApiSettings

    log = structlog.get_logger(__name__)
    settings = load_settings()
    api_settings = ApiSettings()
    # Fail here, with the CLI's message and exit code 3, rather than inside the server's start-up.
    settings.resolved_redis_url()
    settings.resolved_database_url()
    if api_settings.token is None and not _is_loopback(host):
        log.warning("api_auth_disabled", host=host, hint="set STEPPE_API_TOKEN to require a bearer token")
    console.print(f"Steppe API on http://{host}:{port} (docs at /docs); Ctrl-C stops it", highlight=False)
    uvicorn.run(
        "orchestrator.api:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        access_log=access_log,
        server_header=False,
        timeout_graceful_shutdown=10,
    )


def register(app: typer.Typer) -> None:
    app.command("api")(api)
