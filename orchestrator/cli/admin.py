"""`steppe admin rebuild RUN | --all`: rebuild projections from the event log (prune, export and
import are in retention_cmd.py)."""

from __future__ import annotations

import typer

from orchestrator.cli.common import console, load_settings, report_errors
from orchestrator.cli.context import connect
from orchestrator.errors import SubmitError

admin_app = typer.Typer(help="Operator tools.", no_args_is_help=True)


@admin_app.command("rebuild")
@report_errors
def rebuild_cmd(
    run_id: str | None = typer.Argument(None, help="Run to rebuild"),
    all_runs: bool = typer.Option(False, "--all", help="Every run"),
    check: bool = typer.Option(False, "--check", help="Only compare; exit 1 if any projection differs"),
) -> None:
    """Fold each run's event log and replace its stored projection when they differ."""
    from orchestrator.store.projections import rebuild

    if bool(run_id) == all_runs:
        raise SubmitError("give a run id or --all")
    with connect(load_settings(), need_redis=False) as clients:
        if all_runs:
            with clients.store.connection() as conn:
                ids = [r["run_id"] for r in conn.execute("SELECT run_id FROM workflow_runs ORDER BY created_at")]
        else:
            ids = [run_id or ""]
        differing = 0
        for rid in ids:
            result = rebuild(clients.store, rid, write=not check)
            if not result.matched:
                differing += 1
                verb = "differs from its log" if check else "rebuilt from its log"
                console.print(f"{rid}: {verb} ({result.events} events)")
    console.print(f"{len(ids)} run(s) checked, {differing} projection(s) {'differ' if check else 'rebuilt'}")
    if check and differing:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    from orchestrator.cli import retention_cmd  # noqa: F401  # prune, export, import join admin_app

    app.add_typer(admin_app, name="admin")
