"""`steppe workflows deploy|list|show` and `steppe schedules add|list|show|pause|resume|trigger|remove`."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from orchestrator.cli.common import console, load_settings, report_errors
from orchestrator.cli.context import connect
from orchestrator.cli.runs import read_inputs
from orchestrator.errors import SubmitError

workflows_app = typer.Typer(help="Deployed workflows: versioned definitions to submit by name.", no_args_is_help=True)
schedules_app = typer.Typer(
    help="Schedules: runs of deployed workflows on a cron or an interval, fired by the coordinators.",
    no_args_is_help=True,
)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _echo_json(value: Any) -> None:
    typer.echo(json.dumps(value, default=str))


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise SubmitError(f"cannot read {path}: {e.strerror}; check the path") from e


# -- workflows --------------------------------------------------------------------------------------


@workflows_app.command("deploy")
@report_errors
def deploy(
    files: list[Path] = typer.Argument(..., help="Workflow YAML files"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Store each document as the next version of its name (identical content: the existing version)."""
    from orchestrator.deployed import deploy as deploy_document

    documents = [(f, _read(f)) for f in files]
    with connect(load_settings(), need_redis=False) as clients:
        submitter = clients.submitter
        done = [deploy_document(submitter, data, filename=str(f), base_dir=f.parent) for f, data in documents]
    if as_json:
        _echo_json([{"name": d.name, "version": d.version, "created": d.created, "digest": d.digest} for d in done])
        return
    for d in done:
        verb = "deployed" if d.created else "unchanged, already deployed as"
        console.print(f"{verb} [bold]{d.name}@{d.version}[/]")


