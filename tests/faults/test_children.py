"""Child workflows across a coordinator crash (docs/reliability.md 5 applied to hierarchical steps):
a parent whose dispatch of a child was committed, or not, gets exactly one child run and finishes."""

from __future__ import annotations

import time

import pytest

from tests.faults.harness import FaultEnv
from tests.faults.invariants import (
    check_applied_once,
    check_dead_letters,
    check_effectively_once,
    check_event_logs,
    check_nothing_stranded,
    report,
    wait_terminal,
)

pytestmark = [pytest.mark.faults, pytest.mark.integration]

PARENT = """
name: crash-parent
steps:
  - {id: child, workflow: crash-kid}
  - {id: after, handler: test.witness, needs: [child], with: {value: "${{ steps.child.output.work.key }}"}}
workflows:
  crash-kid:
    name: crash-kid
    steps:
      - {id: work, handler: test.witness, with: {seconds: 0.2}}
"""


@pytest.mark.parametrize(
    ("crash_point", "recreated"),
    [
        # The parent's dispatch of the child is committed, the child run is not created yet:
        # the next coordinator's reconciler creates it (same id, so at most once).
        ("AFTER_COMMIT", True),
        # Nothing committed: the next coordinator starts the parent again and creates the child.
        ("BEFORE_COMMIT", False),
    ],
)
def test_child_run_is_created_exactly_once_across_a_coordinator_crash(
    faults: FaultEnv, crash_point: str, recreated: bool
) -> None:
    # The first dispatching batch is the parent's start, which dispatches the child run.
    victim = faults.start_coordinator(**{f"STEPPE_FAULT_CRASH_{crash_point}": "1"})
    faults.start_worker()
    faults.wait_for_workers(1)
    run_id = faults.submit(PARENT)
    assert victim.wait(timeout=20) == 137, "the crash point was never reached"
    crashed = time.monotonic()
    child_id = f"{run_id}.child.1"
    with faults.store.connection() as conn:
        assert conn.execute("SELECT 1 FROM workflow_runs WHERE run_id = %s", (child_id,)).fetchone() is None
    faults.start_coordinator()
    doc = wait_terminal(faults, [run_id], deadline=30)[run_id]
    recovery_s = time.monotonic() - crashed

    assert doc["status"] == "succeeded", faults.log_events("run_finished")
    assert doc["steps"]["child"]["detail"]["child_run"] == child_id
    assert doc["outputs"]["after"]["value"] == f"{child_id}/work"  # the child's output reached the parent
    with faults.store.connection() as conn:
        children = conn.execute("SELECT run_id FROM workflow_runs WHERE parent_run_id = %s", (run_id,)).fetchall()
    assert [c["run_id"] for c in children] == [child_id]
    assert bool(faults.log_events("child_runs_recreated")) is recreated
    keys = [f"{child_id}/work", f"{run_id}/after"]
    once = check_effectively_once(faults, keys, injected=0)
    check_applied_once(faults, [run_id, child_id])
    check_event_logs(faults, [run_id, child_id])
    check_nothing_stranded(faults)
    check_dead_letters(faults, [])
    report(
        f"child-run-{crash_point.lower()}",
        recovery_s=round(recovery_s, 2),
        child_runs=len(children),
        duplicate_calls=once.duplicates,
    )
