"""Third-party patterns found through real `steppe.patterns` entry points (a dist-info on sys.path)."""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from orchestrator.cli import patterns_cmd
from orchestrator.errors import SpecProblem, SpecValidationError
from orchestrator.spec import load_workflow
from patterns.plugins import installed_patterns

PLUGIN = """
from typing import Any

from patterns.plugins import HandlerCall, Pattern, PatternConfig, PatternStep, output_of


class FanInConfig(PatternConfig):
    branches: list[HandlerCall]
    join: HandlerCall


class FanIn(Pattern[FanInConfig]):
    name = "fan_in"
    description = "Run branches in parallel, then join their outputs."
    config_model = FanInConfig

    def expand(self, step: PatternStep, config: FanInConfig) -> list[dict[str, Any]]:
        ids = [step.derive(f"b{n}") for n in range(len(config.branches))]
        branches = [call.step(i) for i, call in zip(ids, config.branches)]
        join = config.join.step(step.id, needs=ids)
        join["with"]["outputs"] = [output_of(i) for i in ids]
        return [*branches, join]


class Explodes(FanIn):
    name = "explodes"

    def expand(self, step, config):
        raise RuntimeError("boom")


class StrayIds(FanIn):
    name = "stray_ids"

    def expand(self, step, config):
        return [{"id": "elsewhere", "handler": "x.y"}, {"id": step.id, "handler": "x.y"}]


class Dangling(FanIn):
    name = "dangling"

    def expand(self, step, config):
        return [{"id": step.derive("side"), "handler": "x.y"}, {"id": step.id, "handler": "x.y"}]


class Misnamed(FanIn):
    name = "something_else"


class NotAPattern:
    pass
"""

ENTRY_POINTS = """\
[steppe.patterns]
fan_in = acme_patterns:FanIn
explodes = acme_patterns:Explodes
stray_ids = acme_patterns:StrayIds
dangling = acme_patterns:Dangling
misnamed = acme_patterns:Misnamed
not_a_pattern = acme_patterns:NotAPattern
broken = acme_broken:Thing
"""

FAN_IN = """\
name: wf
steps:
  - id: src
    handler: builtin.echo
  - id: both
    uses: fan_in
    needs: [src]
    with:
      branches: [{handler: a.one}, {handler: a.two, with: {v: "${{ steps.src.output }}"}}]
      join: {handler: a.join}
"""


def install(site: Path, dist: str, entry_points: str) -> None:
    info = site / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(entry_points)


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory on sys.path holding the `acme-patterns` distribution and its modules."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "acme_patterns.py").write_text(PLUGIN)
    (site / "acme_broken.py").write_text("import acme_missing_dependency  # noqa\n")
    install(site, "acme-patterns", ENTRY_POINTS)
    monkeypatch.syspath_prepend(str(site))
    yield site
    for module in ("acme_patterns", "acme_broken"):
        sys.modules.pop(module, None)


def problems(doc: str) -> list[SpecProblem]:
    with pytest.raises(SpecValidationError) as info:
        load_workflow(textwrap.dedent(doc), filename="wf.yaml")
    return info.value.problems


def uses(pattern: str) -> str:
    return f"name: wf\nsteps:\n  - id: s\n    uses: {pattern}\n    with: {{branches: [], join: {{handler: a.j}}}}\n"


def test_a_third_party_pattern_is_discovered_and_expanded(site: Path) -> None:
    spec = load_workflow(FAN_IN)
    stored = {s["id"]: s for s in spec.model_dump(mode="json", by_alias=True)["steps"]}
    assert list(stored) == ["src", "both-b0", "both-b1", "both"]
    assert stored["both-b0"]["needs"] == stored["both-b1"]["needs"] == ["src"]  # both are entry steps
    assert stored["both"]["needs"] == ["both-b0", "both-b1"]
    assert stored["both"]["with"] == {"outputs": ["${{ steps.both-b0.output }}", "${{ steps.both-b1.output }}"]}


def test_only_the_plugins_a_workflow_uses_are_imported(site: Path) -> None:
    load_workflow(FAN_IN)
    assert "acme_broken" not in sys.modules  # a broken plugin does not break workflows that do not use it


