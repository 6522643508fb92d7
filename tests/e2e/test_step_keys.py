"""Step keys end to end: a step may be named `hook`; its gate and compensation are steps of the run,
not hook runs (hook runs' keys are `hook:<id>:<seq>`)."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import Env
from tests.e2e.test_execution import assert_projection_matches_log, finish

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


def test_a_step_named_hook_has_its_gate_and_compensation_applied(e2e: Env) -> None:
    e2e.start(workers=1, queues=["default", "hooks"])
    gated = e2e.submit("""
name: hook-gated
steps:
  - {id: hook, handler: builtin.echo, with: {text: draft}, gate: {handler: builtin.echo, with: {approved: true}}}
""")
    compensated = e2e.submit("""
name: hook-compensated
on_failure: compensate
steps:
  - {id: hook, handler: builtin.echo, with: {x: 1}, compensate: {handler: builtin.echo, with: {undo: 1}}}
  - {id: after, handler: builtin.fail, needs: [hook], with: {retryable: false}}
""")

    doc = finish(e2e, gated)
    assert doc["status"] == "succeeded", e2e.log()
    assert doc["steps"]["hook:gate"]["status"] == "succeeded"
    assert doc["steps"]["hook"]["output"] == {"text": "draft"}

    doc = finish(e2e, compensated)
    assert doc["status"] == "compensated", e2e.log()
    assert doc["steps"]["hook:compensate"]["output"] == {"undo": 1}
    for run_id in (gated, compensated):
        assert_projection_matches_log(e2e, run_id)
