"""`steppe dev up | down | status`: private Redis and PostgreSQL for local use."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

import typer

from orchestrator.cli.common import console, load_settings, report_errors

if TYPE_CHECKING:
    from orchestrator.dev import DevServers, ServerReport

_NAMES = {"redis": "Redis", "postgres": "PostgreSQL"}
_STYLES = {
    "started": "green",
    "reused": "green",
    "running": "green",
    "stopped": "yellow",
    "not_running": "dim",
    "not_answering": "red",
}


def _hide_password(url: str | None) -> str:
    """`scheme://user:***@host…`: the terminal shows who connects, the password stays in servers.json."""
    return re.sub(r"^([a-z+]+://[^:/@]*):[^@/]*@", r"\1:***@", url) if url else "-"


def _servers() -> DevServers:
    from orchestrator.dev import DevServers

    return DevServers(settings=load_settings())


def _show(reports: list[ServerReport]) -> None:
    # One line per server, never wrapped: URLs must stay copy-pasteable in any terminal width.
    for r in reports:
        style = _STYLES.get(r.action, "")
        state = f"[{style}]{r.action.replace('_', ' '):<13}[/{style}]"
        details = ", ".join(
            part
            for part in (
                f"pid {r.pid}" if r.pid else "",
                r.version and f"version {r.version}",
                f"data {r.data_dir}",
            )
            if part
        )
        console.print(
            f"{_NAMES[r.server]:<11} {state} {_hide_password(r.url)}  ({details})", soft_wrap=True, highlight=False
        )


@report_errors
def up() -> None:
    """Start the embedded Redis and PostgreSQL (reusing running ones and existing data)."""
    servers = _servers()
    with console.status("starting Redis and PostgreSQL…"):
        reports = servers.up()
    _show(reports)
    console.print(
        f"URLs with their passwords recorded in {servers.state_path} (mode 0600); `steppe dev down` stops them",
        style="dim",
        soft_wrap=True,
    )


@report_errors
def down() -> None:
    """Stop the embedded servers started by `steppe dev up`; their data is kept."""
    reports = _servers().down()
    _show(reports)


@report_errors
def status(as_json: bool = typer.Option(False, "--json", help="Machine-readable output")) -> None:
    """Show each embedded server's URL and whether it answers (exit 3 if one does not)."""
    reports = _servers().status()
    if as_json:
        typer.echo(json.dumps({r.server: r.to_json() for r in reports}, indent=2))
    else:
        _show(reports)
    if not all(r.answering for r in reports):
        raise typer.Exit(3)


def register(app: typer.Typer) -> None:
    dev_app = typer.Typer(help="Private Redis + PostgreSQL for local use (data in $STEPPE_HOME).")
    dev_app.command("up")(up)
    dev_app.command("down")(down)
    dev_app.command("status")(status)
    app.add_typer(dev_app, name="dev")
