"""`uses:` steps expanded by the built-in map_reduce and pipeline patterns, and the errors users see."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from orchestrator.cli import spec_cmds
from orchestrator.errors import SpecProblem, SpecValidationError
from orchestrator.spec import WorkflowSpec, load_workflow
from orchestrator.workflow import compile_workflow


def load(doc: str) -> WorkflowSpec:
    return load_workflow(textwrap.dedent(doc), filename="wf.yaml")


def problems(doc: str) -> list[SpecProblem]:
    with pytest.raises(SpecValidationError) as info:
        load(doc)
    return info.value.problems


def steps(spec: WorkflowSpec) -> dict[str, dict[str, Any]]:
    """The steps as stored for the run (the definition the coordinator loads)."""
    stored = spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    return {step["id"]: step for step in stored["steps"]}


MAP_REDUCE = """\
name: wc
inputs:
  docs: {type: array, default: [a b, c]}
  go: {type: boolean, default: true}
steps:
  - id: fetch
    handler: builtin.echo
  - id: count
    uses: map_reduce
    description: count every document
    needs: [fetch]
    when: "${{ inputs.go }}"
    queue: text
    timeout: 5s
    retry: {max_attempts: 5}
    with:
      items: "${{ inputs.docs }}"
      map: {handler: text.count_words, with: {text: "${{ item }}"}, queue: fast}
      reduce: {handler: text.sum_counts, with: {top: 2}}
  - id: report
    handler: builtin.echo
    needs: [count]
    with: {words: "${{ steps.count.output.words }}"}
"""


def test_map_reduce_becomes_a_fan_out_and_a_reduce_that_keeps_the_step_id() -> None:
    spec = load(MAP_REDUCE)
    stored = steps(spec)
    assert list(stored) == ["fetch", "count-map", "count", "report"]
    assert stored["count-map"]["handler"] == "text.count_words"
    assert stored["count-map"]["for_each"] == "${{ inputs.docs }}"
    assert stored["count-map"]["with"] == {"text": "${{ item }}"}
    assert stored["count"]["handler"] == "text.sum_counts"
    assert stored["count"]["needs"] == ["count-map"]
    assert stored["count"]["with"] == {"top": 2, "results": "${{ steps.count-map.output }}"}
    assert stored["report"]["needs"] == ["count"]  # the rest of the workflow is untouched
    assert [e.step_ids for e in spec._expansions] == [["count-map", "count"]]


def test_the_entry_step_inherits_needs_and_when_and_every_step_the_settings() -> None:
    spec = load(MAP_REDUCE)
    compiled = compile_workflow(spec).steps
    map_step, reduce_step = compiled["count-map"], compiled["count"]
    assert map_step.needs == ("fetch",)
    assert map_step.when == "${{ inputs.go }}"
    assert reduce_step.when is None  # skipped with its entry step, as every dependent of a skipped step
    assert map_step.queue == "fast"  # the pattern's own setting wins
    assert reduce_step.queue == "text"
    assert map_step.timeout == reduce_step.timeout == 5.0
    assert map_step.retry.max_attempts == reduce_step.retry.max_attempts == 5
    assert spec.step("count").description == "count every document"


def test_the_stored_definition_is_the_expanded_workflow() -> None:
    spec = load(MAP_REDUCE)
    stored = spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert all("uses" not in step for step in stored["steps"])
    assert WorkflowSpec.model_validate(stored) == spec  # what the coordinator loads, without plugins


PIPELINE = """\
name: p
inputs:
  text: {type: string, default: hi}
steps:
  - id: report
    uses: pipeline
    with:
      input: "${{ inputs.text }}"
      stages:
        - {name: clean, handler: text.normalize}
        - {handler: text.word_frequencies, with: {min_length: 2}}
        - {handler: text.format_report, with: {title: Top}}
  - id: after
    handler: builtin.echo
    needs: [report]
    with: {line: "${{ steps.report.output.report }}"}
