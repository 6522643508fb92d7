"""`steppe submit | status | watch | history | runs | cancel | retry | workers`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import orjson
import typer
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from orchestrator.cli.common import console, err_console, load_settings, report_errors
from orchestrator.cli.context import Clients, connect
from orchestrator.cli.limits_cmd import throttle_note
from orchestrator.errors import SubmitError
from orchestrator.keys import Keys
from orchestrator.state import TERMINAL_RUN_STATUSES, RunStatus, base_step_id
from orchestrator.waits_view import wait_note

STATUS_STYLE = {
    "succeeded": "green",
    "failed": "red",
    "dead_lettered": "red",
    "cancelled": "yellow",
    "skipped": "dim",
    "running": "cyan",
    "dispatched": "blue",
    "retry_scheduled": "magenta",
    "throttled": "magenta",
    "compensated": "yellow",
    "compensating": "yellow",
    "compensation_failed": "red",
    "pending": "dim",
    "waiting": "bright_magenta",
}


def read_inputs(pairs: list[str], inputs_file: Path | None) -> dict[str, Any]:
    from orchestrator.spec import parse_cli_inputs

    values: dict[str, Any] = {}
    if inputs_file is not None:
        try:
            loaded = json.loads(inputs_file.read_text())
        except (OSError, ValueError) as e:
            raise SubmitError(f"cannot read inputs from {inputs_file}: {e}; give a JSON object") from e
        except RecursionError:
            raise SubmitError(f"the inputs in {inputs_file} nest too deeply: flatten this data") from None
        if not isinstance(loaded, dict):
            raise SubmitError(f"{inputs_file} must hold a JSON object of inputs")
        values.update(loaded)
    values.update(parse_cli_inputs(pairs))
    return values


def exit_code_for(status: str) -> int:
    return 0 if status == RunStatus.SUCCEEDED else 1


def status_table(doc: dict[str, Any]) -> Table:
    table = Table(
        title=f"{doc['workflow']} · {doc['run_id']} · [{STATUS_STYLE.get(doc['status'], '')}]{doc['status']}[/]",
        expand=False,
    )
    table.add_column("step")
    table.add_column("status")
    table.add_column("attempts", justify="right")
    table.add_column("output / error", overflow="fold", max_width=80)
    for key, step in sorted(doc["steps"].items(), key=lambda kv: _plan_order(doc, kv[0])):
        status = step["status"]
        detail = ""
        if step.get("error"):
            detail = f"{step['error'].get('type')}: {step['error'].get('message')}"
        elif step.get("output") is not None:
            detail = orjson.dumps(step["output"]).decode()[:200]
        notes = "; ".join(
            n
            for n in (
                wait_note(step, now=time.time()),
                throttle_note(doc, key, step),
                pattern_notes(step.get("detail") or {}),
            )
            if n
        )
        if notes:
            detail = f"{escape(detail)} [dim]({escape(notes)})[/]" if detail else f"[dim]{escape(notes)}[/]"
        else:
            detail = escape(detail)
        table.add_row(key, f"[{STATUS_STYLE.get(status, '')}]{status}[/]", str(step["attempts"]), detail)
    return table


def pattern_notes(detail: dict[str, Any]) -> str:
    """What a pattern recorded about a step: its child run, its swarm vote, its gate's rejections."""
    notes = []
    if detail.get("child_run"):
        notes.append(f"child run {detail['child_run']}")
    vote = detail.get("vote")
    if isinstance(vote, dict):
        dissent = ", ".join(str(d.get("replica")) for d in vote.get("dissent", []))
        notes.append(
            f"{len(vote.get('agreed', []))}/{vote.get('replicas')} replicas agreed"
            + (f"; dissent: replica {dissent}" if dissent else "")
        )
    if detail.get("rejections"):
        notes.append(f"gate rejected {detail['rejections']}x")
    return "; ".join(notes)


def _plan_order(doc: dict[str, Any], key: str) -> tuple[int, str]:
    """Sort step keys by their wave in the plan, so the table reads top to bottom."""
    order = doc.setdefault("_order", {})
    if not order:
        for index, wave in enumerate((doc.get("plan") or {}).get("waves", [])):
            for step_id in wave:
                order[step_id] = index
    return order.get(base_step_id(key), 1 << 30), key


