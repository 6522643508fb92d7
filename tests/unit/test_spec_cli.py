"""`steppe validate`, `steppe plan` and `steppe bench plan` as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from orchestrator.cli import bench, spec_cmds

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture
def app() -> typer.Typer:
    app = typer.Typer()
    spec_cmds.register(app)
    bench.register(app)
    return app


@pytest.fixture
def broken(tmp_path: Path) -> Path:
    path = tmp_path / "broken.yaml"
    path.write_text("name: wf\nsteps:\n  - {id: a, handler: x.y, needs: [b]}\n  - {id: a, handler: x.y, neds: []}\n")
    return path


def test_validate_ok_prints_a_summary(app: typer.Typer) -> None:
    result = CliRunner().invoke(app, ["validate", str(EXAMPLES / "order_saga.yaml")])
    assert result.exit_code == 0, result.output
    assert "workflow 'order-fulfilment' is valid (5 steps, 5 edges, 4 waves)" in result.output


def test_validate_errors_exit_2_with_file_line_col(app: typer.Typer, broken: Path) -> None:
    result = CliRunner().invoke(app, ["validate", str(broken)])
    assert result.exit_code == 2
    assert f"{broken}:3:35: step 'a' needs 'b', which is not a step in this workflow" in result.output
    assert f"{broken}:4:10: duplicate step id 'a'" in result.output
    assert f"{broken}:4:27: unknown key 'neds' in step 'a'; did you mean 'needs'?" in result.output
    assert "3 problem(s) found" in result.output


def test_plan_json_shape(app: typer.Typer) -> None:
    result = CliRunner().invoke(app, ["plan", str(EXAMPLES / "diamond.yaml"), "--format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {
        "nodes": 4,
        "edges": 4,
        "waves": [["a"], ["b", "c"], ["d"]],
        "critical_path": ["a", "b", "d"],
    }


@pytest.mark.parametrize(("fmt", "marker"), [("table", "critical path"), ("dot", "digraph"), ("mermaid", "flowchart")])
def test_plan_formats(app: typer.Typer, fmt: str, marker: str) -> None:
    result = CliRunner().invoke(app, ["plan", str(EXAMPLES / "order_saga.yaml"), "-f", fmt])
    assert result.exit_code == 0, result.output
    assert marker in result.output


def test_plan_of_an_invalid_file_exits_2(app: typer.Typer, broken: Path) -> None:
    assert CliRunner().invoke(app, ["plan", str(broken)]).exit_code == 2


def test_bench_plan_reports_figures(app: typer.Typer) -> None:
    result = CliRunner().invoke(app, ["bench", "plan", "--nodes", "200", "--repeat", "2", "--json"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output)
    assert figures["nodes"] == 200
    assert figures["total_s"] > 0
    assert figures["peak_mib"] > 0


def test_generated_dag_is_valid() -> None:
    from orchestrator.planner import plan
    from orchestrator.spec import load_workflow

    result = plan(load_workflow(bench.generate_dag_yaml(500, seed=3)))
    assert len(result.nodes) == 500
    assert all(len(result.graph.pred[n]) <= 3 for n in result.nodes)


def test_console_script_exit_codes(broken: Path) -> None:
    command = [sys.executable, "-m", "orchestrator.cli.main", "validate"]
    ok = subprocess.run(
        [*command, str(EXAMPLES / "diamond.yaml")], capture_output=True, text=True, timeout=60, check=False
    )
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run([*command, str(broken)], capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 2
    assert f"{broken}:3:35:" in bad.stderr
