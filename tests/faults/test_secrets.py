"""Secrets (docs/reliability.md 18): resolved in the worker from what it exposes, absent from everything stored."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest

from tests.e2e.secret_handlers import renderings
from tests.faults.harness import HANDLER_MODULES, FaultEnv
from tests.faults.invariants import check_event_logs, check_nothing_stranded, dead_letters, report, wait_terminal

pytestmark = [pytest.mark.faults, pytest.mark.integration]

SECRET_NAME = "TEST_API_TOKEN"  # STEPPE_* variables are never exposed

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
    faults.start_worker(STEPPE_SECRETS=SECRET_NAME, **{SECRET_NAME: value})
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


GREEDY = """
name: greedy
steps:
  - id: steal
    handler: builtin.echo
    with: {redis: "${{ secrets.STEPPE_REDIS_URL }}", home: "${{ secrets.HOME }}", token: "${{ secrets.GIVEN }}"}
    retry: {max_attempts: 3, initial_delay: 100ms, backoff: fixed, jitter: false}
"""


def test_18b_a_secret_the_worker_does_not_expose_fails_the_step_with_what_to_set(faults: FaultEnv) -> None:
    """Before: `secrets.NAME` resolved any variable of the worker (its Redis URL, credentials)."""
    redis_url = faults.env["STEPPE_REDIS_URL"]
    faults.start_coordinator()
    faults.start_worker(STEPPE_SECRETS="GIVEN", GIVEN="given-" + secrets.token_hex(8))
    faults.wait_for_workers(1)
    run_id = faults.submit(GREEDY)
    doc = wait_terminal(faults, [run_id], deadline=30)[run_id]

    assert doc["status"] == "failed", doc["status"]
    step = doc["steps"]["steal"]
    assert step["attempts"] == 1, "an unexposed secret is not retried"
    error = step["error"]
    assert error["type"] == "SecretNotExposedError"
    assert not error["retryable"]
    message = error["message"]
    assert "'STEPPE_REDIS_URL' is not exposed to handlers" in message
    assert "Steppe's own settings" in message
    assert "'HOME' is not exposed" in message
    assert "add HOME to STEPPE_SECRETS" in message
    assert "GIVEN" not in message  # exposed, so not a problem
    stored = stored_text(faults, run_id)
    del stored["cluster log"]  # the processes log their own Redis URL
    leaks = [where for where, text in stored.items() if redis_url in text]
    assert not leaks, f"the worker's Redis URL reached: {leaks}"
    check_event_logs(faults, [run_id])
    check_nothing_stranded(faults)
    report("18b-unexposed-secret", attempts=step["attempts"])


FORMS_FLOW = """
name: secret-forms
on_failure: compensate
steps:
  - id: show
    handler: test.secret_forms_out
    with: {secret: "${{ secrets.MULTI_LINE_KEY }}", token: "${{ secrets.FILE_TOKEN }}"}
    compensate:
      handler: test.secret_forms_fail
      with: {secret: "${{ secrets.MULTI_LINE_KEY }}"}
      retry: {max_attempts: 1}
  - id: refuse
    handler: test.secret_forms_fail
    needs: [show]
    with: {secret: "${{ secrets.FILE_TOKEN }}"}
    retry: {max_attempts: 2, initial_delay: 100ms, backoff: fixed, jitter: false}
"""


def test_18c_an_exposed_secret_appears_in_no_form_in_events_outputs_dead_letters_or_logs(
    faults: FaultEnv, tmp_path: Path
) -> None:
    """Before: a repr()'d multi-line value, base64/URL forms, print() and stdlib logging leaked."""
    multi = f"-----BEGIN KEY-----\nMIIB{secrets.token_hex(12)}\n'q\"{secrets.token_hex(6)}\tZ\n-----END KEY-----"
    token = "ftok-" + secrets.token_urlsafe(18)
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    (secrets_dir / "FILE_TOKEN").write_text(token + "\n")
    faults.start_coordinator()
    faults.start_worker(
        imports=[*HANDLER_MODULES, "tests.e2e.secret_handlers"],
        STEPPE_SECRETS="MULTI_LINE_KEY",
        STEPPE_SECRETS_DIR=str(secrets_dir),
        MULTI_LINE_KEY=multi,
    )
    faults.wait_for_workers(1)
    run_id = faults.submit(FORMS_FLOW)
    doc = wait_terminal(faults, [run_id], deadline=30)[run_id]

    assert doc["status"] == "compensation_failed", doc["status"]
    shown = doc["steps"]["show"]["output"]
    assert shown["length"] == len(multi), "the handler got the real value"
    assert all("***" in form for form in shown["forms"].values()), shown["forms"]
    with faults.store.connection() as conn:
        [event] = conn.execute(
            "SELECT data FROM workflow_events WHERE run_id = %s AND type = 'step.succeeded' AND step_key = 'show'",
            (run_id,),
        ).fetchall()
        [dead] = conn.execute("SELECT step_key, error FROM dead_letters").fetchall()
    assert event["data"]["output_redacted"]["secrets"] == ["FILE_TOKEN", "MULTI_LINE_KEY"]
    assert dead["step_key"] == "show:compensate"
    assert "upstream refused '***' (***)" in dead["error"]
    assert doc["steps"]["refuse"]["error"]["message"] == "upstream refused '***' (***)"
    printed = [json.loads(line) for line in faults.log_text().splitlines() if '"handler_output"' in line]
    assert any(e["text"] == "line-1: ***" and e["step"] == "show" for e in printed), "print() is captured"
    assert any("connecting with Basic " in e["text"] for e in printed), "stdlib logging is captured"
    forms = {**renderings(multi), **{f"file-{k}": v for k, v in renderings(token).items()}}
    stored = stored_text(faults, run_id)
    leaks = {
        f"{form} in {where}": text.count(value)
        for where, text in stored.items()
        for form, value in forms.items()
        if value in text
    }
    assert not leaks, f"the secret leaked: {leaks}"
    check_event_logs(faults, [run_id])
    check_nothing_stranded(faults)
    report("18c-secret-forms", forms=len(forms), places_checked=len(stored), leaks=len(leaks))
