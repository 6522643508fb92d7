"""Memory bounded by design: step messages name the run's inputs instead of copying them (workers read
them once per run for `ctx.inputs`, tests/unit/test_run_inputs.py), and every run limit with its message."""

from __future__ import annotations

import random
import textwrap
from typing import Any

import msgspec
import pytest

from orchestrator import run_limits
from orchestrator.engine import RunEngine
from orchestrator.errors import SpecValidationError
from orchestrator.hook_runner import HookRunner
from orchestrator.settings import LimitSettings
from orchestrator.spec import load_workflow
from orchestrator.state import Event, EventType, RunProjection, RunStatus, StepStatus
from orchestrator.wire import SCHEMA_VERSION, SUPPORTED_VERSIONS, ResultMessage, decode_step, encode
from orchestrator.workflow import compile_workflow
from patterns.hierarchical import root_of
from patterns.hooks import HookDef

BLOB = "x" * (100 * 1024)

FAN_OUT = """
name: fan
inputs:
  blob: {type: string}
  items: {type: array}
steps:
  - id: each
    handler: h.x
    for_each: "${{ inputs.items }}"
    with: {n: "${{ item }}"}
  - id: after
    handler: h.x
    needs: [each]
    with: {count: 1}
"""


def engine_for(yaml_text: str, inputs: dict[str, Any], limits: LimitSettings | None = None) -> RunEngine:
    return RunEngine(
        workflow=compile_workflow(load_workflow(yaml_text)),
        projection=RunProjection(run_id="r1"),
        inputs=inputs,
        partition=0,
        clock=lambda: 1_000_000.0,
        rng=random.Random(1),
        limits=limits,
    )


def problems(doc: str, limits: LimitSettings) -> list[str]:
    with pytest.raises(SpecValidationError) as info:
        load_workflow(textwrap.dedent(doc), filename="wf.yaml", limits=limits)
    return [str(p) for p in info.value.problems]


# -- step messages ------------------------------------------------------------------------------


def test_a_for_each_item_message_carries_its_arguments_not_the_run_inputs() -> None:
    engine = engine_for(FAN_OUT, {"blob": BLOB, "items": list(range(1000))})
    engine.start()
    outbox = engine.drain().dispatches
    assert len(outbox) == 1000
    sizes = [len(encode(d.message)) for d in outbox]
    assert max(sizes) < 1024, max(sizes)  # was > 100 KiB each: a copy of `blob` per item
    message = decode_step(encode(outbox[7].message))
    assert message.args == {"n": 7}
    assert message.v == SCHEMA_VERSION == 2
    fields = msgspec.json.decode(encode(outbox[7].message))
    assert "inputs" not in fields
    assert fields["inputs_digest"] == outbox[0].inputs.digest  # type: ignore[union-attr]  # ctx.inputs, read once


def test_re_published_messages_stay_small_too() -> None:
    engine = engine_for(FAN_OUT, {"blob": BLOB, "items": list(range(50))})
    engine.start()
    engine.drain()
    again = engine.in_flight_dispatches()
    assert len(again) == 50
    assert max(len(encode(d.message)) for d in again) < 1024


def test_a_step_gets_the_inputs_it_references_in_with() -> None:
    engine = engine_for(
        "name: w\ninputs: {blob: {type: string}}\nsteps:\n  - {id: a, handler: h.x, with: {b: '${{ inputs.blob }}'}}\n",
        {"blob": "abc"},
    )
    engine.start()
    outbox = engine.drain().dispatches
    assert outbox[0].message.args == {"b": "abc"}


def test_hook_messages_do_not_carry_the_inputs() -> None:
    wf = compile_workflow(load_workflow("name: w\ninputs: {blob: {type: string}}\nsteps:\n  - {id: a, handler: h.x}\n"))
    hooks = HookRunner(None, clock=lambda: 1.0)  # type: ignore[arg-type]  # staging reads no store
    hooks.global_hooks = [HookDef(hook_id=7, name="n", kind="session", events=("run.finished",), handler="ops.n")]
    event = Event(seq=5, type=EventType.RUN_SUCCEEDED, data={})
    hooks.on_events(run_id="r1", partition=0, workflow=wf, inputs={"blob": BLOB}, events=[event])
    batch = hooks.take_batch()
    assert [len(r.message) < 1024 for r in batch.rows] == [True]  # the row stored in PostgreSQL
    assert all(len(encode(d.message)) < 1024 for d in hooks.committed())  # the message on the hooks queue


def test_a_version_1_message_with_inputs_still_decodes() -> None:
    old = b'{"run":"r1","step":"a","attempt":1,"handler":"h.x","partition":0,"inputs":{"blob":"x"},"v":1}'
    message = decode_step(old)
    assert (message.step, message.v) == ("a", 1)
    assert message.v in SUPPORTED_VERSIONS