"""


def test_pipeline_chains_stages_and_passes_each_output_as_input() -> None:
    stored = steps(load(PIPELINE))
    assert list(stored) == ["report-clean", "report-2", "report", "after"]
    assert stored["report-clean"]["with"] == {"input": "${{ inputs.text }}"}
    assert stored["report-clean"]["needs"] == []
    assert stored["report-2"] == {
        "id": "report-2",
        "handler": "text.word_frequencies",
        "with": {"min_length": 2, "input": "${{ steps.report-clean.output }}"},
        "needs": ["report-clean"],
    }
    assert stored["report"]["with"] == {"title": "Top", "input": "${{ steps.report-2.output }}"}
    assert stored["report"]["needs"] == ["report-2"]


def test_pipeline_input_as_renames_the_argument() -> None:
    doc = PIPELINE.replace("      input:", "      input_as: text\n      input:")
    stored = steps(load(doc))
    assert stored["report-2"]["with"]["text"] == "${{ steps.report-clean.output }}"


# --- errors ---------------------------------------------------------------------------------


def test_unknown_pattern_lists_the_installed_ones_at_uses() -> None:
    [problem] = problems("name: wf\nsteps:\n  - id: a\n    uses: map_reduse\n")
    assert (problem.line, problem.column) == (4, 11)
    assert "unknown pattern 'map_reduse': installed patterns are map_reduce, pipeline" in problem.message
    assert "did you mean 'map_reduce'?" in problem.message


def test_config_errors_point_into_with() -> None:
    found = problems(
        """\
        name: wf
        steps:
          - id: a
            uses: map_reduce
            with:
              items: [1, 2]
              map: {handler: x.y, wth: {}}
              reduce: {handler: "not a handler"}
              extra: 1
        """
    )
    shown = [(p.line, p.column, p.message) for p in found]
    assert shown == [
        (7, 27, "unknown key 'wth' in step 'a', with.map; did you mean 'with'?"),
        (8, 25, "step 'a', with.reduce.handler: 'not a handler' must be a registered handler name such as "
         "payments.charge (ASCII letters, digits, '.', '_', '-'), never an import path"),
        (9, 7, "unknown key 'extra' in step 'a', with; valid keys: items, map, reduce, results_as"),
    ]  # fmt: skip


def test_missing_config_and_a_non_list_items_are_reported() -> None:
    found = problems("name: wf\nsteps:\n  - id: a\n    uses: map_reduce\n    with: {items: 3}\n")
    messages = [p.message for p in found]
    assert "step 'a', with: missing required key 'map'" in messages
    assert any("items: must be a list or one ${{ … }} reference to a list" in m for m in messages)


def test_keys_a_pattern_decides_are_refused_on_the_step() -> None:
    found = problems(
        "name: wf\nsteps:\n  - id: a\n    uses: pipeline\n    for_each: [1]\n    neds: []\n"
        "    with: {stages: [{handler: x.y}]}\n"
    )
    assert [(p.line, p.message) for p in found] == [
        (5, "step 'a' uses a pattern, which chooses its steps' 'for_each': remove `for_each` or `uses`, and put "
         "the pattern's settings under `with:`"),
        (6, "unknown key 'neds' in step 'a'; did you mean 'needs'?; a step with `uses:` may have circuit_breaker, "
         "description, id, needs, priority, queue, retry, timeout, uses, when, with"),
    ]  # fmt: skip


def test_step_settings_are_checked_once_at_their_position() -> None:
    [problem] = problems(
        "name: wf\nsteps:\n  - id: a\n    uses: pipeline\n    timeout: 10 parsecs\n"
        "    with: {stages: [{handler: x.y}]}\n"
    )
    assert (problem.line, problem.column) == (5, 14)
    assert problem.message.startswith("step 'a', timeout: invalid duration '10 parsecs'")


def test_an_unknown_need_is_reported_once_where_it_is_written() -> None:
    [problem] = problems(
        "name: wf\nsteps:\n  - id: a\n    uses: map_reduce\n    needs: [nope]\n"
        "    with: {items: [1], map: {handler: x.y}, reduce: {handler: x.z}}\n"
    )
    assert (problem.line, problem.column) == (5, 13)
    assert problem.message == "step 'a-map' needs 'nope', which is not a step in this workflow"


def test_a_problem_in_a_generated_step_is_shown_at_uses_with_the_pattern_named() -> None:
    [problem] = problems(
        """\
        name: wf
        steps:
          - id: src
            handler: builtin.echo
          - id: a
            uses: pipeline
            with:
              stages: [{handler: x.y, with: {v: "${{ steps.src.output }}"}}]
        """
    )
    assert (problem.line, problem.column) == (6, 5)
    assert problem.message == (
        "in what pattern 'pipeline' generated ('a'): ${{ steps.src.output }}: step 'a' does not depend on "
        "'src', so its output may not exist yet; add 'src' to needs (directly or through another step)"
    )


def test_a_cycle_through_a_pattern_step_is_printed_with_the_generated_ids() -> None:
    found = problems(
        """\
        name: wf
        steps:
          - id: b
            handler: builtin.echo
            needs: [a]
          - id: a
            uses: pipeline
            needs: [b]
            with: {stages: [{handler: x.y}, {handler: x.z}]}
        """
    )
    assert any(p.message.startswith("dependency cycle: ") and "a-1" in p.message for p in found), found


def test_pattern_error_from_expand_is_shown_at_with() -> None:
    [problem] = problems(
        "name: wf\nsteps:\n  - id: a\n    uses: pipeline\n"
        "    with: {stages: [{handler: x.y}, {handler: x.z, with: {input: 1}}]}\n"
    )
    assert (problem.line, problem.column) == (5, 11)
    assert "stage '2' sets 'input' in its `with`" in problem.message


def test_a_step_id_too_long_for_the_derived_ids_says_how_long_it_may_be() -> None:
    long_id = "s" * 62
    [problem] = problems(
        f"name: wf\nsteps:\n  - id: {long_id}\n    uses: map_reduce\n"
        "    with: {items: [1], map: {handler: x.y}, reduce: {handler: x.z}}\n"
    )
    assert (problem.line, problem.column) == (3, 9)
    assert "is too long for this pattern" in problem.message
    assert "shorten the id to 60 characters or fewer" in problem.message


def test_a_failed_expansion_does_not_cause_follow_on_errors_downstream() -> None:
    [problem] = problems(
        """\
        name: wf
        steps:
          - id: a
            uses: nothing_like_it
          - id: b
            handler: builtin.echo
            needs: [a]
            with: {v: "${{ steps.a.output.x }}"}
        """
    )
    assert problem.message.startswith("unknown pattern 'nothing_like_it'")


# --- the examples through `steppe validate` and `steppe plan` --------------------------------

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture
def app() -> typer.Typer:
    app = typer.Typer()
    spec_cmds.register(app)
    return app


def test_validate_shows_what_each_pattern_step_expanded_to(app: typer.Typer) -> None:
    result = CliRunner().invoke(app, ["validate", str(EXAMPLES / "pipeline.yaml")])
    assert result.exit_code == 0, result.output
    assert "workflow 'word-report' is valid (3 steps, 2 edges, 3 waves)" in result.output
    assert "step 'report' uses pipeline, expanded to: report-clean, report-count, report" in result.output


def test_plan_shows_the_sub_graph(app: typer.Typer) -> None:
    result = CliRunner().invoke(app, ["plan", str(EXAMPLES / "map_reduce.yaml"), "--format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["waves"] == [["count-map"], ["count"], ["announce"]]
    table = CliRunner().invoke(app, ["plan", str(EXAMPLES / "map_reduce.yaml")])
    assert "critical path (3 steps, length 3): count-map → count → announce" in table.output
    assert "step 'count' uses map_reduce, expanded to: count-map, count" in table.output


def test_a_value_the_loader_rejected_is_reported_once() -> None:
    [problem] = problems(
        "name: wf\nsteps:\n  - id: a\n    uses: pipeline\n    with: {stages: [{handler: !!python/object x}]}\n"
    )
    assert (problem.line, problem.column) == (5, 31)
    assert problem.message.startswith("tag !!python/object is not allowed")
