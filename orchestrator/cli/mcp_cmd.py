"""`steppe mcp`: the Model Context Protocol server for LLM agents (stdio, or streamable HTTP)."""

from __future__ import annotations

import typer

from orchestrator.cli.common import err_console, load_settings, report_errors


@report_errors
def mcp(
    http: int | None = typer.Option(
        None, "--http", metavar="PORT", help="Serve streamable HTTP on 127.0.0.1:PORT/mcp instead of stdio"
    ),
    api_url: str | None = typer.Option(
        None, "--api-url", envvar="STEPPE_API_URL", help="Talk to `steppe api` at this URL instead of the servers"
    ),
    token: str | None = typer.Option(None, "--token", envvar="STEPPE_API_TOKEN", help="Bearer token for --api-url"),
) -> None:
    """Serve Steppe's tools to an MCP client (validate, plan, submit, wait, runs, workers, dead letters).

    Over stdio (the default) the MCP client starts this command itself; stdout carries the
    protocol, logs go to stderr."""
    from orchestrator.client import Client
    from orchestrator.mcp_server import build_server
    from orchestrator.mcp_tools import SteppeTools

    if api_url is None:
        settings = load_settings()
        # Fail here, with the CLI's message and exit code 3, rather than at the agent's first call.
        settings.resolved_redis_url()
        settings.resolved_database_url()
        client = Client(settings=settings)
    else:
        client = Client(api_url=api_url, token=token)
    with client:
        server = build_server(SteppeTools(client))
        if http is None:
            server.run("stdio")
        else:
            err_console.print(f"Steppe MCP server on http://127.0.0.1:{http}/mcp; Ctrl-C stops it", highlight=False)
            server.run("streamable-http", host="127.0.0.1", port=http)


def register(app: typer.Typer) -> None:
    app.command("mcp")(mcp)
