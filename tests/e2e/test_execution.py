"""The execution core end to end: real coordinator and worker subprocesses, real Redis and PostgreSQL."""

from __future__ import annotations

import signal
import time

import pytest

from orchestrator.errors import SubmitError
from orchestrator.state import fold
from orchestrator.store.queries import events_from_rows
from tests.e2e.conftest import Env
from tests.helpers import assert_eventually

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

TERMINAL = {"succeeded", "failed", "cancelled", "compensated", "compensation_failed"}


def finish(e2e: Env, run_id: str, timeout: float = 30.0) -> dict:
    return assert_eventually(
        lambda: (doc := e2e.run(run_id))["status"] in TERMINAL and doc,
        timeout=timeout,
        message=lambda: f"run {run_id} did not finish; cluster log:\n{e2e.log()}",
    )


def assert_projection_matches_log(e2e: Env, run_id: str) -> None:
    """I3: a gapless log whose fold is exactly the stored projection."""
    rows = e2e.queries.events(run_id)
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))
    folded = fold(run_id, events_from_rows(rows)).to_json()
    stored = e2e.queries.stored_projection(run_id).to_json()
    assert folded == stored


DIAMOND = """
name: diamond
inputs:
  x: {type: integer, required: true}
steps:
  - id: a
    handler: test.add
    with: {a: "${{ inputs.x }}", b: 1}
  - id: b
    handler: test.add
    needs: [a]
    with: {a: "${{ steps.a.output.sum }}", b: 10}
  - id: c
    handler: builtin.echo
    needs: [a]
    with: {parts: "${{ steps.a.output.parts }}", label: "sum is ${{ steps.a.output.sum }}"}
  - id: d
    handler: builtin.echo
    needs: [b, c]
    with: {total: "${{ steps.b.output.sum }}", parts: "${{ steps.c.output.parts }}", label: "${{ steps.c.output.label }}"}
"""


def test_diamond_passes_typed_outputs_through_templates(e2e: Env) -> None:
    e2e.start()
    run_id = e2e.submit(DIAMOND, {"x": 4})
    doc = finish(e2e, run_id)
    assert doc["status"] == "succeeded", doc
    assert doc["steps"]["d"]["output"] == {"total": 15, "parts": [4, 1], "label": "sum is 5"}
    assert doc["outputs"] == {"d": {"total": 15, "parts": [4, 1], "label": "sum is 5"}}
    assert_projection_matches_log(e2e, run_id)


RETRY = """
name: retrying
steps:
  - id: flaky
    handler: builtin.fail
    with: {times: 2, message: transient}
    retry: {max_attempts: 3, initial_delay: 100ms, backoff: fixed, jitter: false}
"""


def test_retries_then_success(e2e: Env) -> None:
    e2e.start(workers=1)
    run_id = e2e.submit(RETRY)
    doc = finish(e2e, run_id)
    assert doc["status"] == "succeeded"
    assert doc["steps"]["flaky"]["attempts"] == 3
    assert doc["steps"]["flaky"]["output"] == {"attempts": 3}
    types = [e["type"] for e in e2e.queries.events(run_id)]
    assert types.count("step.retry_scheduled") == 2
    assert_projection_matches_log(e2e, run_id)


def test_non_retryable_failure_fails_the_run_without_retries(e2e: Env) -> None:
    e2e.start(workers=1)
    run_id = e2e.submit("""
name: doomed
steps:
  - id: first
    handler: builtin.echo
  - id: bad
    handler: builtin.fail
    needs: [first]
    with: {retryable: false, message: card declined}
    retry: {max_attempts: 5}
  - id: never
    handler: builtin.echo
    needs: [bad]
""")
    doc = finish(e2e, run_id)
    assert doc["status"] == "failed"
    assert doc["steps"]["bad"]["attempts"] == 1
    assert doc["steps"]["bad"]["error"]["message"] == "card declined"
    assert doc["steps"]["never"]["status"] == "cancelled"
    assert doc["error"]["step"] == "bad"
    assert_projection_matches_log(e2e, run_id)


def test_timeout_cancels_the_handler_and_retries_per_policy(e2e: Env) -> None:
    e2e.start(workers=1)
    run_id = e2e.submit("""
name: slow
steps:
  - id: sleepy
    handler: builtin.sleep
    with: {seconds: 30}
    timeout: 300ms
    retry: {max_attempts: 2, initial_delay: 50ms}
""")
    doc = finish(e2e, run_id, timeout=20)
    assert doc["status"] == "failed"
    step = doc["steps"]["sleepy"]
    assert step["attempts"] == 2
    assert step["error"]["type"] == "StepTimeoutError"


