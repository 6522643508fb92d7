"""`steppe dlq list | show | replay | purge`: inspect dead letters, resume their runs, clean up."""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import typer
from rich.table import Table

from orchestrator.cli.common import console, load_settings, report_errors
from orchestrator.cli.context import Clients, connect
from orchestrator.durations import format_duration, parse_duration
from orchestrator.errors import SubmitError
from orchestrator.keys import Keys

# The stores, the bus and the wire format load when a command runs, not with `steppe --help`.
if TYPE_CHECKING:
    from orchestrator.store.dead_letters import DeadLetterStore

dlq_app = typer.Typer(
    help="Dead letters: messages delivered more than max_deliveries times, undecodable ones, failed compensations.",
    no_args_is_help=True,
)
STATUSES = ("dead", "replayed")
STATUS_STYLE = {"dead": "red", "replayed": "green"}


def _synced(clients: Clients) -> DeadLetterStore:
    """The store, with the dead-letter stream merged in (undecodable entries exist only there)."""
    from orchestrator.store.dead_letters import DeadLetterStore, sync_from_stream

    store = DeadLetterStore(clients.store)
    sync_from_stream(clients.redis, Keys(clients.settings.namespace), store)
    return store


def _json_row(row: dict[str, Any], *, full: bool) -> dict[str, Any]:
    out = {k: (v.isoformat() if isinstance(v, dt.datetime) else v) for k, v in row.items()}
    if not full:
        out.pop("raw", None)
        out.pop("payload", None)
    return out


