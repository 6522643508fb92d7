"""compile_workflow, the one place a step's settings are resolved: its own, else `defaults:`, else built in."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import orjson
import pytest

from orchestrator.spec import DEFAULT_PRIORITY, DEFAULT_QUEUE, DEFAULT_TIMEOUT, RetrySpec, WorkflowSpec, load_workflow
from orchestrator.spec.validate import load_workflow_file
from orchestrator.workflow import BUILT_IN_RETRY, compile_workflow, retry_policy
from patterns.retry import RetryPolicy

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

DEFAULTS = """\
name: w
defaults:
  queue: work
  timeout: 30s
  retry: {max_attempts: 4, backoff: linear, initial_delay: 250ms, max_delay: 1m, jitter: false}
  priority: low
  circuit_breaker: shared
breakers:
  shared: {fail_max: 2, reset_timeout: 1m, exclude: [ValueError]}
  own: {}
steps:
"""


def test_a_step_that_sets_nothing_inherits_every_default() -> None:
    step = compile_workflow(load_workflow(DEFAULTS + "  - {id: a, handler: h.a, compensate: {handler: h.undo}}\n"))
    a = step.steps["a"]
    assert (a.queue, a.timeout, a.priority, a.breaker) == ("work", 30.0, "low", "shared")
    assert a.retry == RetryPolicy(max_attempts=4, backoff="linear", initial_delay=0.25, max_delay=60.0, jitter=False)
    assert a.breaker_config == {"fail_max": 2, "reset_timeout": 60.0, "exclude": ["ValueError"]}
    assert a.compensate is not None
    assert (a.compensate.queue, a.compensate.timeout, a.compensate.retry) == ("work", 30.0, a.retry)
    assert step.queues == frozenset({"work"})


def test_without_defaults_every_setting_is_the_built_in_one() -> None:
    a = compile_workflow(load_workflow("name: w\nsteps:\n  - {id: a, handler: h.a}\n")).steps["a"]
    assert (a.queue, a.timeout, a.priority, a.breaker, a.breaker_config) == (
        DEFAULT_QUEUE,
        DEFAULT_TIMEOUT,
        DEFAULT_PRIORITY,
        None,
        None,
    )
    assert a.retry == BUILT_IN_RETRY == RetryPolicy()


@pytest.mark.parametrize(
    ("setting", "attribute", "expected"),
    [
        ("queue: io", "queue", "io"),
        ("timeout: 5m", "timeout", 300.0),
        ("priority: high", "priority", "high"),
        ("circuit_breaker: own", "breaker", "own"),
    ],
)
def test_a_setting_of_the_step_wins_over_defaults(setting: str, attribute: str, expected: object) -> None:
    steps = compile_workflow(load_workflow(DEFAULTS + f"  - {{id: a, handler: h.a, {setting}}}\n")).steps
    assert getattr(steps["a"], attribute) == expected


@pytest.mark.parametrize(
    ("written", "field", "value"),
    [
        ("max_attempts: 9", "max_attempts", 9),
        ("backoff: fixed", "backoff", "fixed"),
        ("initial_delay: 2s", "initial_delay", 2.0),
        ("max_delay: 10m", "max_delay", 600.0),
        ("jitter: true", "jitter", True),
    ],
)
def test_retry_merges_field_by_field_over_defaults_retry(written: str, field: str, value: Any) -> None:
    steps = compile_workflow(load_workflow(DEFAULTS + f"  - {{id: a, handler: h.a, retry: {{{written}}}}}\n")).steps
    inherited = RetryPolicy(max_attempts=4, backoff="linear", initial_delay=0.25, max_delay=60.0, jitter=False)
    assert steps["a"].retry == dataclasses.replace(inherited, **{field: value})


def test_a_partial_defaults_retry_fills_the_rest_from_the_built_in_policy() -> None:
    doc = "name: w\ndefaults: {retry: {backoff: fixed}}\nsteps:\n  - {id: a, handler: h.a, retry: {max_attempts: 7}}\n"
    assert compile_workflow(load_workflow(doc)).steps["a"].retry == RetryPolicy(max_attempts=7, backoff="fixed")


def test_a_compensation_takes_the_step_queue_and_timeout_but_the_defaults_retry() -> None:
    doc = DEFAULTS + (
        "  - id: a\n    handler: h.a\n    queue: pay\n    timeout: 1h\n    retry: {max_attempts: 8}\n"
        "    compensate: {handler: h.undo}\n"
        "  - id: b\n    handler: h.b\n"
        "    compensate: {handler: h.undo, queue: refunds, timeout: 10s, retry: {max_attempts: 2}}\n"
    )
    steps = compile_workflow(load_workflow(doc)).steps
    a, b = steps["a"].compensate, steps["b"].compensate
    assert a is not None
    assert b is not None
    assert (a.queue, a.timeout, a.retry.max_attempts, a.retry.backoff) == ("pay", 3600.0, 4, "linear")
    assert (b.queue, b.timeout, b.retry.max_attempts, b.retry.backoff) == ("refunds", 10.0, 2, "linear")
    assert compile_workflow(load_workflow(doc)).queues == frozenset({"pay", "work", "refunds"})


def test_a_zero_timeout_inherits_like_an_unset_one() -> None:
    # What the runtime has always done (`timeout: 0` never meant "time out at once").
    doc = "name: w\ndefaults: {timeout: 0}\nsteps:\n  - {id: a, handler: h.a, timeout: 0, compensate: {handler: u}}\n"
    a = compile_workflow(load_workflow(doc)).steps["a"]
    assert a.compensate is not None
    assert (a.timeout, a.compensate.timeout) == (DEFAULT_TIMEOUT, DEFAULT_TIMEOUT)


def test_a_named_breaker_without_an_entry_gets_the_breaker_defaults() -> None:
    a = compile_workflow(load_workflow("name: w\nsteps:\n  - {id: a, handler: h.a, circuit_breaker: x}\n")).steps["a"]
    assert a.breaker_config == {"fail_max": 5, "reset_timeout": 30.0, "exclude": []}


def test_retry_policy_converts_the_yaml_shape_to_the_runtime_policy() -> None:
    # One name per field on both sides: the conversion copies the fields the block sets, by name.
    assert {f.name for f in dataclasses.fields(RetryPolicy)} == set(RetrySpec.model_fields)
    base = RetryPolicy(max_attempts=2)
    assert retry_policy(None, base) is base
    assert retry_policy(RetrySpec()) == RetryPolicy()
    assert retry_policy(RetrySpec(initial_delay=0, jitter=False), base) == RetryPolicy(
        max_attempts=2, initial_delay=0.0, jitter=False
    )


def test_hooks_children_and_edges_come_from_the_typed_spec() -> None:
    doc = (
        "name: w\nhooks:\n  - {on: step.failed, handler: alerts.notify}\n"
        "workflows:\n  kid: {name: kid, steps: [{id: k, handler: h.k}]}\n"
        "steps:\n  - {id: a, handler: h.a}\n  - {id: b, workflow: kid, needs: a}\n  - {id: c, handler: h.c, needs: a}\n"
    )
    wf = compile_workflow(load_workflow(doc))
    assert [h.handler for h in wf.hooks] == ["alerts.notify"]
    assert wf.children == {"kid": {"name": "kid", "steps": [{"id": "k", "handler": "h.k"}]}}
    assert wf.steps["a"].dependents == ("b", "c")
    assert wf.order[0] == "a"
    assert set(wf.leaves) == {"b", "c"}
    assert wf.on_failure == "fail"


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_a_stored_definition_compiles_to_the_same_workflow(path: Path) -> None:
    # Submit stores the expanded document as JSON; the coordinator re-validates and compiles it on load.
    spec = load_workflow_file(path)
    for dump in (
        spec.model_dump(mode="json", by_alias=True, exclude_none=True),  # what submit stores
        spec.model_dump(mode="json", by_alias=True),  # with every unset setting as null
    ):
        stored = orjson.loads(orjson.dumps(dump))
        assert compile_workflow(WorkflowSpec.model_validate(stored)) == compile_workflow(spec)
