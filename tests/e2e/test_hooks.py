"""Hooks end to end: executed on the hooks queue, counted, never able to fail a run."""

from __future__ import annotations

import pytest

from orchestrator.store.hooks import HookStore
from tests.e2e.conftest import Env
from tests.e2e.test_execution import finish
from tests.helpers import assert_eventually

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

WORKFLOW = """
name: hooked
steps:
  - {id: a, handler: builtin.echo}
  - {id: b, handler: builtin.fail, needs: [a], with: {times: 1}, retry: {max_attempts: 2, initial_delay: 50ms}}
hooks:
  - {name: started, kind: session, on: [run.started, run.finished], handler: test.witness, with: {value: "${{ run.id }}"}}
  - {name: broken, on: [step.succeeded], handler: test.reject, with: {reason: "hook bug"}}
"""


def test_hooks_run_on_the_hooks_queue_and_are_counted(e2e: Env) -> None:
    HookStore(e2e.store).add(
        name="global-retry-watch",
        kind="post",
        events=["step.retry_scheduled"],
        handler="test.witness",
        args={"value": "retry"},
        workflow=None,
    )
    e2e.cluster.start_coordinator()
    e2e.start_worker(queues=["default", "hooks"])
    e2e.cluster.wait_for_workers(e2e.redis, 1)
    run_id = e2e.submit(WORKFLOW)
    doc = finish(e2e, run_id)
    assert doc["status"] == "succeeded", "a failing post hook must never fail the run"

    def counters() -> dict[str, tuple[int, int]]:
        return {r["name"]: (r["trigger_count"], r["error_count"]) for r in HookStore(e2e.store).all()}

    # session hook: run.started + run.finished; the failing hook: one per succeeded step (a, b, b retried → 2)
    assert_eventually(
        lambda: counters().get("yaml:hooked:started") == (2, 0), timeout=20, message=lambda: str(counters())
    )
    assert_eventually(
        lambda: counters().get("yaml:hooked:broken") == (2, 2), timeout=30, message=lambda: str(counters())
    )
    assert_eventually(
        lambda: counters().get("global-retry-watch") == (1, 0), timeout=20, message=lambda: str(counters())
    )
    last_error = next(r["last_error"] for r in HookStore(e2e.store).all() if r["name"] == "yaml:hooked:broken")
    assert "hook bug" in last_error
    calls = e2e.witness("calls")
    assert len([k for k in calls if k.startswith(f"{run_id}/hook:")]) == 3
    # Every execution is a durable row that ends with its outcome (none left pending).
    with e2e.store.connection() as conn:
        rows = conn.execute("SELECT status FROM hook_executions WHERE run_id = %s", (run_id,)).fetchall()
    assert sorted(r["status"] for r in rows) == ["failed", "failed", "succeeded", "succeeded", "succeeded"]
    # Hooks are not part of the run: its steps and event log know nothing of them.
    assert set(doc["steps"]) == {"a", "b"}
    assert "hook_failed" in e2e.log()


def test_admin_rebuild_restores_a_damaged_projection(e2e: Env) -> None:
    from orchestrator.store.projections import rebuild

    e2e.start(workers=1)
    run_id = e2e.submit("""
name: rebuildable
on_failure: compensate
steps:
  - {id: a, handler: builtin.echo, with: {x: 1}, compensate: {handler: builtin.echo}}
  - {id: each, handler: builtin.echo, needs: [a], for_each: [1, 2], with: {v: "${{ item }}"}}
  - {id: b, handler: builtin.fail, needs: [each], with: {times: 1}, retry: {max_attempts: 2, initial_delay: 50ms}}
  - {id: c, handler: builtin.fail, needs: [b], with: {retryable: false}}
""")
    doc = finish(e2e, run_id)
    assert doc["status"] == "compensated"
    assert rebuild(e2e.store, run_id, write=False).matched
    with e2e.store.connection() as conn:
        conn.execute("UPDATE workflow_steps SET status = 'pending', output = NULL WHERE run_id = %s", (run_id,))
        conn.execute("UPDATE workflow_runs SET status = 'running' WHERE run_id = %s", (run_id,))
    assert not rebuild(e2e.store, run_id, write=False).matched
    assert rebuild(e2e.store, run_id).written
    assert e2e.run(run_id)["steps"] == doc["steps"]
    assert e2e.run(run_id)["status"] == "compensated"
    assert rebuild(e2e.store, run_id, write=False).matched
