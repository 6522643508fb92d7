"""`steppe hooks list | add | remove`: hooks stored in PostgreSQL (`workflow_hooks`)."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from orchestrator.cli.common import console, load_settings, report_errors
from orchestrator.cli.context import connect
from orchestrator.errors import SubmitError

hooks_app = typer.Typer(
    help="Hooks: handlers run on the `hooks` queue when run or step events match.", no_args_is_help=True
)


@hooks_app.command("list")
@report_errors
def list_hooks(as_json: bool = typer.Option(False, "--json")) -> None:
    """Every hook (from `hooks add` and from workflows' `hooks:`) with its execution counters."""
    from orchestrator.store.hooks import HookStore

    with connect(load_settings(), need_redis=False) as clients:
        rows = HookStore(clients.store).all()
    if as_json:
        typer.echo(json.dumps(rows, default=str))
        return
    table = Table(title=f"{len(rows)} hook(s)")
    for col in ("name", "kind", "on", "workflow", "handler", "runs", "errors", "last triggered", "last error"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(
            r["name"],
            r["kind"],
            ", ".join(r["events"]),
            r["workflow"] or "*",
            r["handler"],
            str(r["trigger_count"]),
            str(r["error_count"]),
            r["last_triggered_at"].strftime("%Y-%m-%d %H:%M:%S") if r["last_triggered_at"] else "",
            r["last_error"] or "",
        )
    console.print(table)


@hooks_app.command("add")
@report_errors
def add_hook(
    name: str = typer.Argument(..., help="Unique hook name"),
    on: list[str] = typer.Option(
        ..., "--on", help="Event or pattern: step.failed, run.finished, run.*, * (repeatable)"
    ),
    handler: str = typer.Option(..., "--handler", help="Registered handler name"),
    kind: str = typer.Option("post", "--kind", help="post | session | pre"),
    workflow: str | None = typer.Option(None, "--workflow", help="Only runs of this workflow"),
    with_: str = typer.Option("{}", "--with", help="JSON object of handler arguments"),
) -> None:
    """Add a hook for every workflow (or one, with --workflow)."""
    from orchestrator.spec.model import HookSpec
    from orchestrator.store.hooks import HookStore

    try:
        args = json.loads(with_)
    except ValueError as e:
        raise SubmitError(f"--with must be a JSON object: {e}") from e
    if not isinstance(args, dict):
        raise SubmitError('--with must be a JSON object, e.g. \'{"channel": "#ops"}\'')
    if name.startswith("yaml:"):
        raise SubmitError("names starting with 'yaml:' are reserved for hooks defined in workflow files")
    try:
        spec = HookSpec.model_validate({"on": on, "kind": kind, "handler": handler, "with": args})
    except ValueError as e:
        raise SubmitError(f"invalid hook: {e}") from e
    with connect(load_settings(), need_redis=False) as clients:
        hook_id = HookStore(clients.store).add(
            name=name, kind=spec.kind, events=list(spec.on), handler=spec.handler, args=spec.with_, workflow=workflow
        )
    console.print(f"hook {name} added (id {hook_id}); coordinators pick it up within their reconcile interval")


@hooks_app.command("remove")
@report_errors
def remove_hook(name: str) -> None:
    """Remove a hook by name."""
    from orchestrator.store.hooks import HookStore

    with connect(load_settings(), need_redis=False) as clients:
        if not HookStore(clients.store).remove(name):
            raise SubmitError(f"no hook named {name!r}; see `steppe hooks list`")
    console.print(f"hook {name} removed")


def register(app: typer.Typer) -> None:
    app.add_typer(hooks_app, name="hooks")
