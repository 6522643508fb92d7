"""Handoff, swarm, hierarchical workflows and vetoing pre hooks through a real coordinator and
workers, from the runnable examples: success and failure paths, and every projection rebuilt
from its event log."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from orchestrator.errors import RunNotFoundError
from orchestrator.spec import load_workflow, load_workflow_file
from orchestrator.store.hooks import HookStore
from tests.e2e.conftest import Env
from tests.e2e.test_execution import assert_projection_matches_log, finish
from tests.helpers import assert_eventually

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def start(e2e: Env, workers: int = 2) -> None:
    e2e.cluster.start_coordinator()
    for _ in range(workers):
        e2e.cluster.start_worker(
            queues=["default", "hooks", "payments"], imports=["examples.pattern_handlers", "tests.e2e.handlers"]
        )
    e2e.cluster.wait_for_workers(e2e.redis, workers)


def example(e2e: Env, name: str, **inputs: Any) -> str:
    spec = load_workflow_file(EXAMPLES / name)
    return e2e.submitter.submit(spec, inputs=inputs, base_dir=EXAMPLES).run_id


def events(e2e: Env, run_id: str) -> list[str]:
    return [f"{r['type']}:{r['step_key'] or ''}" for r in e2e.queries.events(run_id)]


def test_handoff_gate_sends_the_draft_back_until_it_passes_or_gives_up(e2e: Env) -> None:
    start(e2e)
    approved = example(e2e, "handoff.yaml")
    rejected = example(e2e, "handoff.yaml", min_words=50)

    doc = finish(e2e, approved)
    assert doc["status"] == "succeeded", e2e.log()
    draft = doc["steps"]["draft"]
    assert draft["attempts"] == 3
    assert draft["output"]["words"] >= 8
    assert draft["output"]["after_feedback"] == "5 words; at least 8 needed"  # the gate's word reached ctx
    assert draft["detail"]["rejections"] == 2
    assert doc["outputs"]["publish"]["published"] == draft["output"]["text"]
    assert events(e2e, approved).count("step.rejected:draft") == 2

    doc = finish(e2e, rejected)
    assert doc["status"] == "failed"
    assert doc["steps"]["draft"]["error"]["type"] == "GateRejected"
    assert "rejected the output 3 time(s)" in doc["steps"]["draft"]["error"]["message"]
    assert doc["steps"]["publish"]["status"] == "cancelled"
    for run_id in (approved, rejected):
        assert_projection_matches_log(e2e, run_id)


def test_swarm_returns_the_consensus_with_dissent_or_fails_without_quorum(e2e: Env) -> None:
    start(e2e)
    agreed = example(e2e, "swarm.yaml")
    split = example(e2e, "swarm.yaml", dissenters=[0, 1])

    doc = finish(e2e, agreed)
    assert doc["status"] == "succeeded", e2e.log()
    label = doc["steps"]["label"]
    assert label["output"] == {"label": "urgent"}
    assert label["detail"]["vote"]["agreed"] == [0, 1, 2, 4]
    assert label["detail"]["vote"]["dissent"] == [{"replica": 3, "output": {"label": "routine"}}]
    assert doc["outputs"] == {"route": {"queue": "urgent"}}
    assert all(doc["steps"][f"label[{i}]"]["status"] == "succeeded" for i in range(5))

    doc = finish(e2e, split)
    assert doc["status"] == "failed"
    assert doc["steps"]["label"]["error"]["type"] == "NoQuorum"
    assert "3, 4 needed" in doc["steps"]["label"]["error"]["message"]
    for run_id in (agreed, split):
        assert_projection_matches_log(e2e, run_id)


def test_child_workflow_output_becomes_the_step_output_and_failures_escalate(e2e: Env) -> None:
    start(e2e)
    shipped = example(e2e, "fulfil-order.yaml")
    jammed = example(e2e, "fulfil-order.yaml", label_failures=9)

    doc = finish(e2e, shipped)
    assert doc["status"] == "succeeded", e2e.log()
    child_id = doc["steps"]["ship"]["detail"]["child_run"]
    child = e2e.run(child_id)
    assert child["parent_run_id"] == shipped
    assert child["workflow"] == "ship-order"
    assert child["inputs"] == {"reservation": "res-tea-2", "label_failures": 0}
    assert doc["steps"]["ship"]["output"] == child["outputs"] == {"label": {"attempts": 1}}

    doc = finish(e2e, jammed)
    assert doc["status"] == "compensated", e2e.log()
    child_id = doc["steps"]["ship"]["detail"]["child_run"]
    assert e2e.run(child_id)["status"] == "failed"
    assert doc["steps"]["ship"]["error"]["type"] == "ChildRunFailed"
    assert "label printer jammed" in doc["steps"]["ship"]["error"]["message"]
    assert doc["steps"]["reserve:compensate"]["output"] == {"released": "res-tea-2"}
    for run_id in (shipped, jammed, child_id):
        assert_projection_matches_log(e2e, run_id)


RECURSIVE = """
name: forever
steps:
  - {id: again, workflow: forever}