def test_when_false_skips_the_step_and_its_dependents(e2e: Env) -> None:
    e2e.start(workers=1)
    run_id = e2e.submit("""
name: conditional
inputs:
  express: {type: boolean, default: false}
steps:
  - id: always
    handler: builtin.echo
  - id: ship
    handler: builtin.echo
    needs: [always]
    when: "${{ inputs.express }}"
  - id: notify
    handler: builtin.echo
    needs: [ship]
  - id: other
    handler: builtin.echo
    needs: [always]
""")
    doc = finish(e2e, run_id)
    assert doc["status"] == "succeeded"
    assert doc["steps"]["ship"]["status"] == "skipped"
    assert doc["steps"]["notify"]["status"] == "skipped"
    assert doc["steps"]["other"]["status"] == "succeeded"


def test_for_each_fans_out_and_gathers_in_item_order(e2e: Env) -> None:
    e2e.start()
    run_id = e2e.submit(
        """
name: fan
inputs:
  items: {type: array, required: true}
steps:
  - id: each
    handler: test.add
    for_each: "${{ inputs.items }}"
    with: {a: "${{ item }}", b: 100}
  - id: total
    handler: builtin.echo
    needs: [each]
    with: {results: "${{ steps.each.output }}"}
""",
        {"items": [5, 1, 4, 2, 3, 9, 7]},
    )
    doc = finish(e2e, run_id)
    assert doc["status"] == "succeeded"
    sums = [r["sum"] for r in doc["steps"]["total"]["output"]["results"]]
    assert sums == [105, 101, 104, 102, 103, 109, 107]
    assert_projection_matches_log(e2e, run_id)


def test_cancel_stops_a_running_workflow(e2e: Env) -> None:
    e2e.start(workers=1)
    run_id = e2e.submit("""
name: long
steps:
  - id: wait
    handler: builtin.sleep
    with: {seconds: 60}
  - id: after
    handler: builtin.echo
    needs: [wait]
""")
    assert_eventually(lambda: e2e.run(run_id)["steps"].get("wait", {}).get("status") == "running", timeout=15)
    e2e.submitter.request(run_id, "cancel")
    doc = finish(e2e, run_id, timeout=15)
    assert doc["status"] == "cancelled"
    assert doc["steps"]["wait"]["status"] == "cancelled"
    assert doc["steps"]["after"]["status"] == "cancelled"
    assert_projection_matches_log(e2e, run_id)


def test_retry_resumes_from_failed_steps_and_keeps_outputs(e2e: Env) -> None:
    e2e.start(workers=1)
    run_id = e2e.submit("""
name: resumable
steps:
  - id: first
    handler: test.witness
    with: {value: 1}
  - id: second
    handler: builtin.fail
    needs: [first]
    with: {times: 1, retryable: false}
""")
    doc = finish(e2e, run_id)
    assert doc["status"] == "failed"
    first_output = doc["steps"]["first"]["output"]
    e2e.submitter.request(run_id, "retry")
    assert_eventually(lambda: e2e.run(run_id)["status"] == "succeeded", timeout=20, message=e2e.log)
    doc = e2e.run(run_id)
    assert doc["steps"]["first"]["output"] == first_output
    assert doc["steps"]["first"]["attempts"] == 1
    assert doc["steps"]["second"]["output"] == {"attempts": 2}
    assert e2e.witness("calls") == {f"{run_id}/first": 1}
    assert_projection_matches_log(e2e, run_id)


def test_idempotent_submit_returns_the_existing_run(e2e: Env) -> None:
    spec = "name: once\nsteps:\n  - id: a\n    handler: builtin.noop\n"
    first = e2e.submit(spec, idempotency_key="order-42", check_handlers=False)
    second = e2e.submit(spec, idempotency_key="order-42", check_handlers=False)
    assert first == second
    assert len(e2e.queries.list_runs(workflow="once")) == 1


def test_unknown_handler_is_rejected_at_submit(e2e: Env) -> None:
    e2e.start(workers=1)
    with pytest.raises(SubmitError, match=r"unknown handler\(s\): payments\.charge"):
        e2e.submit("name: x\nsteps:\n  - id: a\n    handler: payments.charge\n")
    assert e2e.queries.list_runs() == []


