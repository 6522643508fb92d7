"""The reconciler's side of child workflows against real PostgreSQL and Redis (no processes):
a missing child run is created again, and a finished child whose report was lost is read back."""

from __future__ import annotations

import random
import time

import pytest
from psycopg.types.json import Jsonb

from orchestrator.children import ChildRuns
from orchestrator.engine import RunEngine
from orchestrator.keys import Keys
from orchestrator.spec import WorkflowSpec
from orchestrator.workflow import compile_workflow
from tests.e2e.conftest import Env

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

PARENT = """
name: reconcile-parent
steps:
  - {id: nap, workflow: kid, with: {n: 3}}
workflows:
  kid:
    name: kid
    inputs: {n: {type: integer, required: true}}
    steps:
      - {id: zz, handler: builtin.echo, with: {n: "${{ inputs.n }}"}}
"""


def started_parent(e2e: Env) -> RunEngine:
    """The parent's engine after its start: its `nap` step has dispatched child run PARENT.nap.1."""
    run_id = e2e.submit(PARENT, check_handlers=False)
    [stored] = e2e.store.load_runs([run_id])
    engine = RunEngine(
        workflow=compile_workflow(WorkflowSpec.model_validate(stored.definition)),
        projection=stored.projection,
        inputs=stored.inputs,
        partition=stored.partition,
        clock=time.time,
        rng=random.Random(1),
    )
    engine.start()
    return engine


def test_missing_child_is_recreated_and_a_finished_one_is_reported(e2e: Env) -> None:
    children = ChildRuns(
        store=e2e.store,
        client=e2e.redis,
        keys=Keys(e2e.settings.namespace),
        partitions=e2e.settings.coordinator.partitions,
    )
    engine = started_parent(e2e)
    child_id = f"{engine.run.run_id}.nap.1"

    # The coordinator died between its commit and the child's creation.
    assert children.reconcile([engine]) == []
    child = e2e.run(child_id)
    assert child["status"] == "pending"
    assert child["parent_run_id"] == engine.run.run_id
    assert child["inputs"] == {"n": 3}
    assert children.reconcile([engine]) == []  # idempotent: still one child
    with e2e.store.connection() as conn:
        rows = conn.execute(
            "SELECT run_id FROM workflow_runs WHERE parent_run_id = %s", (engine.run.run_id,)
        ).fetchall()
    assert [r["run_id"] for r in rows] == [child_id]

    # The child finished, but its report to the parent was lost: the reconciler reads it back.
    with e2e.store.connection() as conn:
        conn.execute(
            "UPDATE workflow_runs SET status = 'succeeded', state = %s WHERE run_id = %s",
            (Jsonb({"workflow": "kid", "outputs": {"zz": {"n": 3}}}), child_id),
        )
    [result] = children.reconcile([engine])
    assert (result.run, result.step, result.attempt, result.status) == (engine.run.run_id, "nap", 1, "succeeded")
    assert result.output == {"zz": {"n": 3}}
    assert engine.on_result(result)
    assert engine.run.steps["nap"].output == {"zz": {"n": 3}}
    assert not engine.on_result(result)  # a second report (the real one, late) is fenced