def test_every_message_of_a_run_names_the_same_inputs_which_are_stored_once() -> None:
    engine = engine_for(FAN_OUT, {"blob": BLOB, "items": list(range(3))})
    engine.start()
    outbox = engine.drain().dispatches
    assert {d.message.inputs_digest for d in outbox} == {outbox[0].inputs.digest}  # type: ignore[union-attr]
    assert all(d.inputs is outbox[0].inputs for d in outbox)  # one reference, no copy per item
    assert outbox[0].inputs.values is engine.inputs  # type: ignore[union-attr]


# -- limits at validation ---------------------------------------------------------------------------


def test_a_literal_for_each_wider_than_the_limit_is_refused_at_its_position() -> None:
    found = problems(
        """\
        name: w
        steps:
          - id: each
            handler: h.x
            for_each: [1, 2, 3, 4]
            with: {n: "${{ item }}"}
        """,
        LimitSettings(for_each_items=3),
    )
    assert found == [
        "wf.yaml:5:15: step 'each' `for_each` has 4 items, over the limit of 3 items per for_each "
        "(STEPPE_LIMITS__FOR_EACH_ITEMS); split the list over several runs or steps, or raise the limit"
    ]


def test_too_many_step_instances_are_refused_naming_the_setting() -> None:
    found = problems(
        """\
        name: w
        steps:
          - {id: a, handler: h.x, for_each: [1, 2, 3], with: {n: "${{ item }}"}}
          - {id: b, handler: h.x, swarm: {replicas: 3}}
        """,
        LimitSettings(steps_per_run=5),
    )
    assert len(found) == 1
    assert found[0].startswith("wf.yaml:3:3: the workflow has 6 step instances")
    assert "limit of 5 per run (STEPPE_LIMITS__STEPS_PER_RUN)" in found[0]


@pytest.mark.parametrize(
    ("block", "label", "where"),
    [
        ("    for_each: *big\n    with: {n: '${{ item }}'}\n", "step 'b' `for_each`", "6:15"),
        ("    gate: {handler: h.gate, with: {v: *big}}\n", "step 'b' `gate.with`", "6:39"),
        ("    compensate: {handler: h.undo, with: {v: *big}}\n", "step 'b' `compensate.with`", "6:45"),
    ],
)
def test_aliases_count_in_full_in_every_block_that_travels(block: str, label: str, where: str) -> None:
    doc = (
        "name: w\nsteps:\n  - id: a\n    handler: h.x\n    with: {v: &big [" + ", ".join(["123456789"] * 20) + "]}\n"
        "  - id: b\n    handler: h.x\n" + block
    )
    limits = LimitSettings(payload_bytes=150)
    with pytest.raises(SpecValidationError) as info:
        load_workflow(doc, filename="wf.yaml", limits=limits)
    messages = [str(p) for p in info.value.problems if label in p.message]
    assert len(messages) == 1, info.value.problems
    assert (
        "bytes once YAML aliases are expanded, over the 150-byte payload limit (STEPPE_LIMITS__PAYLOAD_BYTES)"
        in (messages[0])
    )
    assert messages[0].split(": ")[0].startswith("wf.yaml:8:")


def test_a_hook_with_and_an_embedded_child_workflow_are_held_to_the_payload_limit() -> None:
    big = "[" + ", ".join(["123456789"] * 20) + "]"
    doc = f"""\
        name: w
        steps:
          - {{id: a, workflow: kid}}
        hooks:
          - {{on: run.succeeded, handler: h.hook, with: {{v: &big {big}}}}}
        workflows:
          kid:
            name: kid
            steps:
              - {{id: k, handler: h.x, with: {{v: *big}}}}
        """
    with pytest.raises(SpecValidationError) as info:
        load_workflow(textwrap.dedent(doc), filename="wf.yaml", limits=LimitSettings(payload_bytes=150))
    found = [str(p) for p in info.value.problems]
    assert len(found) == 2, found
    assert found[0].startswith("wf.yaml:5:48: hook #1 `with` is 207 bytes once YAML aliases are expanded")
    assert found[1].startswith("wf.yaml:10:37: child workflow 'kid': step 'k' `with` is 207 bytes")


def test_a_document_that_aliases_inflate_past_the_document_limit_is_refused() -> None:
    anchor = "x" * 4000
    steps = "".join(f"  - {{id: s{i}, handler: h.x, with: {{v: *big}}}}\n" for i in range(10))
    doc = f"name: w\nsteps:\n  - {{id: a, handler: h.x, with: {{v: &big {anchor}}}}}\n{steps}"
    assert len(doc) < 5000
    with pytest.raises(SpecValidationError) as info:
        load_workflow(doc, filename="wf.yaml", limits=LimitSettings(document_bytes=20_000))
    assert any(
        "once YAML aliases are expanded, over the 20,000-byte document limit (STEPPE_LIMITS__DOCUMENT_BYTES)"
        in p.message
        for p in info.value.problems
    ), info.value.problems


