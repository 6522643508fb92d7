"""The plan of a workflow (pure NetworkX, no I/O): its graph, parallel waves, critical path, cycles.

Edges point from a dependency to its dependent (`a -> b` when b needs a). Waves are the
topological generations of that graph, with ids sorted inside each wave, so a plan depends
only on the graph and never on the order steps are written in. At run time the coordinator
dispatches a step as soon as its own dependencies succeed; waves describe the shape of the
work (parallelism, per-queue width) rather than a schedule. A `for_each` step is a dynamic
fan-out: one node in the plan that becomes one task per item at run time.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import networkx as nx

if TYPE_CHECKING:
    from rich.console import RenderableType

    from orchestrator.spec.model import WorkflowSpec

Edge = tuple[str, str]
UNIT_WEIGHT = 1.0  # the weight of a step without an `estimate`


@dataclass(frozen=True)
class GraphAnalysis:
    """A dependency graph with its waves, or the cycles that prevent them."""

    graph: nx.DiGraph
    waves: list[list[str]] | None
    cycles: list[list[str]]


@dataclass(frozen=True, eq=False)
class Plan:
    """What `steppe plan` shows and the coordinator stores next to a run."""

    workflow: str
    nodes: list[str]
    edges: list[Edge]
    waves: list[list[str]]
    critical_path: list[str]
    critical_length: float  # seconds when steps have estimates; one unit per step otherwise
    queue_width: dict[str, int]
    fan_out: frozenset[str]
    graph: nx.DiGraph = field(repr=False)
    waits: dict[str, str] = field(default_factory=dict)  # step id → WAIT_MARKS of a step no worker runs

    def ancestors(self, step_id: str) -> set[str]:
        """Every step that must succeed before `step_id` can run."""
        return set(nx.ancestors(self.graph, step_id))

    def descendants(self, step_id: str) -> set[str]:
        """Every step that (transitively) needs `step_id`."""
        return set(nx.descendants(self.graph, step_id))

    def to_json(self) -> dict[str, Any]:
        """The `steppe plan --format json` document (docs/spec.md §8)."""
        return {
            "nodes": len(self.nodes),
            "edges": len(self.edges),
            "waves": self.waves,
            "critical_path": self.critical_path,
        }


def graph_from_needs(needs: Mapping[str, Iterable[str]]) -> nx.DiGraph:
    """The dependency graph of `{step: [steps it needs]}`; nodes keep the mapping's order."""
    graph = nx.DiGraph()
    graph.add_nodes_from(needs)
    graph.add_edges_from((dep, step) for step, deps in needs.items() for dep in deps)
    return graph


def build_graph(spec: WorkflowSpec) -> nx.DiGraph:
    """The dependency graph of a spec; nodes carry `queue`, `weight` and `fan_out` attributes."""
    graph = graph_from_needs({step.id: step.needs for step in spec.steps})
    _annotate(graph, spec)
    return graph


def _annotate(graph: nx.DiGraph, spec: WorkflowSpec) -> None:
    nodes = graph.nodes
    for step in spec.steps:
        attrs = nodes[step.id]
        attrs["queue"] = spec.queue_of(step)
        attrs["weight"] = step.estimate if step.estimate is not None else UNIT_WEIGHT
        attrs["fan_out"] = step.for_each is not None
        attrs["waits"] = step.wait_kind is not None


def analyse(graph: nx.DiGraph) -> GraphAnalysis:
    """Waves of an acyclic graph, else one cycle per strongly connected component."""
    try:
        waves = [sorted(generation) for generation in nx.topological_generations(graph)]
    except nx.NetworkXUnfeasible:
        return GraphAnalysis(graph, None, find_cycles(graph))
    return GraphAnalysis(graph, waves, [])


def find_cycles(graph: nx.DiGraph) -> list[list[str]]:
    """One cycle per tangle of steps, each as a closed path `[a, b, c, a]` (a -> b: b needs a),
    starting at its earliest node in graph order; self-loops are `[a, a]`."""
    order = {node: i for i, node in enumerate(graph)}
    cycles: list[list[str]] = []
    for component in nx.strongly_connected_components(graph):
        start = min(component, key=order.__getitem__)
        if len(component) == 1 and not graph.has_edge(start, start):
            continue
        cycles.append(_cycle_through(graph.subgraph(component), start))
    return sorted(cycles, key=lambda cycle: order[cycle[0]])


