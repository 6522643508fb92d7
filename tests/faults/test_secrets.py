"""Secrets (docs/reliability.md 18): resolved in the worker from its environment, absent from everything stored."""

from __future__ import annotations

import secrets

import pytest

from tests.faults.harness import FaultEnv
from tests.faults.invariants import check_event_logs, check_nothing_stranded, dead_letters, report, wait_terminal

pytestmark = [pytest.mark.faults, pytest.mark.integration]

SECRET_NAME = "STEPPE_TEST_API_TOKEN"

WORKFLOW = f"""
name: secretive
on_failure: compensate
inputs:
  note: {{type: string}}
steps:
  - id: log_it
    handler: test.secret_log
    with: {{token: "${{{{ secrets.{SECRET_NAME} }}}}"}}
    compensate:
      handler: test.secret_echo
      with: {{token: "${{{{ secrets.{SECRET_NAME} }}}}"}}
      retry: {{max_attempts: 1}}
  - id: echo_it
    handler: builtin.echo
    needs: [log_it]
    with: {{header: "Bearer ${{{{ secrets.{SECRET_NAME} }}}}", note: "${{{{ inputs.note }}}}"}}
  - id: refuse
    handler: test.secret_echo
    needs: [echo_it]
    with: {{token: "${{{{ secrets.{SECRET_NAME} }}}}"}}
    retry: {{max_attempts: 2, initial_delay: 100ms, backoff: fixed, jitter: false}}
"""


def stored_text(env: FaultEnv, run_id: str) -> dict[str, str]:
    """Everything Steppe stored about the run, as text, by where it lives."""
    with env.store.connection() as conn:
        events = conn.execute("SELECT data::text AS t FROM workflow_events WHERE run_id = %s", (run_id,)).fetchall()
        steps = conn.execute(
            "SELECT coalesce(output::text, '') || coalesce(error::text, '') || detail::text AS t"
            " FROM workflow_steps WHERE run_id = %s",
            (run_id,),
        ).fetchall()
        runs = conn.execute("SELECT state::text || inputs::text AS t FROM workflow_runs").fetchall()
        dead = conn.execute(
            "SELECT error || coalesce(payload::text, '') || coalesce(raw, '') AS t FROM dead_letters"
        ).fetchall()
    streams = []
    for key in env.redis.scan_iter(match=f"{{{env.settings.namespace}*"):
        if env.redis.type(key) == b"stream":
            streams += [repr(fields) for _, fields in env.redis.xrange(key)]
    return {
        "workflow_events.data": "\n".join(r["t"] for r in events),
        "workflow_steps": "\n".join(r["t"] for r in steps),
        "workflow_runs": "\n".join(r["t"] for r in runs),
        "dead_letters (table)": "\n".join(r["t"] for r in dead),
        "dead letters (stream)": "\n".join(repr(e) for e in dead_letters(env)),
        "redis streams": "\n".join(streams),
        "cluster log": env.log_text(),
    }


def test_18_secrets_are_resolved_in_the_worker_and_redacted_everywhere(faults: FaultEnv) -> None:
    value = "tok-" + secrets.token_hex(12)
    faults.start_coordinator()  # the coordinator never knows the value
    faults.start_worker(**{SECRET_NAME: value})
    faults.wait_for_workers(1)
    run_id = faults.submit(WORKFLOW, {"note": f"${{{{ secrets.{SECRET_NAME} }}}}"})
    doc = wait_terminal(faults, [run_id], deadline=30)[run_id]

    assert doc["status"] == "compensation_failed", doc["status"]
    assert doc["steps"]["log_it"]["output"] == {"length": len(value)}  # the handler got the real value
    refused = doc["steps"]["refuse"]
    assert refused["attempts"] == 2
    assert refused["error"]["message"] == "upstream refused token ***"
    assert "***" in refused["error"]["traceback"]
    echoed = doc["steps"]["echo_it"]["output"]
    assert echoed["note"] == f"${{{{ secrets.{SECRET_NAME} }}}}", "an input was resolved as a template"
    assert echoed["header"] == "Bearer ***", echoed
    with faults.store.connection() as conn:
        [row] = conn.execute("SELECT step_key, error FROM dead_letters").fetchall()
    assert row["step_key"] == "log_it:compensate"
    assert "upstream refused token ***" in row["error"]
    assert any("***" in line for line in faults.log_text().splitlines() if "calling_upstream" in line)
    leaks = {where: text.count(value) for where, text in stored_text(faults, run_id).items() if value in text}
    assert not leaks, f"the secret leaked into: {leaks}"
    check_event_logs(faults, [run_id])
    check_nothing_stranded(faults)
    report("18-secrets", places_checked=len(stored_text(faults, run_id)), leaks=len(leaks))