def test_within_the_limits_a_document_validates() -> None:
    load_workflow(FAN_OUT, limits=LimitSettings(for_each_items=2, steps_per_run=3))


# -- limits at submit (for_each from the inputs) ---------------------------------------------------


def test_a_for_each_over_inputs_is_measured_at_submit() -> None:
    definition = load_workflow(FAN_OUT).model_dump(mode="json", by_alias=True, exclude_none=True)
    limits = LimitSettings(for_each_items=100, steps_per_run=150)
    assert run_limits.run_problems(definition, {"items": list(range(100))}, limits) == []
    wide = run_limits.run_problems(definition, {"items": list(range(101))}, limits)
    assert wide == [
        "step 'each' `for_each` (from the inputs) has 101 items, over the limit of 100 items per for_each "
        "(STEPPE_LIMITS__FOR_EACH_ITEMS); split the list over several runs or steps, or raise the limit"
    ]
    many = run_limits.run_problems(definition, {"items": list(range(100))}, LimitSettings(steps_per_run=50))
    assert len(many) == 1
    assert "with these inputs the run has 101 step instances" in many[0]


# -- limits at run time ---------------------------------------------------------------------------


FROM_OUTPUT = """
name: w
steps:
  - {id: list, handler: h.x}
  - {id: each, handler: h.x, needs: [list], for_each: "${{ steps.list.output.items }}", with: {n: "${{ item }}"}}
"""


def test_a_for_each_from_a_step_output_wider_than_the_limit_fails_the_step_and_the_run() -> None:
    engine = engine_for(FROM_OUTPUT, {}, LimitSettings(for_each_items=5))
    engine.start()
    engine.drain()
    engine.on_result(ResultMessage(run="r1", step="list", attempt=1, status="succeeded", output={"items": [0] * 6}))
    outbox = engine.drain().dispatches
    assert outbox == []  # not one item dispatched
    record = engine.run.steps["each"]
    assert record.status is StepStatus.FAILED
    assert record.error is not None
    assert record.error["type"] == "RunLimitError"
    assert (
        "has 6 items, over the limit of 5 items per for_each (STEPPE_LIMITS__FOR_EACH_ITEMS)"
        in (record.error["message"])
    )
    assert engine.run.status is RunStatus.FAILED


def test_a_fan_out_that_takes_the_run_over_its_step_limit_fails() -> None:
    engine = engine_for(FROM_OUTPUT, {}, LimitSettings(steps_per_run=10))
    engine.start()
    engine.drain()
    engine.on_result(ResultMessage(run="r1", step="list", attempt=1, status="succeeded", output={"items": [0] * 10}))
    record = engine.run.steps["each"]
    assert record.status is StepStatus.FAILED
    assert record.error is not None
    assert "the run has 11 step instances" in record.error["message"]


def test_a_fan_out_within_the_limits_runs() -> None:
    engine = engine_for(FROM_OUTPUT, {}, LimitSettings(for_each_items=5, steps_per_run=6))
    engine.start()
    engine.drain()
    engine.on_result(ResultMessage(run="r1", step="list", attempt=1, status="succeeded", output={"items": [0] * 5}))
    outbox = engine.drain().dispatches
    assert len(outbox) == 5


def test_descendants_count_against_the_top_level_run() -> None:
    assert root_of("r-abc") == "r-abc"
    assert root_of("r-abc.kid.1.grandkid.2") == "r-abc"
    message = run_limits.too_many_descendants("r-abc", 1000, LimitSettings())
    assert "1,001 child runs under run r-abc" in message
    assert "STEPPE_LIMITS__DESCENDANTS_PER_RUN" in message


SELF_CALLING = {
    "name": "top",
    "steps": [{"id": f"s{i}", "workflow": "again"} for i in range(6)],
    "workflows": {"again": {"name": "again", "steps": [{"id": f"s{i}", "workflow": "again"} for i in range(6)]}},
}


def test_a_workflow_that_calls_itself_six_times_per_level_is_refused_at_submit() -> None:
    # 6 + 36 + … + 6**5 = 9,330 child runs without the limit (the depth limit alone allowed it).
    assert run_limits.certain_children(SELF_CALLING, 0, LimitSettings(descendants_per_run=10_000)) == 9330
    [message] = run_limits.run_problems(SELF_CALLING, {}, LimitSettings())
    assert message.startswith("the run would start at least 1,")
    assert "over the limit of 1,000 (STEPPE_LIMITS__DESCENDANTS_PER_RUN)" in message


def test_children_behind_a_when_are_left_to_the_dispatch_time_check() -> None:
    conditional = {**SELF_CALLING, "steps": [{"id": "s", "workflow": "again", "when": "${{ inputs.go }}"}]}
    assert run_limits.certain_children(conditional, 0, LimitSettings()) == 0
    assert run_limits.run_problems(conditional, {}, LimitSettings()) == []