"""


def test_recursion_is_stopped_by_the_depth_limit(e2e: Env) -> None:
    start(e2e, workers=1)
    run_id = e2e.submit(RECURSIVE)
    doc = finish(e2e, run_id, timeout=60)
    assert doc["status"] == "failed"
    assert "child run" in doc["steps"]["again"]["error"]["message"]
    deepest = run_id + ".again.1" * 5
    error = e2e.run(deepest)["steps"]["again"]["error"]
    assert error["type"] == "ChildWorkflowError"
    assert "over the limit of 5" in error["message"]
    with pytest.raises(RunNotFoundError):
        e2e.run(deepest + ".again.1")  # the sixth level was never created


PARENT_OF_SLEEPER = """
name: parent-of-sleeper
steps:
  - {id: nap, workflow: sleeper}
workflows:
  sleeper:
    name: sleeper
    steps:
      - {id: zz, handler: builtin.sleep, with: {seconds: 30}}
"""


def test_cancelling_a_parent_cancels_its_running_child(e2e: Env) -> None:
    start(e2e, workers=1)
    run_id = e2e.submit(PARENT_OF_SLEEPER)
    child_id = f"{run_id}.nap.1"
    assert_eventually(lambda: e2e.run(child_id)["steps"]["zz"]["status"] == "running", timeout=20)
    e2e.submitter.request(run_id, "cancel")
    doc = finish(e2e, run_id, timeout=30)
    assert doc["status"] == "cancelled", e2e.log()
    assert e2e.run(child_id)["status"] == "cancelled"
    assert e2e.run(child_id)["steps"]["zz"]["status"] == "cancelled"


def test_pre_hook_annotates_or_vetoes_before_anything_is_charged(e2e: Env) -> None:
    start(e2e)
    paid = example(e2e, "guarded-payment.yaml")
    vetoed = example(e2e, "guarded-payment.yaml", amount=500)

    doc = finish(e2e, paid)
    assert doc["status"] == "succeeded", e2e.log()
    assert doc["outputs"]["pay"] == {"charged": 40, "annotations": {"budget_checked": True, "headroom": 60}}

    doc = finish(e2e, vetoed)
    assert doc["status"] == "failed"
    assert doc["steps"]["pay"]["error"]["type"] == "Vetoed"
    assert "over the limit of 100" in doc["steps"]["pay"]["error"]["message"]
    assert "step.dispatched:pay" not in events(e2e, vetoed)  # never reached a worker
    budget = {h["name"]: h for h in HookStore(e2e.store).all()}["yaml:guarded-payment:budget"]
    assert budget["trigger_count"] == 2  # each execution is recorded
    assert budget["error_count"] == 0
    for run_id in (paid, vetoed):
        assert_projection_matches_log(e2e, run_id)


def test_admin_rebuild_reproduces_every_pattern_run(e2e: Env) -> None:
    """Event sourcing: runs that exercised saga, retries, for_each, handoff, swarm, child
    workflows and pre hooks rebuild to exactly their stored projections."""
    start(e2e)
    runs = [
        example(e2e, "handoff.yaml"),
        example(e2e, "swarm.yaml", dissenters=[0, 1]),
        example(e2e, "fulfil-order.yaml", label_failures=9),
        example(e2e, "guarded-payment.yaml", amount=500),
        example(e2e, "order_saga.yaml", ship_failures=9),
        e2e.submitter.submit(load_workflow(PARENT_OF_SLEEPER.replace("30", "0.1"))).run_id,
    ]
    for run_id in runs:
        finish(e2e, run_id, timeout=60)
    output = e2e.rebuild_check()
    total = len(e2e.queries.list_runs())
    assert total >= len(runs) + 2  # the child runs are runs too
    assert f"{total} run(s) checked, 0 projection(s) differ" in output