def find_cycle(graph: nx.DiGraph) -> list[str] | None:
    """The first cycle `find_cycles` reports, or None for a DAG."""
    cycles = find_cycles(graph)
    return cycles[0] if cycles else None


def _cycle_through(component: nx.DiGraph, start: str) -> list[str]:
    """A shortest cycle through `start` inside one strongly connected component."""
    if component.has_edge(start, start):
        return [start, start]
    back = min(component.predecessors(start))  # the edge back -> start closes the cycle
    path: list[str] = nx.shortest_path(component, start, back)
    return [*path, start]


def unreachable(graph: nx.DiGraph, waves: list[list[str]], queries: Iterable[Edge]) -> set[Edge]:
    """The `(ancestor, step)` queries where `ancestor` is not an ancestor of `step`.

    One pass in topological order carries, for every node, a bitset of the queried ancestors
    it has: linear in the graph, and in the number of distinct ancestors queried, instead of
    one graph search per query.
    """
    queries = list(queries)
    if not queries:
        return set()
    bits = {target: 1 << i for i, target in enumerate(dict.fromkeys(target for target, _ in queries))}
    have: dict[str, int] = {}
    pred = graph.pred
    for wave in waves:
        for node in wave:
            mask = 0
            for parent in pred[node]:
                mask |= have[parent] | bits.get(parent, 0)
            have[node] = mask
    return {(target, step) for target, step in queries if not have[step] & bits[target]}


def skip_closure(graph: nx.DiGraph, skipped: Iterable[str]) -> set[str]:
    """The skipped steps and every step that depends on them (dependents of a skipped step skip)."""
    result = set(skipped)
    frontier = list(result)
    succ = graph.succ
    while frontier:
        for child in succ[frontier.pop()]:
            if child not in result:
                result.add(child)
                frontier.append(child)
    return result


def critical_path(graph: nx.DiGraph, waves: list[list[str]]) -> tuple[list[str], float]:
    """The heaviest path by node `weight` (UNIT_WEIGHT when absent); ties go to the smaller id."""
    best: dict[str, float] = {}
    via: dict[str, str | None] = {}
    pred = graph.pred
    nodes = graph.nodes
    for wave in waves:
        for node in wave:
            parent: str | None = None
            length = 0.0
            for candidate in pred[node]:
                value = best[candidate]
                if parent is None or value > length or (value == length and candidate < parent):
                    parent, length = candidate, value
            best[node] = length + nodes[node].get("weight", UNIT_WEIGHT)
            via[node] = parent
    if not best:
        return [], 0.0
    end = min(best, key=lambda node: (-best[node], node))
    path: list[str] = []
    cursor: str | None = end
    while cursor is not None:
        path.append(cursor)
        cursor = via[cursor]
    return path[::-1], best[end]


def plan(spec: WorkflowSpec) -> Plan:
    """The plan of a validated spec (its graph must be acyclic)."""
    from orchestrator.spec.loader import gc_paused

    with gc_paused():
        return _plan(spec)


def _plan(spec: WorkflowSpec) -> Plan:
    analysis: GraphAnalysis | None = spec._analysis  # kept by validation
    if analysis is None or analysis.waves is None:
        analysis = analyse(graph_from_needs({step.id: step.needs for step in spec.steps}))
        if analysis.waves is None:
            cycle = " -> ".join(analysis.cycles[0])
            raise ValueError(f"the workflow has a dependency cycle ({cycle}); validate it first")
    graph, waves = analysis.graph, analysis.waves
    _annotate(graph, spec)
    path, length = critical_path(graph, waves)
    width: dict[str, int] = {}
    nodes = graph.nodes
    for wave in waves:
        for queue, count in Counter(nodes[node]["queue"] for node in wave if not nodes[node]["waits"]).items():
            width[queue] = max(width.get(queue, 0), count)
    return Plan(
        workflow=spec.name,
        nodes=list(graph.nodes),
        edges=[(need, step.id) for step in spec.steps for need in step.needs],
        waves=waves,
        critical_path=path,
        critical_length=length,
        queue_width=dict(sorted(width.items())),
        fan_out=frozenset(step.id for step in spec.steps if step.for_each is not None),
        graph=graph,
        waits={step.id: WAIT_MARKS[step.wait_kind] for step in spec.steps if step.wait_kind is not None},
    )


# --- renderers ------------------------------------------------------------------------------

# How a plan marks the steps that wait instead of running a handler (docs/spec.md §12.1).
WAIT_MARKS = {"wait": "⏸ signal", "approval": "⏸ approval", "sleep": "⏲ sleep"}