def test_worker_sigkill_mid_step_is_recovered_with_one_effect(e2e: Env) -> None:
    e2e.cluster.start_coordinator()
    victim = e2e.start_worker()
    e2e.cluster.wait_for_workers(e2e.redis, 1)
    run_id = e2e.submit("""
name: killed
steps:
  - id: slow
    handler: test.witness
    with: {seconds: 2}
""")
    key = f"{run_id}/slow"
    assert_eventually(lambda: e2e.witness("calls").get(key) == 1, timeout=15)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed_at = time.monotonic()
    e2e.start_worker()
    doc = finish(e2e, run_id, timeout=30)
    recovery = time.monotonic() - killed_at
    assert doc["status"] == "succeeded"
    assert e2e.witness("effects") == {key: 1}
    assert e2e.witness("calls") == {key: 2}  # one injected fault, one duplicate call
    assert recovery < 15
    assert_projection_matches_log(e2e, run_id)


def test_sigterm_drains_in_flight_steps_without_redelivery(e2e: Env) -> None:
    e2e.cluster.start_coordinator()
    worker = e2e.start_worker()
    e2e.cluster.wait_for_workers(e2e.redis, 1)
    run_id = e2e.submit("""
name: drained
steps:
  - id: s1
    handler: test.witness
    with: {seconds: 1.5}
  - id: s2
    handler: test.witness
    with: {seconds: 1.5}
""")
    assert_eventually(lambda: len(e2e.witness("calls")) == 2, timeout=15)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=20) == 0
    doc = finish(e2e, run_id, timeout=15)
    assert doc["status"] == "succeeded"
    assert set(e2e.witness("calls").values()) == {1}, e2e.log()
    assert set(e2e.witness("effects").values()) == {1}


def test_coordinator_sigkill_and_restart_mid_run(e2e: Env) -> None:
    coordinator = e2e.cluster.start_coordinator()
    e2e.start_worker()
    e2e.cluster.wait_for_workers(e2e.redis, 1)
    steps = "\n".join(
        f"  - id: s{i}\n    handler: test.witness\n    with: {{seconds: 0.2}}"
        + (f"\n    needs: [s{i - 1}]" if i else "")
        for i in range(8)
    )
    run_id = e2e.submit(f"name: chain\nsteps:\n{steps}\n")
    assert_eventually(lambda: len(e2e.witness("effects")) >= 3, timeout=15)
    coordinator.send_signal(signal.SIGKILL)
    coordinator.wait()
    time.sleep(1)
    e2e.cluster.start_coordinator()
    doc = finish(e2e, run_id, timeout=40)
    assert doc["status"] == "succeeded", e2e.log()
    assert set(e2e.witness("effects").values()) == {1}
    assert len(e2e.witness("effects")) == 8
    assert_projection_matches_log(e2e, run_id)


def test_redis_restarted_empty_the_reconciler_finishes_every_run(e2e_own_redis: Env, own_redis) -> None:
    e2e = e2e_own_redis
    e2e.start(workers=1)
    run_ids = [
        e2e.submit(
            "name: lost\nsteps:\n  - {id: a, handler: test.witness, with: {seconds: 1.5}}\n"
            "  - {id: b, handler: test.witness, needs: [a]}\n"
        )
        for _ in range(3)
    ]
    assert_eventually(lambda: len(e2e.witness("calls")) >= 1, timeout=15)
    own_redis.restart(empty=True)  # no AOF: streams, groups and pending lists are gone
    for run_id in run_ids:
        doc = finish(e2e, run_id, timeout=60)
        assert doc["status"] == "succeeded", e2e.log()
        assert_projection_matches_log(e2e, run_id)
    assert "redis_data_loss_detected" in e2e.log()


def test_postgres_restart_is_survived_without_event_gaps(e2e: Env, postgres_server) -> None:
    e2e.start(workers=1)
    steps = "\n".join(
        f"  - {{id: s{i}, handler: test.witness, with: {{seconds: 0.3}}" + (f", needs: [s{i - 1}]" if i else "") + "}"
        for i in range(6)
    )
    run_id = e2e.submit(f"name: pgrestart\nsteps:\n{steps}\n")
    assert_eventually(lambda: len(e2e.witness("effects")) >= 2, timeout=15)
    postgres_server.restart(mode="fast")
    doc = finish(e2e, run_id, timeout=60)
    assert doc["status"] == "succeeded", e2e.log()
    assert set(e2e.witness("effects").values()) == {1}
    assert_projection_matches_log(e2e, run_id)
