"""The three step kinds no worker runs (docs/spec.md §12.1): model, positioned errors, compile, plan."""

from __future__ import annotations

import textwrap

import pytest

from orchestrator import planner
from orchestrator.errors import SpecProblem, SpecValidationError
from orchestrator.spec import WorkflowSpec, load_workflow
from orchestrator.workflow import WaitDef, compile_workflow

GOOD = """\
name: refund
inputs:
  launch_at: {type: string}
steps:
  - id: draft
    handler: llm.draft
  - id: review
    needs: [draft]
    approval: {timeout: 48h, approvers: [alice, bob]}
  - id: paid
    needs: [review]
    wait: {signal: payment-webhook, timeout: 7d}
  - id: cool_off
    needs: [paid]
    sleep: 10m
  - id: launch
    needs: [cool_off]
    sleep: {until: "${{ inputs.launch_at }}"}
"""


def only(doc: str) -> SpecProblem:
    with pytest.raises(SpecValidationError) as info:
        load_workflow(textwrap.dedent(doc), filename="wf.yaml")
    found = info.value.problems
    assert len(found) == 1, "\n".join(map(str, found))
    return found[0]


def test_the_three_kinds_compile_to_wait_defs() -> None:
    wf = compile_workflow(load_workflow(GOOD))
    assert wf.steps["review"].wait == WaitDef("approval", timeout=48 * 3600.0, approvers=("alice", "bob"))
    assert wf.steps["paid"].wait == WaitDef("signal", signal="payment-webhook", timeout=7 * 86400.0)
    assert wf.steps["cool_off"].wait == WaitDef("sleep", duration=600.0)
    assert wf.steps["launch"].wait == WaitDef("sleep", until="${{ inputs.launch_at }}")
    assert wf.steps["draft"].wait is None
    assert wf.handlers() == {"llm.draft"}
    assert wf.queues == frozenset({"default"})


def test_a_stored_definition_round_trips() -> None:
    spec = load_workflow(GOOD)
    again = WorkflowSpec.model_validate(spec.model_dump(mode="json", by_alias=True, exclude_none=True))
    assert again == spec


def test_a_wait_step_with_a_handler_is_refused_at_the_step() -> None:
    problem = only("""\
        name: wf
        steps:
          - id: w
            handler: a.b
            wait: {signal: go}
        """)
    assert (problem.line, problem.column) == (3, 5)
    assert "a `wait` step waits; no worker runs it: remove `handler`" in problem.message


def test_a_bad_signal_name_is_refused_at_the_name() -> None:
    problem = only("""\
        name: wf
        steps:
          - id: w
            wait: {signal: "not a name"}
        """)
    assert (problem.line, problem.column) == (4, 20)
    assert "must be a signal name such as payment-webhook" in problem.message


def test_sleep_needs_a_duration_or_until() -> None:
    problem = only("""\
        name: wf
        steps:
          - id: s
            sleep: {}
        """)
    assert (problem.line, problem.column) == (4, 12)
    assert "set exactly one of a duration" in problem.message


def test_sleep_until_needs_an_offset() -> None:
    problem = only("""\
        name: wf
        steps:
          - id: s
            sleep: {until: "2026-01-01T00:00:00"}
        """)
    assert "has no UTC offset: add Z" in problem.message


def test_approvers_must_be_a_list_of_names() -> None:
    problem = only("""\
        name: wf
        steps:
          - id: r
            approval: {approvers: alice}
        """)
    assert "approval.approvers: must be a list" in problem.message
    problem = only("""\
        name: wf
        steps:
          - id: r
            approval: {approvers: [alice, "bob smith"]}
        """)
    assert "approval.approvers[1]" in problem.message


def test_handler_settings_are_refused_on_a_wait_step() -> None:
    problem = only("""\
        name: wf
        steps:
          - id: s
            sleep: 5s
            retry: {max_attempts: 3}
            timeout: 10s
        """)
    assert "an `sleep`" not in problem.message
    assert "a `sleep` step runs no handler, so it cannot set `retry`" in problem.message
    assert "put it inside the `wait:` or `approval:` block" in problem.message


def test_the_plan_marks_waiting_steps() -> None:
    plan = planner.plan(load_workflow(GOOD))
    assert plan.waits == {
        "review": "⏸ approval",
        "paid": "⏸ signal",
        "cool_off": "⏲ sleep",
        "launch": "⏲ sleep",
    }
    assert '{{"paid ⏸ signal"}}' in planner.render_mermaid(plan)
    assert "shape=octagon" in planner.render_dot(plan)
