"""Entry point of the `steppe` console script."""

from __future__ import annotations

import typer

from orchestrator import __version__

app = typer.Typer(
    name="steppe",
    help="Steppe: workflows on Redis Streams and PostgreSQL.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"steppe {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    log_level: str = typer.Option("INFO", "--log-level", envvar="STEPPE_LOG_LEVEL", help="DEBUG, INFO, WARNING"),
    log_json: bool | None = typer.Option(None, "--log-json/--log-console", help="Log format (default: by tty)"),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True),
) -> None:
    from orchestrator.logging import configure_logging  # structlog: not needed for --help

    configure_logging(level=log_level, json=log_json)


def _register_commands() -> None:
    # Each command module adds its commands to `app`; imported here so that the CLI
    # is the only place that ties the coordinator side and the worker side together.
    from orchestrator.cli import (
        admin,
        api_cmd,
        bench,
        bench_client,
        bench_cluster,
        db,
        dev,
        dlq,
        hooks,
        limits_cmd,
        mcp_cmd,
        patterns_cmd,
        processes,
        runs,
        schedules_cmd,
        spec_cmds,
        ui_cmd,
        waits_cmd,
    )

    commands = (dev, db, processes, runs, spec_cmds, bench, api_cmd, ui_cmd, dlq, hooks, admin, patterns_cmd, mcp_cmd)
    for module in (*commands, schedules_cmd, waits_cmd, limits_cmd):
        module.register(app)
    del bench_client, bench_cluster  # each registers its commands on `bench` when imported


def main() -> None:
    _register_commands()
    app()


if __name__ == "__main__":
    main()
