"""`steppe patterns`: the installed plan-time patterns (entry-point group `steppe.patterns`)."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich import box
from rich.table import Table

from orchestrator.cli.common import console, err_console, report_errors
from orchestrator.errors import ConfigError


@report_errors
def list_patterns(as_json: bool = typer.Option(False, "--json", help="Machine-readable output")) -> None:
    """Every installed pattern a step can name with `uses:`: what it does, its `with:` keys, its package.

    Exits 2 when a plugin cannot be used (import error, name registered twice, not a Pattern).
    """
    from patterns.plugins import config_fields, installed_patterns

    installed = installed_patterns()
    rows: list[dict[str, Any]] = []
    for item in installed.values():
        pattern = item.pattern
        fields = config_fields(pattern.config_model) if pattern is not None else []
        rows.append(
            {
                "name": item.name,
                "description": pattern.description if pattern is not None else None,
                "distribution": item.distribution,
                "entry_point": item.target,
                "error": item.error,
                "with": [
                    {
                        "key": f.name,
                        "type": f.type,
                        "required": f.required,
                        "default": f.default,
                        "description": f.description,
                    }
                    for f in fields
                ],
            }
        )
    if as_json:
        typer.echo(json.dumps(rows, default=str))
    else:
        _print(rows)
    broken = [row["name"] for row in rows if row["error"]]
    if broken:
        raise ConfigError(f"pattern plugin(s) {', '.join(broken)} cannot be used: fix or uninstall them")


def _print(rows: list[dict[str, Any]]) -> None:
    if not rows:
        console.print("no patterns installed (entry-point group steppe.patterns)")
        return
    for row in rows:
        origin = f"  from {row['distribution']} ({row['entry_point']})"
        if row["error"]:
            err_console.print(
                f"[bold]{row['name']}[/bold]\n{origin}\n  [red]error:[/red] {row['error']}",
                highlight=False,
                soft_wrap=True,
            )
            continue
        console.print(f"[bold]{row['name']}[/bold]: {row['description']}\n{origin}", highlight=False)
        table = Table(box=box.SIMPLE_HEAD, padding=(0, 1, 0, 2))
        for column in ("with:", "type", "default", "description"):
            table.add_column(column, overflow="fold")
        for f in row["with"]:
            default = "required" if f["required"] else ("" if f["default"] is None else json.dumps(f["default"]))
            table.add_row(f["key"], f["type"], default, f["description"])
        console.print(table, highlight=False)


def register(app: typer.Typer) -> None:
    app.command("patterns")(list_patterns)
