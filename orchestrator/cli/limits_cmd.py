"""`steppe limits [--json] [--key K]`: flow-control keys in use, with holders and waiters (§12.2).

Exit codes: 0 listed (an empty list included); 3 PostgreSQL unreachable.
"""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from orchestrator.cli.common import console, load_settings, report_errors
from orchestrator.cli.context import connect

_SHOWN = 3  # holders and waiters named per key in the table (--json lists all)


def throttle_note(doc: dict[str, Any], key: str, step: dict[str, Any]) -> str:
    """`throttled: concurrency openai 8/8` for a throttled step of a run document (`steppe status`)."""
    if step.get("status") != "throttled":
        return ""
    from orchestrator.store.limits import describe

    waiting = [x for x in doc.get("limits") or () if x["step"] == key and x["state"] == "waiting"]
    if not waiting:
        return "throttled: admitted, dispatching"
    return "throttled: " + describe(waiting[0])


def _who(entries: list[dict[str, Any]]) -> str:
    names = [f"{e['run_id']}:{e['step']}" for e in entries[:_SHOWN]]
    more = len(entries) - _SHOWN
    return ", ".join(names) + (f" (+{more})" if more > 0 else "")


def limits_table(usage: list[dict[str, Any]]) -> Table:
    from orchestrator.spec.limits import show_seconds  # loaded by the command, not by `steppe --help`

    table = Table(title="flow control: keys in use", expand=False)
    for column in ("kind", "key", "in use", "waiting", "holders", "first waiters"):
        table.add_column(column, justify="right" if column in ("in use", "waiting") else "left")
    for entry in usage:
        if entry["kind"] == "rate":
            use = f"{entry['in_use']}/{entry['limit']} per {show_seconds(float(entry['per'] or 0))}"
        else:
            use = f"{entry['in_use']}/{entry['limit']}"
        table.add_row(
            entry["kind"],
            escape(entry["key"]),
            use,
            str(entry["waiting"]),
            escape(_who(entry["holders"])),
            escape(_who(entry["waiters"])),
        )
    return table


def register(app: typer.Typer) -> None:
    @app.command()
    @report_errors
    def limits(
        as_json: bool = typer.Option(False, "--json", help="Every key with all its holders and waiters, as JSON"),
        key: str | None = typer.Option(None, "--key", help="Only this key (both kinds)"),
    ) -> None:
        """List the concurrency and rate-limit keys in use: slots held or starts in the window, and waiters."""
        from orchestrator.store.limits import LimitStore

        with connect(load_settings(), need_redis=False) as clients:
            keys = None if key is None else [("concurrency", key), ("rate", key)]
            usage = LimitStore(clients.store).usage(keys)
        if as_json:
            typer.echo(json.dumps({"limits": usage}, default=str))
        elif not usage:
            console.print("no concurrency or rate-limit key is in use")
        else:
            console.print(limits_table(usage))
