"""The planner: waves, critical path, queue widths, fan-out, skip propagation, renderers."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from rich.console import Console

from orchestrator import planner
from orchestrator.spec import load_workflow, load_workflow_file

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

DIAMOND = """\
name: diamond
steps:
  - {id: a, handler: builtin.echo}
  - {id: b, handler: builtin.echo, needs: [a], queue: cpu}
  - {id: c, handler: builtin.echo, needs: [a], queue: cpu}
  - {id: d, handler: builtin.echo, needs: [b, c]}
"""


def test_diamond_waves_and_json_shape() -> None:
    plan = planner.plan(load_workflow(DIAMOND))
    assert plan.waves == [["a"], ["b", "c"], ["d"]]
    assert plan.to_json() == {
        "nodes": 4,
        "edges": 4,
        "waves": [["a"], ["b", "c"], ["d"]],
        "critical_path": ["a", "b", "d"],  # a tie between b and c goes to the smaller id
    }
    assert json.loads(planner.render_json(plan)) == plan.to_json()


def test_queue_width_is_the_widest_wave_per_queue() -> None:
    plan = planner.plan(load_workflow(DIAMOND))
    assert plan.queue_width == {"cpu": 2, "default": 1}


def test_critical_path_follows_estimates() -> None:
    doc = DIAMOND.replace("needs: [a], queue: cpu}", "needs: [a], queue: cpu, estimate: 1s}", 1)
    doc = doc.replace(
        "- {id: c, handler: builtin.echo, needs: [a], queue: cpu}", "- {id: c, handler: x.y, needs: [a], estimate: 2m}"
    )
    plan = planner.plan(load_workflow(doc))
    assert plan.critical_path == ["a", "c", "d"]
    assert plan.critical_length == 1 + 120 + 1


def test_ancestors_descendants_and_skip_closure() -> None:
    plan = planner.plan(load_workflow(DIAMOND))
    assert plan.ancestors("d") == {"a", "b", "c"}
    assert plan.descendants("b") == {"d"}
    assert planner.skip_closure(plan.graph, {"b"}) == {"b", "d"}
    assert planner.skip_closure(plan.graph, {"a"}) == {"a", "b", "c", "d"}
    assert planner.skip_closure(plan.graph, set()) == set()


def test_for_each_steps_are_fan_out_nodes() -> None:
    spec = load_workflow_file(EXAMPLES / "order_saga.yaml")
    plan = planner.plan(spec)
    assert plan.fan_out == frozenset({"pack_items"})
    assert '[["pack_items (for each)"]]' in planner.render_mermaid(plan)
    assert '"pack_items" [shape=box3d' in planner.render_dot(plan)
    console = Console(record=True, width=120)
    console.print(planner.render_table(plan))
    text = console.export_text()
    assert "pack_items ⋔" in text
    assert "critical path (4 steps, length 4): reserve → charge → ship → notify" in text
    assert "payments" in text


def test_dot_and_mermaid_mark_the_critical_path() -> None:
    plan = planner.plan(load_workflow(DIAMOND))
    dot = planner.render_dot(plan)
    assert dot.startswith('digraph "diamond" {')
    assert '"a" -> "b" [color=red, penwidth=2];' in dot
    assert '"a" -> "c";' in dot
    assert '{ rank=same; "b" "c" }' in dot
    mermaid = planner.render_mermaid(plan)
    assert mermaid.splitlines()[0] == "flowchart LR"
    assert "n0 --> n1" in mermaid
    assert "class n0,n1,n3 critical;" in mermaid


def test_table_shortens_wide_waves() -> None:
    steps = "".join(f"  - {{id: s{i}, handler: builtin.noop}}\n" for i in range(40))
    plan = planner.plan(load_workflow("name: wide\nsteps:\n" + steps))
    console = Console(record=True, width=200)
    console.print(planner.render_table(plan))
    assert f"… and {40 - planner.TABLE_WAVE_LIMIT} more" in console.export_text()


def test_find_cycle_returns_a_closed_path() -> None:
    graph = planner.graph_from_needs({"a": ["c"], "b": ["a"], "c": ["b"], "d": []})
    assert planner.find_cycle(graph) == ["a", "b", "c", "a"]
    assert planner.find_cycle(planner.graph_from_needs({"a": [], "b": ["a"]})) is None
    assert planner.find_cycles(planner.graph_from_needs({"a": ["a"], "b": ["c"], "c": ["b"]})) == [
        ["a", "a"],
        ["b", "c", "b"],
    ]


def test_unreachable_answers_ancestry_queries() -> None:
    analysis = planner.analyse(planner.graph_from_needs({"a": [], "b": ["a"], "c": ["b"], "x": []}))
    assert analysis.waves is not None
    queries = [("a", "c"), ("x", "c"), ("b", "c"), ("c", "a")]
    assert planner.unreachable(analysis.graph, analysis.waves, queries) == {("x", "c"), ("c", "a")}


def test_plan_of_an_unvalidated_cyclic_spec_is_refused() -> None:
    spec = load_workflow(DIAMOND)
    data = spec.model_dump(mode="json", by_alias=True)
    data["steps"][0]["needs"] = ["d"]
    cyclic = type(spec).model_validate(data)
    with pytest.raises(ValueError, match="dependency cycle"):
        planner.plan(cyclic)


def test_build_graph_annotates_nodes() -> None:
    graph = planner.build_graph(load_workflow_file(EXAMPLES / "order_saga.yaml"))
    assert graph.nodes["charge"]["queue"] == "payments"
    assert graph.nodes["pack_items"]["fan_out"] is True
    assert graph.nodes["reserve"]["weight"] == planner.UNIT_WEIGHT
    assert sorted(graph.successors("reserve")) == ["charge", "pack_items"]


@pytest.mark.parametrize("name", ["order_saga.yaml", "diamond.yaml"])
def test_examples_validate(name: str) -> None:
    spec = load_workflow_file(EXAMPLES / name)
    assert planner.plan(spec).waves


def test_plan_of_a_reloaded_spec_matches() -> None:
    spec = load_workflow(textwrap.dedent(DIAMOND))
    again = type(spec).model_validate(spec.model_dump(mode="json", by_alias=True))
    assert planner.plan(again).to_json() == planner.plan(spec).to_json()
