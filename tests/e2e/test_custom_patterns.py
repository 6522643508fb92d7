"""The map_reduce and pipeline examples end to end: expanded at submit, run by a real coordinator and
workers that have no plugin code, and rebuildable from their event logs."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.spec import load_workflow, load_workflow_file
from orchestrator.store.projections import rebuild
from tests.e2e.conftest import Env
from tests.e2e.test_execution import assert_projection_matches_log, finish

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def start(e2e: Env) -> None:
    e2e.cluster.start_coordinator()
    for _ in range(2):
        e2e.cluster.start_worker(queues=["default"], imports=["examples.text_handlers"])
    e2e.cluster.wait_for_workers(e2e.redis, 2)


def submit_example(e2e: Env, name: str, **inputs: object) -> str:
    spec = load_workflow_file(EXAMPLES / name)
    return e2e.submitter.submit(spec, inputs=inputs).run_id


def test_examples_run_to_success_and_their_projections_rebuild_from_the_log(e2e: Env) -> None:
    start(e2e)
    word_count = submit_example(e2e, "map_reduce.yaml")
    report = submit_example(e2e, "pipeline.yaml")

    doc = finish(e2e, word_count)
    assert doc["status"] == "succeeded", doc
    steps = doc["steps"]
    assert set(steps) >= {"count-map", "count", "announce"}
    assert [steps[f"count-map[{i}]"]["output"]["words"] for i in range(3)] == [9, 6, 7]
    top = [["the", 5], ["dog", 3], ["fox", 3]]
    assert steps["count"]["output"] == {"documents": 3, "words": 22, "top": top}
    assert doc["outputs"] == {"announce": {"message": "22 words in 3 documents", "top": top}}

    doc = finish(e2e, report)
    assert doc["status"] == "succeeded", doc
    assert doc["steps"]["report-clean"]["output"] == (
        "to be or not to be that is the question to sleep perchance to dream"
    )
    assert doc["steps"]["report-count"]["output"][:2] == [["to", 4], ["be", 2]]
    assert doc["outputs"] == {
        "report": {"report": "Most frequent words: to (4), be (2), dream (1)", "distinct_words": 11}
    }

    stored = e2e.queries.get_run(word_count)["definition"]
    assert all("uses" not in step for step in stored["steps"])  # coordinators never see the pattern

    for run_id in (word_count, report):
        assert_projection_matches_log(e2e, run_id)
        assert rebuild(e2e.store, run_id, write=False).matched
    output = e2e.rebuild_check()
    assert "2 run(s) checked, 0 projection(s) differ" in output


FAILING_MAP = """
name: failing-map
steps:
  - id: count
    uses: map_reduce
    retry: {max_attempts: 2, initial_delay: 100ms, backoff: fixed, jitter: false}
    with:
      items: [ok, bad, ok]
      map: {handler: builtin.fail, with: {message: "cannot read ${{ item }}", times: null}}
      reduce: {handler: builtin.echo}
  - id: after
    handler: builtin.echo
    needs: [count]
"""

FAILING_STAGE = """
name: failing-stage
steps:
  - id: chain
    uses: pipeline
    retry: {max_attempts: 1}
    with:
      input: 3
      stages:
        - {name: first, handler: builtin.echo}
        - {name: second, handler: builtin.fail, with: {message: stage two is down, retryable: false}}
        - {handler: builtin.echo}
"""


def test_a_failing_map_item_or_stage_fails_the_run_and_nothing_after_it_runs(e2e: Env) -> None:
    start(e2e)
    failing_map = e2e.submitter.submit(load_workflow(FAILING_MAP)).run_id
    failing_stage = e2e.submitter.submit(load_workflow(FAILING_STAGE)).run_id

    doc = finish(e2e, failing_map)
    assert doc["status"] == "failed", doc
    assert doc["steps"]["count-map"]["status"] == "failed"
    assert doc["steps"]["count-map[1]"]["attempts"] == 2  # the step's retry policy reached the map items
    assert "cannot read" in doc["steps"]["count-map[1]"]["error"]["message"]
    assert doc["steps"]["count"]["status"] not in {"succeeded", "running", "dispatched"}
    assert doc["steps"]["after"]["status"] not in {"succeeded", "running", "dispatched"}

    doc = finish(e2e, failing_stage)
    assert doc["status"] == "failed", doc
    assert doc["steps"]["chain-first"]["output"] == {"input": 3}
    assert doc["steps"]["chain-second"]["status"] == "failed"
    assert doc["steps"]["chain-second"]["error"]["message"] == "stage two is down"
    assert doc["steps"]["chain"]["status"] not in {"succeeded", "running", "dispatched"}

    for run_id in (failing_map, failing_stage):
        assert_projection_matches_log(e2e, run_id)
        assert rebuild(e2e.store, run_id, write=False).matched