def wait_for(clients: Clients, run_id: str, *, live: bool, timeout: float | None = None) -> dict[str, Any]:
    """Poll the projection until the run is terminal, optionally drawing the step table."""
    deadline = None if timeout is None else time.monotonic() + timeout
    doc = clients.queries.get_run(run_id)
    if not live:
        while doc["status"] not in TERMINAL_RUN_STATUSES:
            if deadline is not None and time.monotonic() > deadline:
                break
            time.sleep(0.1)
            doc = clients.queries.get_run(run_id)
        return doc
    with Live(status_table(doc), console=err_console, refresh_per_second=4, transient=False) as view:
        while doc["status"] not in TERMINAL_RUN_STATUSES:
            if deadline is not None and time.monotonic() > deadline:
                break
            time.sleep(0.25)
            doc = clients.queries.get_run(run_id)
            view.update(status_table(doc))
    return doc


def print_result(doc: dict[str, Any]) -> None:
    style = STATUS_STYLE.get(doc["status"], "")
    console.print()
    console.print(f"run [bold]{doc['run_id']}[/] finished: [{style}]{doc['status']}[/]")
    if doc.get("outputs") is not None:
        console.print_json(data=doc["outputs"])
    if doc.get("error"):
        console.print(
            f"[red]error:[/] {doc['error'].get('step', '')} {doc['error'].get('type', '')}: "
            f"{doc['error'].get('message', '')}",
            highlight=False,
        )


