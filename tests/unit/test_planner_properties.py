"""Properties of planning random DAGs: waves respect edges, cycles are found, plans are deterministic."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator import planner
from orchestrator.errors import SpecValidationError
from orchestrator.spec import load_workflow

BOUNDED = settings(max_examples=100, deadline=None)
ID = st.from_regex(r"[a-z_][a-z0-9_-]{0,6}", fullmatch=True)


@st.composite
def dags(draw: st.DrawFn, min_size: int = 1) -> dict[str, list[str]]:
    """{step: needs}, with ids in a random order and needs drawn from earlier steps only."""
    ids = draw(st.lists(ID, min_size=min_size, max_size=30, unique=True))
    needs: dict[str, list[str]] = {}
    for i, step in enumerate(ids):
        earlier = ids[:i]
        needs[step] = draw(st.lists(st.sampled_from(earlier), max_size=3, unique=True)) if earlier else []
    return needs


def document(needs: dict[str, list[str]], order: list[str] | None = None) -> str:
    steps = [{"id": step, "handler": "builtin.noop", "needs": needs[step]} for step in order or list(needs)]
    return json.dumps({"name": "prop", "steps": steps})  # JSON is YAML


def is_cycle(path: list[str], needs: dict[str, list[str]]) -> bool:
    closed = len(path) >= 2 and path[0] == path[-1]
    return closed and all(a in needs[b] for a, b in itertools.pairwise(path))


@BOUNDED
@given(dags())
def test_waves_respect_every_edge(needs: dict[str, list[str]]) -> None:
    plan = planner.plan(load_workflow(document(needs)))
    wave_of = {step: i for i, wave in enumerate(plan.waves) for step in wave}
    assert sorted(wave_of) == sorted(needs)
    assert sum(len(wave) for wave in plan.waves) == len(needs)
    for step, deps in needs.items():
        for dep in deps:
            assert wave_of[dep] < wave_of[step]
        # Generations: a step sits right after its latest dependency.
        assert wave_of[step] == (max(wave_of[d] for d in deps) + 1 if deps else 0)
    assert all(wave == sorted(wave) for wave in plan.waves)
    assert len(plan.edges) == sum(len(deps) for deps in needs.values())


@BOUNDED
@given(dags())
def test_critical_path_is_a_longest_chain(needs: dict[str, list[str]]) -> None:
    plan = planner.plan(load_workflow(document(needs)))
    path = plan.critical_path
    assert all(a in needs[b] for a, b in itertools.pairwise(path))
    assert len(path) == len(plan.waves)  # unit weights: the longest chain spans every wave
    assert plan.critical_length == len(path)


@BOUNDED
@given(dags(min_size=2), st.data())
def test_every_injected_cycle_is_found_and_printed_as_a_path(needs: dict[str, list[str]], data: Any) -> None:
    members = data.draw(st.lists(st.sampled_from(list(needs)), min_size=1, max_size=5, unique=True))
    cyclic = {step: list(deps) for step, deps in needs.items()}
    for before, after in zip(members, members[1:] + members[:1], strict=True):
        if before not in cyclic[after]:
            cyclic[after].append(before)
    with pytest.raises(SpecValidationError) as info:
        load_workflow(document(cyclic))
    reported = [p.message for p in info.value.problems if p.message.startswith("dependency cycle: ")]
    assert reported
    paths = [message.removeprefix("dependency cycle: ").split(" (")[0].split(" -> ") for message in reported]
    assert all(is_cycle(path, cyclic) for path in paths)
    assert any(set(path) & set(members) for path in paths)
    graph_cycles = planner.find_cycles(planner.graph_from_needs(cyclic))
    assert [" -> ".join(c) for c in graph_cycles] == [" -> ".join(p) for p in paths]


@BOUNDED
@given(dags(), st.randoms(use_true_random=False))
def test_plans_are_deterministic(needs: dict[str, list[str]], rng: Any) -> None:
    first = planner.plan(load_workflow(document(needs))).to_json()
    assert planner.plan(load_workflow(document(needs))).to_json() == first
    order = list(needs)
    rng.shuffle(order)
    shuffled = planner.plan(load_workflow(document(needs, order)))
    assert shuffled.waves == first["waves"]
    assert shuffled.critical_path == first["critical_path"]