@workflows_app.command("list")
@report_errors
def list_workflows(as_json: bool = typer.Option(False, "--json")) -> None:
    """Every deployed workflow with its newest version."""
    from orchestrator.store.workflows import WorkflowStore

    with connect(load_settings(), need_redis=False) as clients:
        rows = WorkflowStore(clients.store).list_latest()
    if as_json:
        _echo_json(rows)
        return
    table = Table(title=f"{len(rows)} deployed workflow(s)")
    for col in ("workflow", "latest", "versions", "deployed", "description"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(
            r["name"],
            f"@{r['version']}",
            str(r["versions"]),
            r["created_at"].strftime("%Y-%m-%d %H:%M:%S"),
            r["description"] or "",
        )
    console.print(table)


@workflows_app.command("show")
@report_errors
def show_workflow(
    ref: str = typer.Argument(..., help="NAME or NAME@VERSION"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """A deployed version's document (the newest without @VERSION) and the versions of its name."""
    from orchestrator.store.workflows import WorkflowStore, parse_ref

    name, version = parse_ref(ref)
    with connect(load_settings(), need_redis=False) as clients:
        store = WorkflowStore(clients.store)
        row = store.get(name, version)
        versions = store.versions(name)
    if as_json:
        _echo_json({**row, "versions": [v["version"] for v in versions]})
        return
    console.print(f"[bold]{row['name']}@{row['version']}[/] deployed {row['created_at']:%Y-%m-%d %H:%M:%S}")
    console.print("versions: " + ", ".join(f"@{v['version']}" for v in versions))
    console.print(row["source"], markup=False, highlight=False)


# -- schedules --------------------------------------------------------------------------------------


@schedules_app.command("add")
@report_errors
def add(
    schedule_id: str = typer.Argument(..., help="Unique schedule id"),
    workflow: str = typer.Option(..., "--workflow", help="NAME (its newest version at each tick) or NAME@VERSION"),
    cron: str | None = typer.Option(None, "--cron", help="Five-field cron expression, e.g. '0 2 * * *'"),
    timezone: str = typer.Option("UTC", "--timezone", help="IANA time zone of --cron, e.g. Europe/Berlin"),
    every: str | None = typer.Option(None, "--every", help="Interval instead of --cron, e.g. 10s, 5m, 1h"),
    input_: list[str] = typer.Option([], "--input", "-i", help="Input as key=value (JSON values allowed)"),
    inputs_file: Path | None = typer.Option(None, "--inputs-file", help="JSON object of inputs"),
    overlap: str = typer.Option("skip", "--overlap", help="skip | allow | cancel_previous"),
    catchup: str = typer.Option("latest", "--catchup", help="Ticks missed while no coordinator ran: none|latest|all"),
    catchup_window: str = typer.Option("1h", "--catchup-window", help="How far back missed ticks are caught up"),
    jitter: str = typer.Option("0s", "--jitter", help="Fire each tick up to this much later (spreads load)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Add a schedule of a deployed workflow."""
    from orchestrator import schedule_ops

    request = schedule_ops.ScheduleRequest(
        schedule_id=schedule_id,
        workflow=workflow,
        cron=cron,
        timezone=timezone,
        every=every,
        inputs=read_inputs(input_, inputs_file),
        overlap=overlap,
        catchup=catchup,
        catchup_window=catchup_window,
        jitter=jitter,
    )
    with connect(load_settings(), need_redis=False) as clients:
        doc = schedule_ops.add(clients.submitter, request, now=_now())
    if as_json:
        _echo_json(doc)
    else:
        console.print(f"schedule [bold]{schedule_id}[/] added; next fire time {doc['next_fire_at']}")


def _when(doc: dict[str, Any]) -> str:
    return f"cron {doc['cron']} ({doc['timezone']})" if doc["cron"] else f"every {doc['every_seconds']:g}s"


@schedules_app.command("list")
@report_errors
def list_schedules(as_json: bool = typer.Option(False, "--json")) -> None:
    """Every schedule with its next fire time."""
    from orchestrator import schedule_ops
    from orchestrator.store.schedules import ScheduleStore

    with connect(load_settings(), need_redis=False) as clients:
        docs = [schedule_ops.describe(r, upcoming=1) for r in ScheduleStore(clients.store).all()]
    if as_json:
        _echo_json(docs)
        return
    table = Table(title=f"{len(docs)} schedule(s)")
    for col in ("schedule", "workflow", "when", "overlap", "state", "next fire time", "last run", "fired", "skipped"):
        table.add_column(col, overflow="fold")
    for d in docs:
        table.add_row(
            d["schedule_id"],
            d["workflow"],
            _when(d),
            d["overlap"],
            "paused" if d["paused"] else ("error" if d["last_error"] else "active"),
            d["next_fire_at"] or "",
            d["last_run_id"] or "",
            str(d["fired"]),
            str(d["skipped"]),
        )
    console.print(table)


@schedules_app.command("show")
@report_errors
def show(schedule_id: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """A schedule, its next fire times and its latest runs."""
    from orchestrator import schedule_ops
    from orchestrator.store.schedules import ScheduleStore

    with connect(load_settings(), need_redis=False) as clients:
        store = ScheduleStore(clients.store)
        doc = schedule_ops.describe(store.get(schedule_id))
        runs = store.recent_runs(schedule_id)
    doc["recent_runs"] = runs
    if as_json:
        _echo_json(doc)
        return
    for key in (
        "schedule_id",
        "workflow",
        "overlap",
        "catchup",
        "catchup_window_seconds",
        "jitter_seconds",
        "paused",
        "last_tick_at",
        "last_run_id",
        "last_error",
        "fired",
        "skipped",
    ):
        console.print(f"{key:>22}: {doc[key]}", highlight=False)
    console.print(f"{'when':>22}: {_when(doc)}", highlight=False)
    console.print(f"{'next fire times':>22}: " + ", ".join(doc["upcoming"]), highlight=False)
    for r in runs:
        console.print(f"  {r['run_id']}  {r['status']:<12} {r['created_at']:%Y-%m-%d %H:%M:%S}", highlight=False)


@schedules_app.command("pause")
@report_errors
def pause(schedule_id: str) -> None:
    """Stop firing the schedule (ticks while paused are not caught up)."""
    from orchestrator import schedule_ops

    with connect(load_settings(), need_redis=False) as clients:
        schedule_ops.pause(clients.submitter, schedule_id)
    console.print(f"schedule {schedule_id} paused")


@schedules_app.command("resume")
@report_errors
def resume(schedule_id: str) -> None:
    """Fire the schedule again from its next tick after now."""
    from orchestrator import schedule_ops

    with connect(load_settings(), need_redis=False) as clients:
        doc = schedule_ops.resume(clients.submitter, schedule_id, now=_now())
    console.print(f"schedule {schedule_id} resumed; next fire time {doc['next_fire_at']}")


@schedules_app.command("trigger")
@report_errors
def trigger(schedule_id: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """Start a run of the schedule now (besides its ticks)."""
    from orchestrator import schedule_ops

    with connect(load_settings()) as clients:
        done = schedule_ops.trigger(clients.submitter, schedule_id, now=_now())
    if as_json:
        _echo_json({"run_id": done.run_id, "workflow": done.workflow, "version": done.version})
    else:
        console.print(f"triggered: [bold]{done.run_id}[/] ({done.workflow}@{done.version})")


@schedules_app.command("remove")
@report_errors
def remove(schedule_id: str) -> None:
    """Delete the schedule (its runs stay)."""
    from orchestrator.store.schedules import ScheduleStore

    with connect(load_settings(), need_redis=False) as clients:
        ScheduleStore(clients.store).remove(schedule_id)
    console.print(f"schedule {schedule_id} removed")


def register(app: typer.Typer) -> None:
    app.add_typer(workflows_app, name="workflows")
    app.add_typer(schedules_app, name="schedules")
