"""`steppe admin prune | export | import`: retention by hand, and runs archived as JSON lines.

steppe admin prune [--older-than 30d] [--dry-run] [--json]
steppe admin export RUN... | --older-than D | --before DATE  > runs.jsonl
steppe admin import runs.jsonl
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from orchestrator.cli.admin import admin_app
from orchestrator.cli.common import err_console, load_settings, report_errors
from orchestrator.cli.context import connect
from orchestrator.errors import ConflictError, SubmitError

if TYPE_CHECKING:  # the store stack loads only when a command runs (tests/unit/test_cli_startup.py)
    from orchestrator.settings import Settings
    from orchestrator.store.retention import PruneResult
    from orchestrator.store.runs import RunStore

BUSY_WAIT = 60.0  # how long prune waits for another pruner (a coordinator's batch) to finish
MAX_BATCH_RUNS = 10_000  # what steppe_prune_finished_runs accepts (store.retention.MAX_BATCH_RUNS)


def _cutoff(store: RunStore, settings: Settings, older_than: str | None, before: str | None) -> dt.datetime:
    from orchestrator.durations import parse_duration
    from orchestrator.store import retention

    if older_than is not None and before is not None:
        raise SubmitError("give --older-than or --before, not both")
    if before is not None:
        try:
            cutoff = dt.datetime.fromisoformat(before)
        except ValueError as e:
            raise SubmitError(
                f"--before {before!r} is not a date: write it like 2026-11-01 or 2026-11-01T12:00+00:00"
            ) from e
        return cutoff if cutoff.tzinfo else cutoff.replace(tzinfo=dt.UTC)
    seconds = parse_duration(older_than, what="--older-than") if older_than is not None else None
    if seconds is None:
        seconds = settings.retention.finished_runs
        if seconds <= 0:
            raise SubmitError("retention is off (STEPPE_RETENTION__FINISHED_RUNS=0): give --older-than, e.g. 30d")
    return retention.cutoff_before(store, seconds)


def _prune(store: RunStore, cutoff: dt.datetime, batch: int) -> PruneResult:
    from orchestrator.store import retention

    total = retention.PruneResult()
    waited_since: float | None = None
    while True:
        result = retention.prune_batch(store, cutoff, max_runs=batch)
        if result.busy:
            waited_since = waited_since or time.monotonic()
            if time.monotonic() - waited_since > BUSY_WAIT:
                raise ConflictError(
                    f"another pruner (a coordinator) held the retention lock for over {BUSY_WAIT:g} s; try again later"
                )
            time.sleep(0.5)
            continue
        waited_since = None
        total = total + result
        if result.runs == 0:
            return total


@admin_app.command("prune")
@report_errors
def prune_cmd(
    older_than: str | None = typer.Option(
        None, "--older-than", help="Finished before this long ago (default STEPPE_RETENTION__FINISHED_RUNS)"
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only count what would be deleted"),
    batch: int = typer.Option(500, "--batch", min=1, max=MAX_BATCH_RUNS, help="Top-level runs per transaction"),
    as_json: bool = typer.Option(False, "--json", help="The counts as JSON"),
) -> None:
    """Delete finished runs (with their child runs, steps, events, hook executions, dead letters)."""
    from orchestrator.store import retention

    with connect(load_settings(), need_redis=False) as clients:
        store = clients.store
        cutoff = _cutoff(store, clients.settings, older_than, None)
        started = time.perf_counter()
        if dry_run:
            ids = [r for tree in retention.prunable_runs(store, cutoff) for r in tree]
            result = retention.PruneResult()
            for start in range(0, len(ids), 1000):
                result = result + retention.row_counts(store, ids[start : start + 1000])
        else:
            result = _prune(store, cutoff, batch)
        seconds = time.perf_counter() - started
    rows = sum(result.counts().values())
    if as_json:
        doc = {"dry_run": dry_run, "cutoff": cutoff.isoformat(), **result.counts(), "seconds": round(seconds, 3)}
        typer.echo(json.dumps(doc))
        return
    verb = "would delete" if dry_run else "deleted"
    detail = ", ".join(f"{n} {table.replace('_', ' ')}" for table, n in result.counts().items() if table != "runs")
    typer.echo(f"{verb} {result.runs} run(s) finished before {cutoff.isoformat(timespec='seconds')} ({detail})")
    if not dry_run and rows:
        typer.echo(f"{rows} rows in {seconds:.2f} s ({rows / max(seconds, 1e-9):,.0f} rows/s)")


@admin_app.command("export")
@report_errors
def export_cmd(
    run_ids: list[str] = typer.Argument(None, help="Runs to export (with their child runs)"),
    older_than: str | None = typer.Option(None, "--older-than", help="Every finished run older than this, e.g. 30d"),
    before: str | None = typer.Option(None, "--before", help="Every finished run finished before this date"),
) -> None:
    """Write runs as JSON lines to stdout (definition, state, steps and full event log), for `import`."""
    from orchestrator.store import archive, retention

    if bool(run_ids) == (older_than is not None or before is not None):
        raise SubmitError("give run ids, or --older-than D / --before DATE (what a prune would delete)")
    with connect(load_settings(), need_redis=False) as clients:
        store = clients.store
        if run_ids:
            missing = archive.missing_runs(store, run_ids)
            if missing:
                raise SubmitError(f"no run {', '.join(missing)}; `steppe runs list` shows the stored runs")
            ids = list(run_ids)
        else:
            cutoff = _cutoff(store, clients.settings, older_than, before)
            ids = [tree[0] for tree in retention.prunable_runs(store, cutoff)]
        count = 0
        for line in archive.export_lines(store, ids):
            sys.stdout.write(line + "\n")
            count += 1
    sys.stdout.flush()
    err_console.print(f"exported {count} run(s)")


@admin_app.command("import")
@report_errors
def import_cmd(path: Path = typer.Argument(..., help="A file written by `steppe admin export` (- for stdin)")) -> None:
    """Insert the runs of an export; refused (nothing imported) if any of them is stored already."""
    from orchestrator.store import archive

    source = "stdin" if str(path) == "-" else str(path)
    try:
        text = sys.stdin.read() if source == "stdin" else path.read_text()
    except OSError as e:
        raise SubmitError(f"cannot read {source}: {e.strerror or e}") from e
    docs = archive.parse_lines(text.splitlines(), source=source)
    with connect(load_settings(), need_redis=False) as clients:
        result = archive.import_docs(clients.store, docs, source=source)
    typer.echo(f"imported {result.runs} run(s), {result.steps} step(s), {result.events} event(s) from {source}")
