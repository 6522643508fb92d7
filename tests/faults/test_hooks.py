"""Post/session hooks across a coordinator crash (docs/reliability.md 5 applied to hooks): an execution
committed with its triggering event but never published, or a retry scheduled but not yet sent,
runs after the next coordinator starts — once."""

from __future__ import annotations

import time

import pytest

from tests.faults.harness import FaultEnv
from tests.faults.invariants import check_event_logs, check_nothing_stranded, report, wait_terminal
from tests.helpers import assert_eventually

pytestmark = [pytest.mark.faults, pytest.mark.integration]

# One step, then the session hook on the run's end: the second dispatching batch is the one that
# commits `run.succeeded` and the hook execution it triggers.
FINISHED_HOOK = """
name: crash-hooked
steps:
  - {id: a, handler: test.witness}
hooks:
  - {name: done, kind: session, on: [run.finished], handler: test.witness, with: {value: "${{ run.id }}"}}
"""

# The hook fails once (retryable), so its second attempt is a scheduled retry.
FLAKY_HOOK = """
name: crash-flaky-hook
steps:
  - {id: a, handler: test.witness}
hooks:
  - {name: flaky, kind: session, on: [run.finished], handler: test.flaky_once}
"""


def _hook_rows(faults: FaultEnv, run_id: str) -> list[dict]:
    with faults.store.connection() as conn:
        return conn.execute(
            "SELECT step_key, attempt, status, error FROM hook_executions WHERE run_id = %s ORDER BY step_key",
            (run_id,),
        ).fetchall()


def test_hook_committed_but_never_published_runs_after_the_restart(faults: FaultEnv) -> None:
    victim = faults.start_coordinator(STEPPE_FAULT_CRASH_AFTER_COMMIT="2")
    faults.start_worker(queues=["default", "hooks"])
    faults.wait_for_workers(1)
    run_id = faults.submit(FINISHED_HOOK)
    assert victim.wait(timeout=20) == 137, "the crash point was never reached"
    crashed = time.monotonic()
    assert faults.run(run_id)["status"] == "succeeded"  # committed with the hook execution...
    assert [r["status"] for r in _hook_rows(faults, run_id)] == ["pending"]
    hook_calls = lambda: {k: v for k, v in faults.witness("calls").items() if k.startswith(f"{run_id}/hook:")}  # noqa: E731
    assert hook_calls() == {}  # ...which was never published

    faults.start_coordinator()
    assert_eventually(lambda: list(hook_calls().values()) == [1], timeout=30, message=lambda: str(hook_calls()))
    recovery_s = time.monotonic() - crashed
    assert_eventually(
        lambda: [r["status"] for r in _hook_rows(faults, run_id)] == ["succeeded"],
        timeout=15,
        message=lambda: str(_hook_rows(faults, run_id)),
    )
    assert faults.log_events("steps_republished"), "the reconciler should say it republished the hook"
    time.sleep(1.0)  # a second execution would show up here
    assert list(hook_calls().values()) == [1]
    wait_terminal(faults, [run_id], deadline=5)
    check_event_logs(faults, [run_id])
    check_nothing_stranded(faults, queues=("default", "hooks"))
    report("hook-after-commit", recovery_s=round(recovery_s, 2), hook_executions=sum(hook_calls().values()))


def test_scheduled_hook_retry_survives_a_coordinator_restart(faults: FaultEnv) -> None:
    first = faults.start_coordinator()
    faults.start_worker(queues=["default", "hooks"])
    faults.wait_for_workers(1)
    run_id = faults.submit(FLAKY_HOOK)
    # The first attempt fails; its retry is written (attempt 2, due in ~1 s) before it is sent.
    assert_eventually(
        lambda: [(r["attempt"], r["status"]) for r in _hook_rows(faults, run_id)] == [(2, "pending")],
        timeout=20,
        interval=0.02,
        message=lambda: str(_hook_rows(faults, run_id)),
    )
    first.kill()
    first.wait()
    faults.start_coordinator()
    assert_eventually(
        lambda: [(r["attempt"], r["status"]) for r in _hook_rows(faults, run_id)] == [(2, "succeeded")],
        timeout=30,
        message=lambda: str(_hook_rows(faults, run_id)),
    )
    attempts = faults.witness("flaky_attempts")
    assert sum(attempts.values()) == 2, attempts  # the failed attempt and the retry, nothing more
