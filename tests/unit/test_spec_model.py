"""The workflow models: settings resolved by the compiler, JSON round trips, submit-time inputs, durations."""

from __future__ import annotations

import math

import pytest

from orchestrator.durations import DurationError, format_duration, parse_duration
from orchestrator.errors import SpecValidationError, SubmitError
from orchestrator.settings import LimitSettings
from orchestrator.spec import WorkflowSpec, load_workflow, parse_cli_inputs, validate_inputs
from orchestrator.workflow import compile_workflow
from patterns.retry import RetryPolicy

SAGA = """\
name: order-fulfilment
inputs:
  order_id: {type: string, required: true}
  express: {type: boolean, default: false}
  note: {type: string}
defaults:
  queue: work
  timeout: 30s
  retry: {max_attempts: 4, backoff: linear, initial_delay: 250ms, max_delay: 1m, jitter: false}
  circuit_breaker: shared
on_failure: compensate
breakers:
  shared: {fail_max: 2, reset_timeout: 1m, exclude: [ValueError]}
  payments-api: {}
steps:
  - id: reserve
    handler: inventory.reserve
    with: {order_id: "${{ inputs.order_id }}"}
    compensate: {handler: inventory.release, retry: {max_attempts: 9}}
  - id: charge
    handler: payments.charge
    needs: reserve
    queue: payments
    timeout: 1h30m
    priority: high
    circuit_breaker: payments-api
    retry: {max_attempts: 5}
    compensate: {handler: payments.refund, queue: refunds, timeout: 10s}
  - id: child
    workflow: shipping-flow
    needs: [charge]
    with: {order: "${{ inputs.order_id }}"}
    when: "${{ inputs.express }}"
    estimate: 2m
  - id: vote
    handler: llm.judge
    needs: [reserve]
    swarm: {replicas: 5}
  - id: summary
    handler: llm.summarise
    needs: [vote]
    gate: {handler: checks.schema, with: {strict: true}}
hooks:
  - {on: step.failed, handler: alerts.notify}
"""


def test_compiling_merges_defaults_field_by_field() -> None:
    steps = compile_workflow(load_workflow(SAGA)).steps
    charge = steps["charge"]
    assert (charge.queue, charge.timeout, charge.priority, charge.breaker) == (
        "payments",
        5400.0,
        "high",
        "payments-api",
    )
    assert charge.retry == RetryPolicy(max_attempts=5, backoff="linear", initial_delay=0.25, max_delay=60, jitter=False)
    assert charge.compensate is not None
    assert (charge.compensate.queue, charge.compensate.timeout) == ("refunds", 10.0)
    assert charge.compensate.retry.max_attempts == 4
    reserve = steps["reserve"]
    assert (reserve.queue, reserve.timeout, reserve.priority, reserve.breaker) == (
        "work",
        30.0,
        "normal",
        "shared",
    )
    assert reserve.compensate is not None
    assert (reserve.compensate.queue, reserve.compensate.timeout, reserve.compensate.retry.max_attempts) == (
        "work",
        30.0,
        9,
    )


def test_builtin_defaults_without_a_defaults_section() -> None:
    spec = load_workflow("name: x\nsteps:\n  - {id: a, handler: h}\n")
    step = compile_workflow(spec).steps["a"]
    assert (step.queue, step.timeout, step.priority, step.breaker) == ("default", 300.0, "normal", None)
    assert step.retry == RetryPolicy(
        max_attempts=3, backoff="exponential", initial_delay=1.0, max_delay=60.0, jitter=True
    )
    assert step.args == {}
    assert step.needs == ()


def test_patterns_are_parsed() -> None:
    spec = load_workflow(SAGA)
    child = spec.step("child")
    assert (child.workflow, child.handler, child.estimate, child.when) == (
        "shipping-flow",
        None,
        120.0,
        "${{ inputs.express }}",
    )
    vote = spec.step("vote")
    assert vote.swarm is not None
    assert vote.swarm.effective_quorum == 3
    summary = spec.step("summary")
    assert summary.gate is not None
    assert summary.gate.max_attempts == 3
    assert spec.breaker("shared").exclude == ["ValueError"]
    assert spec.breaker("unknown").fail_max == 5
    assert spec.hooks[0].on == ["step.failed"]
    assert spec.hooks[0].kind == "post"