@dlq_app.command("list")
@report_errors
def list_(
    run: str | None = typer.Option(None, "--run", help="Only this run's dead letters"),
    status: str | None = typer.Option(None, "--status", help="dead or replayed"),
    reason: str | None = typer.Option(None, "--reason", help="e.g. MaxDeliveriesExceeded, UndecodableMessage"),
    limit: int = typer.Option(50, "--limit", min=1),
    as_json: bool = typer.Option(False, "--json", help="A JSON list for scripts"),
) -> None:
    """Dead letters, newest first."""
    from patterns.dead_letter import one_line

    if status is not None and status not in STATUSES:
        raise typer.BadParameter(f"{status!r}: use one of {', '.join(STATUSES)}", param_hint="--status")
    with connect(load_settings()) as clients:
        rows = _synced(clients).find(run_id=run, status=status, reason=reason, limit=limit)
    if as_json:
        typer.echo(json.dumps([_json_row(r, full=False) for r in rows]))
        return
    table = Table(title=f"{len(rows)} dead letter(s)" + (f" of {run}" if run else ""))
    # Ids and run ids are copied into other commands: never wrapped or cut; the rest folds.
    table.add_column("id", justify="right", no_wrap=True)
    table.add_column("when", overflow="fold")
    table.add_column("run", no_wrap=True)
    for col in ("step", "reason"):
        table.add_column(col, overflow="fold")
    table.add_column("deliv.", justify="right", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("error", overflow="fold", max_width=40)
    for r in rows:
        table.add_row(
            str(r["dead_letter_id"]),
            r["created_at"].strftime("%m-%d %H:%M:%S"),
            r["run_id"] or "-",
            f"{r['step_key']} #{r['attempt']}" if r["step_key"] else "-",
            r["reason"],
            str(r["delivery_count"]),
            f"[{STATUS_STYLE.get(r['status'], '')}]{r['status']}[/]",
            one_line(r["error"], 80),
        )
    console.print(table)
    if not rows:
        console.print("no dead letters" + (" match" if run or status or reason else ""), style="dim")


@dlq_app.command()
@report_errors
def show(
    dead_letter_id: int = typer.Argument(..., help="Id from `steppe dlq list`"),
    as_json: bool = typer.Option(False, "--json", help="The whole record as JSON"),
) -> None:
    """One dead letter: where it came from, why, and the original message."""
    with connect(load_settings()) as clients:
        row = _synced(clients).get(dead_letter_id)
    if as_json:
        typer.echo(json.dumps(_json_row(row, full=True)))
        return
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    for label, value in (
        ("dead letter", str(row["dead_letter_id"])),
        ("status", f"[{STATUS_STYLE.get(row['status'], '')}]{row['status']}[/]"),
        ("dead-lettered at", row["created_at"].isoformat()),
        ("replayed at", row["replayed_at"].isoformat() if row["replayed_at"] else "-"),
        ("run", row["run_id"] or "- (the message could not be decoded)"),
        ("step", f"{row['step_key']} (attempt {row['attempt']})" if row["step_key"] else "-"),
        ("queue", row["queue"]),
        ("original stream id", row["stream_id"]),
        ("deliveries", str(row["delivery_count"])),
        ("reason", row["reason"]),
        ("error", row["error"]),
    ):
        grid.add_row(label, value)
    console.print(grid)
    if row["payload"] is not None:
        console.print("[bold]message[/] (arguments as dispatched; secrets are references, never values)")
        console.print_json(data=row["payload"])
    elif row["raw"]:
        console.print("[bold]raw message[/] (not decodable)")
        console.print(row["raw"], highlight=False, markup=False, soft_wrap=True)
    if row["run_id"] and row["status"] == "dead":
        console.print(f"replay with `steppe dlq replay {row['dead_letter_id']}` (--edit to change the arguments)")


def _edited_args(row: dict[str, Any], *, edit: bool, payload_file: Path | None) -> dict[str, Any] | None:
    """Replacement arguments for the step, or None to replay it as it was."""
    if payload_file is not None:
        try:
            text = payload_file.read_text()
        except OSError as e:
            raise SubmitError(f"cannot read {payload_file}: {e.strerror}; check the path") from e
        return _parse(text, source=str(payload_file))
    if not edit:
        return None
    original = (row["payload"] or {}).get("args")
    if original is None:
        raise SubmitError(
            f"the original message of dead letter {row['dead_letter_id']} is not available (its dead-letter "
            "stream entry is gone); write the arguments to a file and pass --payload-file FILE"
        )
    edited = click.edit(json.dumps(original, indent=2, sort_keys=True) + "\n", extension=".json", require_save=True)
    if edited is None:
        raise SubmitError(
            "the arguments were not saved, so nothing was replayed; save them in the editor, "
            f"or run `steppe dlq replay {row['dead_letter_id']}` without --edit to replay them unchanged"
        )
    return _parse(edited, source="the edited arguments")


def _parse(text: str, *, source: str) -> dict[str, Any]:
    from patterns.dead_letter import parse_args

    try:
        return parse_args(text, source=source)
    except ValueError as e:
        raise SubmitError(str(e)) from e


@dlq_app.command()
@report_errors
def replay(
    dead_letter_id: int = typer.Argument(..., help="Id from `steppe dlq list`"),
    edit: bool = typer.Option(False, "--edit", help="Edit the step's arguments (JSON) in $EDITOR first"),
    payload_file: Path | None = typer.Option(
        None, "--payload-file", help="A JSON object that replaces the step's arguments"
    ),
    as_json: bool = typer.Option(False, "--json", help='Print {"run_id", "step", "overrides"}'),
) -> None:
    """Resume the dead letter's run from its failed steps, optionally with edited arguments for its step."""
    from orchestrator.store.dead_letters import check_replayable, replay

    if edit and payload_file is not None:
        raise typer.BadParameter("give either --edit or --payload-file, not both", param_hint="--edit")
    settings = load_settings()
    with connect(settings) as clients:
        store = _synced(clients)
        row = store.get(dead_letter_id)
        check_replayable(store, row)  # before the editor opens: no edits made in vain
        args = _edited_args(row, edit=edit, payload_file=payload_file)
        run_id = row["run_id"]
        replay(
            store,
            clients.redis,
            Keys(settings.namespace),
            partitions=settings.coordinator.partitions,
            row=row,
            args=args,
        )
    if as_json:
        typer.echo(json.dumps({"run_id": run_id, "step": row["step_key"], "overrides": args is not None}))
        return
    edited = " with edited arguments" if args is not None else ""
    console.print(
        f"replay requested: run [bold]{run_id}[/] resumes from its failed steps, {row['step_key']}{edited}; "
        f"follow it with `steppe watch {run_id}`"
    )


@dlq_app.command()
@report_errors
def purge(
    older_than: str = typer.Option("7d", "--older-than", help="Age of the dead letters to delete: 12h, 7d, 0s (all)"),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation"),
) -> None:
    """Delete old dead letters and trim the dead-letter stream to match."""
    from orchestrator.store.dead_letters import DeadLetterStore, trim_stream

    age = parse_duration(older_than)
    before = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=age)
    settings = load_settings()
    with connect(settings) as clients:
        store = DeadLetterStore(clients.store)
        count = store.count(before=before)
        if not yes:
            if not sys.stdin.isatty():
                raise SubmitError("purging needs confirmation: pass --yes when not running in a terminal")
            typer.confirm(
                f"delete {count} dead letter(s) older than {format_duration(age)} and trim the stream?", abort=True
            )
        deleted = store.purge(before=before)
        trimmed = trim_stream(clients.redis, Keys(settings.namespace), before=before)
    console.print(f"purged {deleted} dead letter(s) and {trimmed} stream entr{'y' if trimmed == 1 else 'ies'}")


def register(app: typer.Typer) -> None:
    app.add_typer(dlq_app, name="dlq")
