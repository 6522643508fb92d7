"""`steppe validate FILE` and `steppe plan FILE`: check a workflow document and show its plan."""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from orchestrator.cli.common import console, report_errors

if TYPE_CHECKING:
    from orchestrator.spec.model import WorkflowSpec


class PlanFormat(StrEnum):
    table = "table"
    json = "json"
    dot = "dot"
    mermaid = "mermaid"


@report_errors
def validate(file: Path = typer.Argument(..., help="Workflow YAML file")) -> None:
    """Check a workflow file; exit 0 when it is valid, 2 with every problem as file:line:col."""
    from orchestrator.planner import plan
    from orchestrator.spec import load_workflow_file

    spec = load_workflow_file(file)
    result = plan(spec)
    console.print(
        f"[green]ok[/green] {file}: workflow {spec.name!r} is valid "
        f"({len(result.nodes)} steps, {len(result.edges)} edges, {len(result.waves)} waves)",
        highlight=False,
        soft_wrap=True,
    )
    _print_expansions(spec)


def _print_expansions(spec: WorkflowSpec) -> None:
    """One line per `uses:` step: the steps its pattern expanded it to (the exit step last)."""
    for expansion in spec._expansions:
        console.print(
            f"  step {expansion.step_id!r} uses {expansion.pattern}, expanded to: {', '.join(expansion.step_ids)}",
            highlight=False,
            soft_wrap=True,
        )


@report_errors
def plan_command(
    file: Path = typer.Argument(..., help="Workflow YAML file"),
    fmt: PlanFormat = typer.Option(PlanFormat.table, "--format", "-f", help="table, json, dot or mermaid"),
) -> None:
    """Show the waves of parallel steps, the critical path and the width per queue."""
    from orchestrator import planner
    from orchestrator.spec import load_workflow_file

    spec = load_workflow_file(file)
    result = planner.plan(spec)
    if fmt is PlanFormat.table:
        console.print(planner.render_table(result))
        _print_expansions(spec)
        return
    render = {
        PlanFormat.json: planner.render_json,
        PlanFormat.dot: planner.render_dot,
        PlanFormat.mermaid: planner.render_mermaid,
    }[fmt]
    text = render(result)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


def register(app: typer.Typer) -> None:
    app.command("validate")(validate)
    app.command("plan")(plan_command)