def test_json_round_trip_keeps_the_spec_and_its_defaulting() -> None:
    spec = load_workflow(SAGA)
    for dump in (
        spec.model_dump(mode="json", by_alias=True),
        spec.model_dump(mode="json", by_alias=True, exclude_none=True),
    ):
        again = WorkflowSpec.model_validate(dump)
        assert again == spec
        assert compile_workflow(again) == compile_workflow(spec)
        assert compile_workflow(again).steps["reserve"].retry.backoff == "linear"
    dumped = spec.model_dump(mode="json", by_alias=True)
    assert dumped["steps"][0]["with"] == {"order_id": "${{ inputs.order_id }}"}
    assert dumped["steps"][1]["timeout"] == 5400.0


def test_validate_inputs_applies_defaults_and_checks_types() -> None:
    spec = load_workflow(SAGA)
    assert validate_inputs(spec, {"order_id": "o-1"}) == {"order_id": "o-1", "express": False, "note": None}
    with pytest.raises(SubmitError) as info:
        validate_inputs(spec, {"express": "yes", "ordr_id": "x"})
    message = str(info.value)
    assert "unknown input 'ordr_id'; did you mean 'order_id'?" in message
    assert "input 'express' must be of type boolean, not a string ('yes')" in message
    assert "input 'order_id' is required: pass it with --input order_id=VALUE" in message


def test_validate_inputs_limits_the_size() -> None:
    spec = load_workflow(SAGA)
    with pytest.raises(SubmitError, match="pass large data by reference"):
        validate_inputs(spec, {"order_id": "x" * 2000}, limits=LimitSettings(payload_bytes=1000))


def test_parse_cli_inputs() -> None:
    parsed = parse_cli_inputs(["n=3", "flag=true", "name=ada", "tags=[1, 2]", "zip=007", "eq=a=b", "empty="])
    assert parsed == {"n": 3, "flag": True, "name": "ada", "tags": [1, 2], "zip": "007", "eq": "a=b", "empty": ""}
    with pytest.raises(SubmitError, match="not key=value"):
        parse_cli_inputs(["novalue"])
    with pytest.raises(SubmitError, match="given twice"):
        parse_cli_inputs(["a=1", "a=2"])


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("10s", 10),
        ("5m", 300),
        ("1h", 3600),
        ("1m30s", 90),
        ("1.5h", 5400),
        (" 2D ", 172800),
        ("12", 12),
        (7, 7),
        (0.5, 0.5),
    ],
)
def test_parse_duration(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "soon", "5 minutes", "-1s", "1s2", True, None, [], math.inf, -3, "1e3s"])
def test_parse_duration_rejects(bad: object) -> None:
    with pytest.raises(DurationError, match="invalid duration"):
        parse_duration(bad)


def test_format_duration_is_the_inverse() -> None:
    for seconds in (0.25, 10, 90, 5400, 86400 + 61):
        assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize(
    ("step", "message"),
    [
        ("{id: a, handler: h.x, swarm: {replicas: 3}, for_each: [1]}", "`swarm` and `for_each` cannot be combined"),
        ("{id: a, handler: h.x, swarm: {replicas: 3}, gate: {handler: h.g}}", "a `gate` checks one output"),
        ("{id: a, workflow: child, for_each: [1]}", "`for_each` over a child `workflow` is not supported"),
    ],
)
def test_pattern_keys_that_cannot_be_combined_are_rejected_at_the_step(step: str, message: str) -> None:
    with pytest.raises(SpecValidationError, match=message) as info:
        load_workflow(f"name: w\nsteps:\n  - {step}\n")
    assert "<string>:3:" in str(info.value)