def test_a_plugin_that_cannot_be_imported_is_named_with_its_error(site: Path) -> None:
    [problem] = problems(uses("broken"))
    assert (problem.line, problem.column) == (4, 11)
    assert problem.message == (
        "pattern 'broken' (acme_broken:Thing from acme-patterns 1.0) cannot be imported: "
        "ModuleNotFoundError: No module named 'acme_missing_dependency'"
    )


def test_a_plugin_that_raises_in_expand_is_reported_as_its_bug(site: Path) -> None:
    [problem] = problems(uses("explodes"))
    assert problem.message == (
        "pattern 'explodes' (acme_patterns:Explodes from acme-patterns 1.0) failed to expand step 's': "
        "RuntimeError: boom; this is a bug in the plugin: report it to its authors"
    )


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("stray_ids", "generated step id 'elsewhere' is not derived from 's': use step.derive(...)"),
        ("dangling", "generated steps ['s-side'] do not lead to the exit step 's'"),
        ("misnamed", "the entry point is named 'misnamed' but the class says name = 'something_else'"),
        ("not_a_pattern", "which is not a subclass of patterns.plugins.Pattern"),
    ],
)
def test_plugin_mistakes_are_caught_and_explained(site: Path, name: str, expected: str) -> None:
    [problem] = problems(uses(name))
    assert (problem.line, problem.column) == (4, 11)
    assert f"pattern {name!r} (acme_patterns:" in problem.message
    assert expected in problem.message


def test_two_distributions_claiming_one_name_is_an_error_naming_both(site: Path) -> None:
    install(site, "other-patterns", "[steppe.patterns]\nfan_in = acme_patterns:Explodes\n")
    [problem] = problems(FAN_IN)
    assert "the name 'fan_in' is registered more than once" in problem.message
    assert "acme_patterns:FanIn from acme-patterns 1.0" in problem.message
    assert "acme_patterns:Explodes from other-patterns 1.0" in problem.message


def test_unknown_pattern_lists_third_party_ones_too(site: Path) -> None:
    [problem] = problems("name: wf\nsteps:\n  - id: a\n    uses: fan_inn\n")
    assert "installed patterns are broken, dangling, explodes, fan_in, map_reduce" in problem.message
    assert "did you mean 'fan_in'?" in problem.message


def test_steppe_patterns_lists_plugins_and_fails_on_broken_ones(site: Path) -> None:
    app = typer.Typer()
    patterns_cmd.register(app)
    app.command("noop")(lambda: None)  # a second command keeps `patterns` a subcommand
    result = CliRunner().invoke(app, ["patterns", "--json"])
    assert result.exit_code == 2
    rows = {row["name"]: row for row in json.loads(result.stdout.splitlines()[0])}
    assert rows["fan_in"]["distribution"] == "acme-patterns 1.0"
    assert rows["fan_in"]["description"] == "Run branches in parallel, then join their outputs."
    assert [f["key"] for f in rows["fan_in"]["with"]] == ["branches", "join"]
    assert rows["map_reduce"]["distribution"].startswith("steppe ")
    assert rows["broken"]["error"].startswith("cannot be imported: ModuleNotFoundError")
    assert "broken, misnamed, not_a_pattern cannot be used" in result.output


def test_steppe_patterns_table_shows_config_keys(site: Path) -> None:
    app = typer.Typer()
    patterns_cmd.register(app)
    app.command("noop")(lambda: None)
    result = CliRunner().invoke(app, ["patterns"])
    assert "fan_in: Run branches in parallel, then join their outputs." in result.output
    assert "from acme-patterns 1.0 (acme_patterns:FanIn)" in result.output
    assert "pipeline: Run `stages` in sequence" in result.output


def test_the_built_in_patterns_are_registered_by_steppe_itself() -> None:
    installed = installed_patterns(["map_reduce", "pipeline"])
    assert {name: p.target for name, p in installed.items()} == {
        "map_reduce": "patterns.map_reduce:MapReduce",
        "pipeline": "patterns.pipeline:Pipeline",
    }
    assert all(p.error is None and p.distribution.startswith("steppe ") for p in installed.values())