def register(app: typer.Typer) -> None:
    # Long on purpose: the typer commands are closures registered here, each short on its own.
    @app.command()
    @report_errors
    def submit(
        file: Path = typer.Argument(..., help="Workflow YAML, or NAME[@VERSION] of a deployed workflow"),
        input_: list[str] = typer.Option([], "--input", "-i", help="Input as key=value (JSON values allowed)"),
        inputs_file: Path | None = typer.Option(None, "--inputs-file", help="JSON object of inputs"),
        idempotency_key: str | None = typer.Option(None, "--idempotency-key", help="Return the existing run"),
        wait: bool = typer.Option(False, "--wait", help="Wait for the run to finish; exit 0/1 by its status"),
        as_json: bool = typer.Option(False, "--json", help='Print {"run_id": …}'),
        no_handler_check: bool = typer.Option(False, "--no-handler-check", help="Skip the live-handler check"),
    ) -> None:
        """Submit a workflow run."""
        settings = load_settings()
        values = read_inputs(input_, inputs_file)
        with connect(settings) as clients:
            from orchestrator import deployed  # the submit path loads when a command connects

            submitter = clients.submitter
            if deployed.looks_like_ref(str(file)):
                result = deployed.submit_ref(
                    submitter,
                    str(file),
                    inputs=values,
                    idempotency_key=idempotency_key,
                    check_handlers=not no_handler_check,
                )
            else:
                result = submitter.submit(
                    submitter.load_file(file),
                    inputs=values,
                    idempotency_key=idempotency_key,
                    check_handlers=not no_handler_check,
                    base_dir=file.parent,
                )
            if as_json:
                typer.echo(json.dumps({"run_id": result.run_id, "created": result.created}))
            else:
                verb = "submitted" if result.created else "already submitted (idempotency key)"
                ref = result.workflow if result.version is None else f"{result.workflow}@{result.version}"
                console.print(f"{verb}: [bold]{result.run_id}[/] ({ref})")
            if wait:
                doc = wait_for(clients, result.run_id, live=False)
                if not as_json:
                    print_result(doc)
                raise typer.Exit(exit_code_for(doc["status"]))

    @app.command()
    @report_errors
    def status(run_id: str, as_json: bool = typer.Option(False, "--json")) -> None:
        """Show a run and its steps."""
        with connect(load_settings(), need_redis=False) as clients:
            doc = clients.queries.get_run(run_id)
        if as_json:
            doc.pop("definition", None)
            typer.echo(json.dumps(doc, default=str))
        else:
            console.print(status_table(doc))
            print_result(doc) if doc["status"] in TERMINAL_RUN_STATUSES else None

    @app.command()
    @report_errors
    def watch(run_id: str, timeout: float | None = typer.Option(None, help="Stop watching after N seconds")) -> None:
        """Live view of a run's steps until it finishes; exits 0/1 by its status."""
        with connect(load_settings(), need_redis=False) as clients:
            doc = wait_for(clients, run_id, live=True, timeout=timeout)
        print_result(doc)
        raise typer.Exit(exit_code_for(doc["status"]) if doc["status"] in TERMINAL_RUN_STATUSES else 0)

    @app.command()
    @report_errors
    def history(run_id: str, as_json: bool = typer.Option(False, "--json")) -> None:
        """Print a run's append-only event log."""
        with connect(load_settings(), need_redis=False) as clients:
            events = clients.queries.events(run_id)
        if as_json:
            typer.echo(json.dumps(events, default=str))
            return
        table = Table(title=f"history of {run_id}")
        for col in ("seq", "time", "event", "step", "attempt", "data"):
            table.add_column(col, overflow="fold")
        for e in events:
            data = orjson.dumps(e["data"]).decode() if e["data"] else ""
            table.add_row(
                str(e["seq"]),
                e["created_at"].strftime("%H:%M:%S.%f")[:-3],
                e["type"],
                e["step_key"] or "",
                "" if e["attempt"] is None else str(e["attempt"]),
                data[:120],
            )
        console.print(table)

    @app.command()
    @report_errors
    def runs(
        status_: str | None = typer.Option(
            None, "--status", help="Only runs in this status (waiting: runs with a step waiting, §12.1)"
        ),
        workflow: str | None = typer.Option(None, "--workflow", help="NAME, or NAME@VERSION of a deployed one"),
        limit: int = typer.Option(50, "--limit"),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """List recent runs."""
        with connect(load_settings(), need_redis=False) as clients:
            rows = clients.queries.list_runs(status=status_, workflow=workflow, limit=limit)
        if as_json:
            typer.echo(json.dumps(rows, default=str))
            return
        table = Table()
        for col in ("run", "workflow", "status", "created", "finished"):
            table.add_column(col)
        for r in rows:
            table.add_row(
                r["run_id"],
                r["workflow"] if r.get("workflow_version") is None else f"{r['workflow']}@{r['workflow_version']}",
                f"[{STATUS_STYLE.get(r['status'], '')}]{r['status']}[/]",
                r["created_at"].strftime("%Y-%m-%d %H:%M:%S"),
                r["finished_at"].strftime("%H:%M:%S") if r["finished_at"] else "",
            )
        console.print(table)

    @app.command()
    @report_errors
    def cancel(run_id: str) -> None:
        """Cancel a run: stop dispatching, cancel in-flight steps, compensate if the workflow says so."""
        with connect(load_settings()) as clients:
            clients.queries.run_status(run_id)
            clients.submitter.request(run_id, "cancel")
        console.print(f"cancel requested for {run_id}")

    @app.command()
    @report_errors
    def retry(run_id: str) -> None:
        """Resume a failed or cancelled run from its failed steps, keeping succeeded outputs."""
        with connect(load_settings()) as clients:
            current = clients.queries.run_status(run_id)
            if current not in (RunStatus.FAILED, RunStatus.CANCELLED):
                raise SubmitError(f"run {run_id} is {current}; only failed or cancelled runs can be retried")
            clients.submitter.request(run_id, "retry")
        console.print(f"retry requested for {run_id}")

    @app.command()
    @report_errors
    def workers(as_json: bool = typer.Option(False, "--json")) -> None:
        """Live workers and coordinators (from their heartbeats)."""
        settings = load_settings()
        with connect(settings) as clients:
            keys = Keys(settings.namespace)
            worker_list = _live(clients, keys.workers, keys.worker)
            coordinators = _live(clients, keys.coordinators, keys.coordinator)
        if as_json:
            typer.echo(json.dumps({"workers": worker_list, "coordinators": coordinators}))
            return
        table = Table(title=f"{len(worker_list)} live worker(s)")
        for col in (
            "worker",
            "host",
            "pid",
            "queues",
            "concurrency",
            "in flight",
            "processed",
            "heartbeat",
            "handlers",
        ):
            table.add_column(col, overflow="fold")
        now = time.time()
        for w in worker_list:
            table.add_row(
                w["id"],
                w["host"],
                str(w["pid"]),
                ",".join(w["queues"]),
                str(w["concurrency"]),
                str(w["in_flight"]),
                str(w.get("processed", "")),
                f"{now - w['heartbeat']:.1f}s ago",
                ", ".join(w["handlers"]),
            )
        console.print(table)
        ctable = Table(title=f"{len(coordinators)} live coordinator(s)")
        for col in ("coordinator", "host", "pid", "partitions", "active runs", "heartbeat"):
            ctable.add_column(col)
        for c in coordinators:
            ctable.add_row(
                c["id"],
                c["host"],
                str(c["pid"]),
                ",".join(map(str, c["partitions"])),
                str(c["runs"]),
                f"{now - c['heartbeat']:.1f}s ago",
            )
        console.print(ctable)


def _live(clients: Clients, index_key: str, item_key: Any) -> list[dict[str, Any]]:
    from orchestrator.bus import live_members

    return live_members(clients.redis, index_key, item_key)
