"""Finding child workflows at submit, what a finished child tells its parent, and how status shows it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from orchestrator.cli.runs import status_table
from orchestrator.errors import SubmitError
from orchestrator.spec import load_workflow_file
from orchestrator.state import RunStatus
from patterns.hierarchical import collect_children, outcome, parent_of


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def load(path: Path) -> dict[str, Any]:
    return load_workflow_file(path).model_dump(mode="json", by_alias=True, exclude_none=True)


def test_children_are_found_beside_the_parent_recursively(tmp_path: Path) -> None:
    parent = write(tmp_path / "p.yaml", "name: p\nsteps:\n  - {id: a, workflow: mid}\n")
    write(tmp_path / "mid.yaml", "name: mid\nsteps:\n  - {id: b, workflow: leaf}\n  - {id: c, workflow: mid}\n")
    write(tmp_path / "leaf.yml", "name: leaf\nsteps:\n  - {id: d, handler: builtin.noop}\n")
    found = collect_children(load(parent), base_dir=tmp_path, load=load)
    assert sorted(found) == ["leaf", "mid"]
    assert found["leaf"]["steps"][0]["handler"] == "builtin.noop"


def test_search_path_and_inline_definitions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    write(shared / "kid.yaml", "name: kid\nsteps:\n  - {id: x, handler: builtin.echo}\n")
    monkeypatch.setenv("STEPPE_WORKFLOW_PATH", str(shared))
    document = {
        "name": "p",
        "steps": [{"id": "a", "workflow": "kid"}, {"id": "b", "workflow": "inline"}],
        "workflows": {"inline": {"name": "inline", "steps": [{"id": "y", "handler": "builtin.noop"}]}},
    }
    found = collect_children(document, base_dir=None, load=load)
    assert sorted(found) == ["inline", "kid"]


def test_a_missing_or_misnamed_child_is_a_clear_submit_error(tmp_path: Path) -> None:
    document = {"name": "p", "steps": [{"id": "a", "workflow": "ghost"}]}
    with pytest.raises(SubmitError, match=r"step 'a' runs child workflow 'ghost', which was not found.*ghost\.yaml"):
        collect_children(document, base_dir=tmp_path, load=load)
    write(tmp_path / "ghost.yaml", "name: spirit\nsteps:\n  - {id: x, handler: builtin.echo}\n")
    with pytest.raises(SubmitError, match="defines workflow 'spirit', not 'ghost'"):
        collect_children(document, base_dir=tmp_path, load=load)


def test_outcome_maps_a_child_status_onto_the_parent_step() -> None:
    assert parent_of("r-1.a.2.b.1") == ("r-1.a.2", "b", 1)
    assert parent_of("r-1") is None
    ok = outcome("r-1.a.2", RunStatus.SUCCEEDED, {"outputs": {"x": 1}})
    assert ok is not None
    assert (ok.run, ok.step, ok.attempt, ok.status, ok.output) == ("r-1", "a", 2, "succeeded", {"x": 1})
    permanent = outcome("r-1.a.1", RunStatus.FAILED, {"error": {"step": "s", "message": "no", "retryable": False}})
    assert permanent is not None
    assert permanent.error is not None
    assert not permanent.error.retryable
    assert outcome("r-1", RunStatus.SUCCEEDED, {}) is None


def test_status_table_shows_child_runs_votes_and_rejections() -> None:
    doc = {
        "workflow": "w",
        "run_id": "r-1",
        "status": "succeeded",
        "plan": {"waves": [["ship", "label", "draft"]]},
        "steps": {
            "ship": {
                "status": "succeeded",
                "attempts": 1,
                "output": {"ok": [1]},
                "detail": {"child_run": "r-1.ship.1"},
            },
            "label": {
                "status": "succeeded",
                "attempts": 0,
                "output": "urgent",
                "detail": {"vote": {"agreed": [0, 1, 2], "replicas": 4, "dissent": [{"replica": 3, "output": "x"}]}},
            },
            "draft": {"status": "succeeded", "attempts": 3, "output": None, "detail": {"rejections": 2}},
        },
    }
    console = Console(record=True, width=200)
    console.print(status_table(doc))
    text = console.export_text()
    assert '{"ok":[1]} (child run r-1.ship.1)' in text
    assert '"urgent" (3/4 replicas agreed; dissent: replica 3)' in text
    assert "gate rejected 2x" in text
