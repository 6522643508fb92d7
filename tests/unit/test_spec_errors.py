"""Every rejection of a workflow document names file:line:col and says what to do."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from orchestrator.errors import SpecProblem, SpecValidationError
from orchestrator.settings import LimitSettings
from orchestrator.spec import load_workflow, load_workflow_file

STEP = "name: wf\nsteps:\n  - id: a\n    handler: builtin.echo\n"


def problems(doc: str | bytes, **kwargs: object) -> list[SpecProblem]:
    source = textwrap.dedent(doc) if isinstance(doc, str) else doc
    with pytest.raises(SpecValidationError) as info:
        load_workflow(source, filename="wf.yaml", **kwargs)  # type: ignore[arg-type]
    return info.value.problems


def only(doc: str | bytes, **kwargs: object) -> SpecProblem:
    found = problems(doc, **kwargs)
    assert len(found) == 1, "\n".join(map(str, found))
    return found[0]


def at(problem: SpecProblem) -> tuple[int, int]:
    return problem.line, problem.column


# --- the YAML layer ------------------------------------------------------------------------


def test_nul_byte_is_rejected_at_its_position() -> None:
    problem = only(b"name: wf\nsteps: x\x00\n")
    assert at(problem) == (2, 9)
    assert "NUL character" in problem.message
    assert str(problem).startswith("wf.yaml:2:9: ")


def test_oversized_document_says_to_pass_data_by_reference() -> None:
    problem = only(STEP + "description: " + "x" * 2000 + "\n", limits=LimitSettings(document_bytes=1024))
    assert at(problem) == (1, 1)
    assert "over the" in problem.message
    assert "pass large data by reference" in problem.message


def test_alias_bomb_is_stopped() -> None:
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    problem = only("\n".join(levels) + "\n")
    assert "alias bomb" in problem.message
    assert problem.line == 5  # a4 holds 10**5 strings: the first level over the budget


def test_recursive_alias_is_rejected() -> None:
    problem = only("name: wf\nsteps: &s\n  - *s\n")
    assert at(problem) == (3, 5)
    assert "refers to a collection that contains it" in problem.message


def test_python_object_tag_is_rejected() -> None:
    found = problems(STEP + "description: !!python/object/apply:os.system [echo hi]\n")
    assert [at(p) for p in found] == [(5, 14)]
    assert "tag !!python/object/apply:os.system is not allowed" in found[0].message


def test_custom_tag_on_a_scalar_is_rejected() -> None:
    problem = only(STEP + "description: !secret abc\n")
    assert at(problem) == (5, 14)
    assert "tag !secret is not allowed" in problem.message


def test_duplicate_mapping_key_points_at_the_second_and_names_the_first() -> None:
    problem = only("name: wf\nsteps:\n  - id: a\n    handler: builtin.echo\n    handler: builtin.noop\n")
    assert at(problem) == (5, 5)
    assert "duplicate key 'handler' (first defined on line 4)" in problem.message


def test_top_level_must_be_a_mapping() -> None:
    problem = only("- id: a\n  handler: builtin.echo\n")
    assert at(problem) == (1, 1)
    assert "top level must be a mapping" in problem.message


@pytest.mark.parametrize(
    "depth",
    [
        150,  # past Steppe's limit (100), below libyaml's own flow-level limit
        100_000,  # past libyaml's limit too (libyaml >= 0.2.6 stops scanning first)
    ],
)
def test_deep_nesting_is_rejected_without_crashing(depth: int) -> None:
    problem = only(STEP + "    with: {x: " + "[" * depth + "]" * depth + "}\n")
    assert problem.line == 5
    assert problem.message == "nesting deeper than 100 levels: flatten this data"


def test_deep_block_nesting_is_rejected_without_crashing() -> None:
    nested = "".join("  " * i + f"k{i}:\n" for i in range(150)) + "  " * 150 + "v\n"
    problem = only("name: wf\nsteps:\n  - id: a\n    handler: builtin.noop\n    with:\n" + _indent(nested, 6))
    assert problem.message == "nesting deeper than 100 levels: flatten this data"


def _indent(text: str, width: int) -> str:
    return "".join(" " * width + line + "\n" for line in text.splitlines())


def test_syntax_error_has_position() -> None:
    problem = only("name: wf\nsteps: [a\nb: 1\n")
    assert problem.line == 3
    assert problem.message.startswith("invalid YAML:")


def test_empty_document() -> None:
    problem = only("")
    assert "document is empty" in problem.message


def test_more_than_one_document() -> None:
    problem = only(STEP + "---\n" + STEP)
    assert at(problem) == (5, 1)
    assert "one workflow per file" in problem.message


def test_invalid_utf8() -> None:
    problem = only(b"name: wf\nsteps: \xff\n")
    assert at(problem) == (2, 8)
    assert "not valid UTF-8" in problem.message


def test_non_finite_number() -> None:
    problem = only(STEP + "    with: {x: .inf}\n")
    assert at(problem) == (5, 15)
    assert "not a finite number" in problem.message


# --- the model layer -----------------------------------------------------------------------


def test_unknown_top_level_key_suggests_the_closest() -> None:
    problem = only(STEP + "hoks: []\n")
    assert at(problem) == (5, 1)
    assert problem.message == "unknown key 'hoks' in the workflow; did you mean 'hooks'?"


def test_unknown_step_key_suggests_the_closest() -> None:
    problem = only(STEP + "    neds: [b]\n")
    assert at(problem) == (5, 5)
    assert problem.message == "unknown key 'neds' in step 'a'; did you mean 'needs'?"


def test_unknown_nested_key_lists_valid_keys_when_nothing_is_close() -> None:
    problem = only(STEP + "    retry: {zzz: 1}\n")
    assert at(problem) == (5, 13)
    assert "unknown key 'zzz' in step 'a', retry; valid keys: max_attempts, backoff" in problem.message


def test_bad_duration() -> None:
    problem = only(STEP + "    timeout: 10 parsecs\n")
    assert at(problem) == (5, 14)
    assert "invalid duration '10 parsecs'" in problem.message
    assert "250ms, 10s, 5m, 1h" in problem.message


def test_type_error_is_mapped_to_the_value() -> None:
    problem = only(STEP + "    retry: {max_attempts: many}\n")
    assert at(problem) == (5, 27)
    assert problem.message == "step 'a', retry.max_attempts: must be a whole number, not a string 'many'"


def test_steps_must_be_a_list() -> None:
    problem = only("name: wf\nsteps: {a: 1}\n")
    assert at(problem) == (2, 8)
    assert "steps: must be a list" in problem.message


def test_no_steps() -> None:
    problem = only("name: wf\nsteps: []\n")
    assert "at least one step" in problem.message


@pytest.mark.parametrize(
    ("raw_id", "shown"),
    [
        ("'{}'", "'{}'"),
        ('"pay\\u202eyap"', "'pay\\u202eyap'"),  # RTL override: escaped in the message
        ("'1step'", "'1step'"),
        ("'" + "a" * 65 + "'", "'" + "a" * 58 + "…"),
    ],
)
def test_ids_outside_the_pattern_are_rejected(raw_id: str, shown: str) -> None:
    problem = only(f"name: wf\nsteps:\n  - id: {raw_id}\n    handler: builtin.echo\n")
    assert at(problem) == (3, 9)
    assert shown in problem.message
    assert "must start with a letter or _" in problem.message


@pytest.mark.parametrize(
    ("doc", "point", "shown"),
    [
        ('  - id: "a\\0b"\n    handler: builtin.echo\n', (3, 9), "'a\\x00b'"),
        ('  - id: a\n    handler: builtin.echo\n    with: {text: "x\\x00"}\n', (5, 18), "'x\\x00'"),
        ('  - id: a\n    handler: builtin.echo\n    with:\n      "k\\0": 1\n', (6, 7), "key 'k\\x00'"),
        ('  - id: a\n    handler: builtin.echo\n    with: {l: [ok, "\\u0000"]}\n', (5, 20), "'\\x00'"),
    ],
)
def test_nul_through_a_yaml_escape_is_rejected_where_it_is_written(
    doc: str, point: tuple[int, int], shown: str
) -> None:
    problem = only("name: wf\nsteps:\n" + doc)
    assert at(problem) == point
    assert f"{shown} holds a NUL character: remove it" in problem.message


def test_unpaired_surrogates_in_a_text_document_are_rejected() -> None:
    problem = only("name: wf\nsteps:\n  - id: a\n    handler: builtin.echo\n    with: {t: x\ud800}\n")
    assert at(problem) == (5, 16)
    assert "unpaired surrogate" in problem.message


def test_workflow_name_pattern() -> None:
    problem = only("name: my workflow\nsteps:\n  - {id: a, handler: builtin.echo}\n")
    assert at(problem) == (1, 7)
    assert "name: 'my workflow' may contain only ASCII letters" in problem.message


def test_handler_is_never_an_import_path() -> None:
    problem = only("name: wf\nsteps:\n  - id: a\n    handler: os:system\n")
    assert at(problem) == (4, 14)
    assert "registered handler name" in problem.message
    assert "never an import path" in problem.message


def test_exactly_one_of_handler_or_workflow() -> None:
    problem = only("name: wf\nsteps:\n  - id: a\n    handler: x.y\n    workflow: child\n")
    assert at(problem) == (3, 5)
    assert "step 'a': set exactly one of `handler`" in problem.message


def test_missing_required_key() -> None:
    problem = only("name: wf\nsteps:\n  - handler: x.y\n")
    assert at(problem) == (3, 5)
    assert problem.message == "step #1: missing required key 'id'"


def test_swarm_quorum_above_replicas() -> None:
    problem = only(STEP + "    swarm: {replicas: 3, quorum: 4}\n")
    assert at(problem) == (5, 12)
    assert "quorum 4 is more than the 3 replicas" in problem.message


def test_input_default_of_the_wrong_type() -> None:
    problem = only(STEP + "inputs:\n  n: {type: integer, default: many}\n")
    assert at(problem) == (6, 6)
    assert "the default 'many' is not of type integer" in problem.message


def test_undeclared_breaker_when_breakers_are_declared() -> None:
    doc = STEP + "    circuit_breaker: payments-ap\nbreakers:\n  payments-api: {fail_max: 3}\n"
    problem = only(doc)
    assert at(problem) == (5, 22)
    assert "'payments-ap' is not declared under `breakers:`" in problem.message
    assert "did you mean 'payments-api'?" in problem.message


# --- whole-document checks -----------------------------------------------------------------


def test_duplicate_step_id_points_at_the_second_and_names_the_first() -> None:
    problem = only(STEP + "  - id: a\n    handler: builtin.noop\n")
    assert at(problem) == (5, 9)
    assert "duplicate step id 'a': step #1 (line 3) already uses it" in problem.message


def test_unknown_need_suggests_close_ids() -> None:
    problem = only(STEP + "  - id: charge\n    handler: x.y\n    needs: [a, chrage]\n")
    assert at(problem) == (7, 16)
    assert "needs 'chrage', which is not a step in this workflow; did you mean 'charge'?" in problem.message


def test_need_listed_twice() -> None:
    problem = only(STEP + "  - id: b\n    handler: x.y\n    needs: [a, a]\n")
    assert at(problem) == (7, 16)
    assert "lists 'a' twice" in problem.message


def test_cycle_is_printed_as_a_path() -> None:
    doc = """\
        name: wf
        steps:
          - {id: a, handler: x.y, needs: [c]}
          - {id: b, handler: x.y, needs: [a]}
          - {id: c, handler: x.y, needs: [b]}
        """
    problem = only(doc)
    assert at(problem) == (3, 35)  # the need that closes the cycle
    assert "dependency cycle: a -> b -> c -> a" in problem.message


def test_self_cycle() -> None:
    problem = only(STEP + "    needs: [a]\n")
    assert at(problem) == (5, 13)
    assert "dependency cycle: a -> a" in problem.message


def test_reference_to_an_undeclared_input() -> None:
    doc = STEP + '    with: {x: "${{ inputs.ordr }}"}\ninputs:\n  order: {type: string}\n'
    problem = only(doc)
    assert at(problem) == (5, 15)
    assert "${{ inputs.ordr }} names an undeclared input" in problem.message
    assert "did you mean 'order'?" in problem.message


def test_reference_to_an_unknown_step() -> None:
    problem = only(STEP + '    with: {x: "${{ steps.b.output }}"}\n')
    assert at(problem) == (5, 15)
    assert "${{ steps.b.output }} names an unknown step" in problem.message


def test_reference_to_a_step_that_is_not_an_ancestor() -> None:
    doc = STEP + '  - id: b\n    handler: x.y\n  - id: c\n    handler: x.y\n    with: {v: "${{ steps.b.output }}"}\n'
    problem = only(doc)
    assert at(problem) == (9, 15)
    assert "step 'c' does not depend on 'b'" in problem.message
    assert "add 'b' to needs" in problem.message


def test_reference_to_an_indirect_ancestor_is_fine() -> None:
    doc = (
        STEP
        + "  - {id: b, handler: x.y, needs: [a]}\n"
        + '  - {id: c, handler: x.y, needs: [b], with: {v: "${{ steps.a.output }}"}}\n'
    )
    assert load_workflow(doc).step("c").with_ == {"v": "${{ steps.a.output }}"}


def test_own_output_only_in_compensate_and_gate() -> None:
    doc = STEP + '    with: {x: "${{ steps.a.output }}"}\n'
    problem = only(doc)
    assert at(problem) == (5, 15)
    assert "a step cannot use its own output" in problem.message
    ok = (
        STEP
        + '    compensate: {handler: x.undo, with: {id: "${{ steps.a.output.id }}"}}\n'
        + '    gate: {handler: x.check, with: {out: "${{ steps.a.output }}"}}\n'
    )
    assert load_workflow(ok).step("a").gate is not None


def test_item_outside_for_each() -> None:
    problem = only(STEP + '    with: {x: "${{ item }}"}\n')
    assert at(problem) == (5, 15)
    assert "`item` is only defined in the `with` of a step that has for_each" in problem.message


def test_expression_in_a_template_is_not_a_reference() -> None:
    problem = only(STEP + '    with: {x: "n=${{ inputs.n + 1 }}"}\ninputs: {n: {type: integer}}\n')
    assert at(problem) == (5, 15)
    assert "is not a reference" in problem.message
    assert "no expressions" in problem.message


def test_unknown_reference_root() -> None:
    problem = only(STEP + '    with: {x: "${{ env.HOME }}"}\n')
    assert "unknown reference 'env'" in problem.message


def test_when_must_be_a_single_reference() -> None:
    problem = only(STEP + '    when: "${{ run.id }} == 1"\n')
    assert at(problem) == (5, 11)
    assert "step 'a', when: must be true, false or one ${{ … }} reference" in problem.message


def test_for_each_must_be_a_list_or_a_single_reference() -> None:
    problem = only(STEP + "    for_each: items\n")
    assert at(problem) == (5, 15)
    assert "step 'a', for_each: must be a list or one ${{ … }} reference" in problem.message


def test_secrets_cannot_decide_when() -> None:
    problem = only(STEP + '    when: "${{ secrets.FLAG }}"\n')
    assert at(problem) == (5, 11)
    assert "never sees secrets" in problem.message


def test_hooks_cannot_reference_step_outputs() -> None:
    problem = only(STEP + 'hooks:\n  - on: step.failed\n    handler: x.y\n    with: {o: "${{ steps.a.output }}"}\n')
    assert at(problem) == (8, 15)
    assert "hooks run on events" in problem.message


def test_every_problem_is_reported_in_document_order() -> None:
    doc = """\
        name: wf
        stepz: 1
        steps:
          - {id: a, handler: x.y, needs: [nope]}
          - {id: a, handler: x.y, timeout: soon}
        """
    found = problems(doc)
    assert [at(p) for p in found] == [(2, 1), (4, 35), (5, 10), (5, 36)]


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(SpecValidationError) as info:
        load_workflow_file(tmp_path / "missing.yaml")
    assert "cannot read the file" in str(info.value)


# --- things the loader accepts on purpose --------------------------------------------------


def test_on_key_stays_a_string_and_timestamps_stay_text() -> None:
    spec = load_workflow(STEP + "    with: {at: 2024-01-01}\nhooks:\n  - on: [run.*]\n    handler: x.y\n")
    assert spec.hooks[0].on == ["run.*"]
    assert spec.step("a").with_ == {"at": "2024-01-01"}


def test_merge_keys_are_supported() -> None:
    doc = """\
        name: wf
        x-common: &common {handler: builtin.echo, queue: io, timeout: 5s}
        steps:
          - <<: *common
            id: a
          - <<: *common
            id: b
            queue: cpu
        """
    with pytest.raises(SpecValidationError) as info:
        load_workflow(textwrap.dedent(doc))
    # Merges work; the extra top-level key is still reported as unknown.
    assert [p.message.split(";")[0] for p in info.value.problems] == ["unknown key 'x-common' in the workflow"]
    doc = textwrap.dedent(doc).replace("x-common: &common", "description: &common")
    with pytest.raises(SpecValidationError):
        load_workflow(doc)  # description must be a string
    ok = "name: wf\nsteps:\n  - &a {id: a, handler: builtin.echo, queue: io}\n  - <<: *a\n    id: b\n"
    spec = load_workflow(ok)
    assert spec.queue_of(spec.step("b")) == "io"
    assert spec.step("b").handler == "builtin.echo"


def test_item_cannot_decide_for_each_or_when() -> None:
    problem = only(STEP + '    for_each: ["${{ item }}"]\n')
    assert at(problem) == (5, 16)
    assert "`for_each` is decided before there are items" in problem.message


def test_empty_with_and_needs_mean_none() -> None:
    spec = load_workflow(STEP + "    with:\n    needs:\n")
    assert (spec.step("a").with_, spec.step("a").needs) == ({}, [])
