"""Durable waits end to end (docs/spec.md §12.1): a real coordinator and workers, real Redis and
PostgreSQL; signals and decisions sent through `Signaller` (what the CLI, API and client use) and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import pytest

from orchestrator.errors import RunNotFoundError
from orchestrator.signals import Signaller
from orchestrator.wait_errors import ApproverRefusedError, NotWaitingError, RunFinishedError
from tests.e2e.conftest import Env
from tests.e2e.test_execution import assert_projection_matches_log, finish
from tests.helpers import assert_eventually

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

REFUND = """
name: refund
on_failure: compensate
steps:
  - id: draft
    handler: test.record
    compensate: {handler: test.record}
  - id: review
    needs: [draft]
    approval: {approvers: [alice, bob]}
  - id: paid
    needs: [review]
    wait: {signal: payment-webhook}
  - id: publish
    needs: [paid]
    handler: builtin.echo
    with: {amount: "${{ steps.paid.output.amount }}", by: "${{ steps.review.output.by }}"}
"""


def signaller(e2e: Env) -> Signaller:
    return Signaller(settings=e2e.settings, store=e2e.store, client=e2e.redis)


def wait_for_step(e2e: Env, run_id: str, step: str, status: str = "waiting", timeout: float = 30.0) -> dict[str, Any]:
    def reached() -> dict[str, Any]:
        doc: dict[str, Any] | None = e2e.run(run_id)["steps"].get(step)
        return doc if doc is not None and doc["status"] == status else {}

    return assert_eventually(
        reached,
        timeout=timeout,
        message=lambda: f"step {step} of {run_id} is not {status}: {e2e.run(run_id)['steps']}\n{e2e.log()}",
    )


def cli(e2e: Env, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli.main", *args],
        env=e2e.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_approved_then_signalled_run_continues_with_the_outputs(e2e: Env) -> None:
    e2e.start(workers=1)
    run_id = e2e.submit(REFUND)
    review = wait_for_step(e2e, run_id, "review")
    assert review["detail"]["wait"]["kind"] == "approval"
    # a signal sent before its step waits is kept, then consumed
    early = signaller(e2e).signal(run_id, "payment-webhook", {"amount": 42}, idempotency_key="pay-1")
    again = signaller(e2e).signal(run_id, "payment-webhook", {"amount": 43}, idempotency_key="pay-1")
    assert again.duplicate
    assert again.signal_id == early.signal_id
    with pytest.raises(ApproverRefusedError, match="'mallory' is not an approver of step 'review'"):
        signaller(e2e).decide(run_id, "review", approve=True, by="mallory")
    with pytest.raises(NotWaitingError, match=r"step 'paid' of run .* is not waiting for an approval"):
        signaller(e2e).decide(run_id, "paid", approve=True, by="alice")
    done = cli(e2e, "approve", run_id, "review", "--by", "alice", "--comment", "looks right")
    assert done.returncode == 0, done.stdout + done.stderr
    doc = finish(e2e, run_id)
    assert doc["status"] == "succeeded", doc
    steps = doc["steps"]
    assert steps["paid"]["output"] == {"amount": 42}
    assert steps["review"]["output"]["approved"] is True
    assert steps["review"]["output"]["by"] == "alice"
    assert steps["review"]["output"]["comment"] == "looks right"
    assert steps["publish"]["output"]["amount"] == 42
    events = e2e.queries.events(run_id)
    decided = [e for e in events if e["step_key"] == "review" and e["type"] == "step.succeeded"]
    assert decided[0]["data"]["by"] == "alice"
    assert_projection_matches_log(e2e, run_id)
    # a finished run refuses signals: exit 1 saying its status; an unknown run: exit 2
    late = cli(e2e, "signal", run_id, "payment-webhook", "--data", "{}")
    assert late.returncode == 1
    assert "already succeeded" in late.stderr
    unknown = cli(e2e, "signal", "nope", "payment-webhook")
    assert unknown.returncode == 2
    assert "no run 'nope'" in unknown.stderr


def test_a_rejection_fails_the_step_and_compensates(e2e: Env) -> None:
    e2e.start(workers=1)
    run_id = e2e.submit(REFUND)
    wait_for_step(e2e, run_id, "review")
    refused = cli(e2e, "reject", run_id, "review", "--comment", "no")
    assert refused.returncode == 2  # the step names its approvers: --by is needed
    assert "pass --by NAME" in refused.stderr
    signaller(e2e).decide(run_id, "review", approve=False, by="bob", comment="too much")
    doc = finish(e2e, run_id)
    assert doc["status"] == "compensated", doc
    error = doc["steps"]["review"]["error"]
    assert error["type"] == "ApprovalRejected"
    assert error["message"] == "rejected by bob: too much"
    assert doc["steps"]["draft:compensate"]["status"] == "succeeded"
    assert doc["steps"]["paid"]["status"] == "cancelled"
    assert_projection_matches_log(e2e, run_id)


def test_sleep_fires_and_a_wait_times_out(e2e: Env) -> None:
    e2e.start(workers=1)
    started = time.time()
    sleeper = e2e.submit(
        "name: nap\nsteps:\n  - id: nap\n    sleep: 2s\n  - id: after\n    needs: [nap]\n    handler: builtin.echo\n"
    )
    waiter = e2e.submit("name: hold\nsteps:\n  - id: paid\n    wait: {signal: never, timeout: 2s}\n")
    wait_for_step(e2e, sleeper, "nap")
    doc = finish(e2e, sleeper)
    assert doc["status"] == "succeeded"
    assert time.time() - started >= 2.0
    assert doc["steps"]["nap"]["output"]["woke_at"] >= doc["steps"]["nap"]["output"]["slept_until"]
    held = finish(e2e, waiter)
    assert held["status"] == "failed"
    assert held["steps"]["paid"]["error"] == {
        "type": "WaitTimeout",
        "message": "no signal 'never' within 2s",
        "retryable": False,
    }
    for run_id in (sleeper, waiter):
        assert_projection_matches_log(e2e, run_id)


def test_cancel_releases_a_wait_and_status_shows_what_it_waits_for(e2e: Env) -> None:
    e2e.start(workers=1)
    run_id = e2e.submit("name: hold\nsteps:\n  - id: paid\n    wait: {signal: payment-webhook}\n")
    wait_for_step(e2e, run_id, "paid")
    shown = cli(e2e, "status", run_id)
    assert shown.returncode == 0, shown.stderr
    assert "signal payment-webhook" in shown.stdout
    listed = cli(e2e, "runs", "--status", "waiting", "--json")
    assert listed.returncode == 0, listed.stderr
    assert run_id in [r["run_id"] for r in json.loads(listed.stdout)]
    e2e.submitter.request(run_id, "cancel")
    doc = finish(e2e, run_id)
    assert doc["status"] == "cancelled"
    assert doc["steps"]["paid"]["status"] == "cancelled"
    with pytest.raises(RunFinishedError, match="already cancelled"):
        signaller(e2e).signal(run_id, "payment-webhook")
    with pytest.raises(RunNotFoundError):
        signaller(e2e).signal("missing", "payment-webhook")