TABLE_WAVE_LIMIT = 12  # steps listed per wave in the table; the rest are counted
TABLE_WAVES_SHOWN = 40  # waves listed in the table: the first and last ones of a deep plan
TABLE_PATH_LIMIT = 24


def render_json(plan: Plan) -> str:
    return json.dumps(plan.to_json())


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_dot(plan: Plan) -> str:
    """Graphviz: one rank per wave, fan-out steps as stacked boxes, the critical path in red."""
    critical = set(itertools.pairwise(plan.critical_path))
    lines = [f"digraph {_quote(plan.workflow)} {{", "  rankdir=LR;", "  node [shape=box];"]
    for wave in plan.waves:
        members = " ".join(_quote(node) for node in wave)
        lines.append(f"  {{ rank=same; {members} }}")
    for node in plan.nodes:
        if node in plan.fan_out:
            lines.append(f"  {_quote(node)} [shape=box3d, label={_quote(node + ' (for each)')}];")
        elif node in plan.waits:
            lines.append(f"  {_quote(node)} [shape=octagon, label={_quote(node + ' ' + plan.waits[node])}];")
    for a, b in plan.edges:
        style = " [color=red, penwidth=2]" if (a, b) in critical else ""
        lines.append(f"  {_quote(a)} -> {_quote(b)}{style};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_mermaid(plan: Plan) -> str:
    """Mermaid flowchart: fan-out steps as subroutine boxes, the critical path highlighted."""
    ids = {node: f"n{i}" for i, node in enumerate(plan.nodes)}
    lines = ["flowchart LR"]
    for node in plan.nodes:
        if node in plan.fan_out:
            lines.append(f'  {ids[node]}[["{node} (for each)"]]')
        elif node in plan.waits:
            lines.append(f'  {ids[node]}{{{{"{node} {plan.waits[node]}"}}}}')
        else:
            lines.append(f'  {ids[node]}["{node}"]')
    lines.extend(f"  {ids[a]} --> {ids[b]}" for a, b in plan.edges)
    if plan.critical_path:
        lines.append("  classDef critical stroke:#d33,stroke-width:3px;")
        lines.append("  class " + ",".join(ids[node] for node in plan.critical_path) + " critical;")
    return "\n".join(lines) + "\n"


def _shorten(items: list[str], limit: int) -> list[str]:
    if len(items) <= limit:
        return items
    half = limit // 2
    return [*items[:half], f"… {len(items) - 2 * half} more …", *items[-half:]]


def _shown(plan: Plan, node: str) -> str:
    if node in plan.fan_out:
        return f"{node} ⋔"
    if node in plan.waits:
        return f"{node} {plan.waits[node]}"
    return node


def render_table(plan: Plan) -> RenderableType:
    """A rich view: waves and their steps, the critical path, and the widest wave per queue."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    waves = Table(title=f"{plan.workflow}: {len(plan.nodes)} steps, {len(plan.edges)} edges, {len(plan.waves)} waves")
    waves.add_column("wave", justify="right")
    waves.add_column("width", justify="right")
    waves.add_column("steps (⋔ = for_each fan-out, ⏸ = waits for a signal or approval, ⏲ = sleeps)")
    count = len(plan.waves)
    half = TABLE_WAVES_SHOWN // 2
    for i, wave in enumerate(plan.waves, 1):
        if count > TABLE_WAVES_SHOWN and half < i <= count - half:
            if i == half + 1:
                waves.add_row("…", "", f"{count - 2 * half} more waves (see --format json)")
            continue
        shown = [_shown(plan, node) for node in wave[:TABLE_WAVE_LIMIT]]
        more = f" … and {len(wave) - TABLE_WAVE_LIMIT} more" if len(wave) > TABLE_WAVE_LIMIT else ""
        waves.add_row(str(i), str(len(wave)), ", ".join(shown) + more)
    path = " → ".join(_shorten(plan.critical_path, TABLE_PATH_LIMIT))
    critical = Text.assemble(
        ("critical path", "bold"), f" ({len(plan.critical_path)} steps, length {plan.critical_length:g}): ", path
    )
    queues = Table(title="widest wave per queue")
    queues.add_column("queue")
    queues.add_column("max parallel steps", justify="right")
    for queue, width in plan.queue_width.items():
        queues.add_row(queue, str(width))
    return Group(waves, critical, queues)
