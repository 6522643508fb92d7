"""`${{ … }}` references: found, resolved with their JSON types, never evaluated."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.errors import TemplateError
from orchestrator.templates import (
    Reference,
    TemplateContext,
    find_references,
    is_template,
    parse_reference,
    resolve,
    resolve_secrets,
    scan,
)

CONTEXT: dict[str, Any] = {
    "inputs": {"order_id": "o-1", "qty": 2, "express": False, "meta": {"tags": ["a", "b"]}, "none": None},
    "steps": {
        "reserve": {"output": {"id": "r-9", "items": [{"sku": "tea"}, {"sku": "mug"}], "odd key": 1}},
        "charge": {"output": 12.5},
    },
    "run": {"id": "run-1", "workflow": "orders"},
}


def test_whole_string_reference_keeps_the_json_type() -> None:
    value = {
        "qty": "${{ inputs.qty }}",
        "express": "${{inputs.express}}",
        "items": "  ${{   steps.reserve.output.items }}  ",
        "charge": "${{ steps.charge.output }}",
        "none": "${{ inputs.none }}",
    }
    assert resolve(value, CONTEXT) == {
        "qty": 2,
        "express": False,
        "items": [{"sku": "tea"}, {"sku": "mug"}],
        "charge": 12.5,
        "none": None,
    }


def test_reference_inside_a_longer_string_is_rendered_as_text() -> None:
    assert resolve("order ${{ inputs.order_id }} x${{ inputs.qty }}", CONTEXT) == "order o-1 x2"
    assert resolve("flag=${{ inputs.express }} none=${{ inputs.none }}", CONTEXT) == "flag=false none=null"
    assert resolve("meta=${{ inputs.meta }}", CONTEXT) == 'meta={"tags":["a","b"]}'
    assert resolve("${{ run.id }}/${{ run.workflow }}", CONTEXT) == "run-1/orders"


def test_paths_with_indexes_and_quoted_keys() -> None:
    assert resolve("${{ steps.reserve.output.items[1].sku }}", CONTEXT) == "mug"
    assert resolve("${{ steps.reserve.output.items[-1].sku }}", CONTEXT) == "mug"
    assert resolve("${{ steps.reserve.output['odd key'] }}", CONTEXT) == 1
    assert resolve('${{ inputs.meta["tags"][0] }}', CONTEXT) == "a"


def test_other_template_syntaxes_are_ordinary_strings() -> None:
    literal = ["{{ inputs.qty }}", "$(whoami)", "`id`", "${ inputs.qty }", "$ {{ inputs.qty }}", "x }}"]
    assert resolve(literal, CONTEXT) == literal
    assert find_references(literal) == []
    assert not any(is_template(text) for text in literal)


def test_unclosed_template_is_an_error() -> None:
    with pytest.raises(TemplateError, match="unclosed template"):
        resolve("a ${{ inputs.qty", CONTEXT)
    _, issues = scan({"x": "a ${{ inputs.qty"})
    assert [issue.location for issue in issues] == [("x",)]


def test_escaped_template_is_literal() -> None:
    assert resolve("$${{ inputs.qty }}", CONTEXT, secrets={}) == "${{ inputs.qty }}"
    assert not is_template("$${{ inputs.qty }}")
    assert find_references("$${{ inputs.qty }}") == []


def test_nested_values_are_resolved_and_copied() -> None:
    value: dict[str, Any] = {"a": ["${{ inputs.qty }}", {"b": "${{ run.id }}"}], "n": 3, "t": True}
    resolved = resolve(value, CONTEXT)
    assert resolved == {"a": [2, {"b": "run-1"}], "n": 3, "t": True}
    assert value["a"][0] == "${{ inputs.qty }}"


def test_item_in_a_for_each_context() -> None:
    ctx = TemplateContext.from_mapping(CONTEXT).with_item({"sku": "tea", "qty": 3})
    assert resolve({"sku": "${{ item.sku }}", "all": "${{ item }}"}, ctx) == {
        "sku": "tea",
        "all": {"sku": "tea", "qty": 3},
    }
    assert resolve("${{ item }}", TemplateContext(item=None)) is None


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("${{ inputs.missing }}", "input 'missing' was not provided"),
        ("${{ steps.ship.output }}", "step 'ship' has no output"),
        ("${{ steps.reserve.output.nope }}", "no key 'nope' (keys: id, items, odd key)"),
        ("${{ steps.reserve.output.items[5] }}", "index 5 is out of range (the list has 2 items)"),
        ("${{ steps.reserve.output.items.sku }}", "is a list; index it with [0]"),
        ("${{ steps.charge.output.x }}", "is 12.5, which has no 'x' inside"),
        ("${{ item }}", "`item` is only defined inside a step with for_each"),
    ],
)
def test_missing_references_raise_a_clear_error(template: str, message: str) -> None:
    with pytest.raises(TemplateError) as info:
        resolve({"x": template}, CONTEXT)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("inner", "message"),
    [
        ("inputs.qty + 1", "templates are references only"),
        ("inputs.qty | upper", "templates are references only"),
        ("__import__('os')", "templates are references only"),
        ("env.HOME", "unknown reference 'env'"),
        ("steps.a", "a step is referenced through its output"),
        ("steps.a.status", "a step is referenced through its output"),
        ("run.secret", "${{ run.id }} or ${{ run.workflow }}"),
        ("secrets.A.b", "${{ secrets.NAME }}"),
        ("inputs", "name the input"),
        ("1 + 1", "is not a reference"),
    ],
)
def test_anything_but_a_reference_is_rejected(inner: str, message: str) -> None:
    with pytest.raises(TemplateError) as info:
        parse_reference(inner)
    assert message in str(info.value)
    with pytest.raises(TemplateError):
        resolve("${{ " + inner + " }}", CONTEXT)


def test_find_references_walks_nested_values() -> None:
    value = {
        "a": "${{ inputs.order_id }}",
        "b": ["x", {"c": "id=${{ steps.reserve.output.items[0].sku }} ${{ secrets.TOKEN }}"}],
        "d": 5,
    }
    refs = find_references(value)
    assert refs == [
        Reference("inputs", "${{ inputs.order_id }}", name="order_id", location=("a",), whole=True),
        Reference(
            "steps",
            "${{ steps.reserve.output.items[0].sku }}",
            step_id="reserve",
            path=("items", 0, "sku"),
            location=("b", 1, "c"),
        ),
        Reference("secrets", "${{ secrets.TOKEN }}", name="TOKEN", location=("b", 1, "c")),
    ]


def test_keep_leaves_secrets_for_the_worker() -> None:
    value = {"token": "${{ secrets.API_TOKEN }}", "header": "Bearer ${{ secrets.API_TOKEN }} for ${{ run.id }}"}
    kept = resolve(value, CONTEXT)
    assert kept == {"token": "${{ secrets.API_TOKEN }}", "header": "Bearer ${{ secrets.API_TOKEN }} for run-1"}
    assert resolve_secrets(kept, {"API_TOKEN": "s3cr3t"}) == {"token": "s3cr3t", "header": "Bearer s3cr3t for run-1"}


def test_missing_secret_names_it() -> None:
    with pytest.raises(TemplateError, match="secret 'API_TOKEN' is not set"):
        resolve_secrets("${{ secrets.API_TOKEN }}", {})


def test_resolve_with_secrets_in_one_stage() -> None:
    assert resolve("${{ secrets.A }}-${{ inputs.qty }}", CONTEXT, secrets={"A": "x"}) == "x-2"


def test_data_cannot_smuggle_a_secret_reference_into_the_worker_stage() -> None:
    context = {"inputs": {"evil": "${{ secrets.DB_PASSWORD }}", "nested": {"e": "a${{ secrets.DB_PASSWORD }}"}}}
    value = {"a": "${{ inputs.evil }}", "b": "x ${{ inputs.evil }}", "c": "${{ inputs.nested }}"}
    stage_one = resolve(value, context)
    final = resolve_secrets(stage_one, {"DB_PASSWORD": "hunter2"})
    assert final == {
        "a": "${{ secrets.DB_PASSWORD }}",
        "b": "x ${{ secrets.DB_PASSWORD }}",
        "c": {"e": "a${{ secrets.DB_PASSWORD }}"},
    }
    assert "hunter2" not in repr(final)


def test_escapes_survive_both_stages() -> None:
    value = {"lit": "$${{ x }}", "data": "${{ inputs.s }}"}
    final = resolve_secrets(resolve(value, {"inputs": {"s": "$${{ y }} ${{ z }}"}}), {})
    assert final == {"lit": "${{ x }}", "data": "$${{ y }} ${{ z }}"}


def test_is_template() -> None:
    assert is_template("${{ inputs.a }}")
    assert is_template("a ${{ inputs.a }} b")
    assert not is_template("plain")
    assert not is_template(3)
