"""Hostile input (docs/reliability.md 17): rejected before any write, with a specific message, nothing evaluated."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from orchestrator.errors import SpecValidationError, SubmitError
from tests.faults.harness import FaultEnv
from tests.faults.invariants import check_event_logs, check_nothing_stranded, report, wait_terminal

pytestmark = [pytest.mark.faults, pytest.mark.integration]

PWNED = Path(f"/tmp/steppe-pwned-{uuid.uuid4().hex[:8]}")
OK_STEP = "  - {id: a, handler: builtin.echo}\n"


def _bomb() -> str:
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, 8)]
    return "\n".join(lines) + "\nname: bomb\nsteps:\n  - {id: a, handler: builtin.echo, with: {v: *l7}}\n"


# name -> (document, inputs, message that the rejection must contain)
CASES: dict[str, tuple[str, dict[str, Any] | None, str]] = {
    "malformed-yaml": ("name: x\nsteps: [\n  - {id: a, handler: builtin.echo\n", None, "invalid YAML"),
    "python-object-tag": (
        f"name: x\nsteps:\n  - id: a\n    handler: builtin.echo\n"
        f"    with: !!python/object/apply:os.system ['touch {PWNED}']\n",
        None,
        "tag !!python/object/apply:os.system is not allowed",
    ),
    "alias-bomb": (_bomb(), None, "alias bomb"),
    "cycle": (
        "name: x\nsteps:\n  - {id: a, handler: builtin.echo, needs: [c]}\n"
        "  - {id: b, handler: builtin.echo, needs: [a]}\n  - {id: c, handler: builtin.echo, needs: [b]}\n",
        None,
        "dependency cycle: a -> b -> c -> a",
    ),
    "unknown-handler": (
        "name: x\nsteps:\n  - {id: a, handler: payments.charge}\n",
        None,
        "unknown handler(s): payments.charge",
    ),
    "import-path-handler": ("name: x\nsteps:\n  - {id: a, handler: 'os:system'}\n", None, "never an import path"),
    "duplicate-ids": ("name: x\nsteps:\n" + OK_STEP + OK_STEP, None, "duplicate step id 'a'"),
    "10MB-inputs": (
        "name: x\ninputs: {blob: {type: string}}\nsteps:\n  - {id: a, handler: builtin.echo}\n",
        {"blob": "x" * (10 * 1024 * 1024)},
        "over the 1,048,576-byte limit",
    ),
    "17MB-document": ("name: x\nsteps:\n" + OK_STEP + "# " + "x" * (17 * 1024 * 1024) + "\n", None, "MiB limit"),
    "deep-nesting": (
        "name: x\nsteps:\n  - {id: a, handler: builtin.echo, with: {v: " + "[" * 150 + "]" * 150 + "}}\n",
        None,
        "nesting deeper than 100 levels",
    ),
    "nul-byte": ("name: x\nsteps:\n  - {id: a\x00b, handler: builtin.echo}\n", None, "NUL character"),
    "braces-in-id": ("name: x\nsteps:\n  - {id: 'a{}', handler: builtin.echo}\n", None, "must start with a letter"),
    "rtl-override-in-id": (
        'name: x\nsteps:\n  - {id: "pay\u202egnp", handler: builtin.echo}\n',
        None,
        "must start with a letter",
    ),
    "expression-template": (
        "name: x\nsteps:\n  - {id: a, handler: builtin.echo, with: {v: '${{ 7*7 }}'}}\n",
        None,
        "is not a reference",
    ),
    "call-template": (
        "name: x\nsteps:\n  - {id: a, handler: builtin.echo, with: {v: \"${{ __import__('os').system('id') }}\"}}\n",
        None,
        "no expressions, filters or function ca",
    ),
    "dunder-template": (
        "name: x\ninputs: {x: {type: string}}\nsteps:\n"
        "  - {id: a, handler: builtin.echo, with: {v: '${{ inputs.__class__.__mro__ }}'}}\n",
        None,
        "names an undeclared input",
    ),
    "sql-in-name": ('name: "x\'; DROP TABLE workflow_runs; --"\nsteps:\n' + OK_STEP, None, "may contain only ASCII"),
    "secret-in-when": (
        "name: x\nsteps:\n  - {id: a, handler: builtin.echo, when: '${{ secrets.TOKEN }}'}\n",
        None,
        "never sees secrets",
    ),
}


@pytest.fixture
def submitter_env(faults: FaultEnv) -> FaultEnv:
    """No processes: a registered (fake) worker that advertises the built-in handlers."""
    info = {"id": "fake", "handlers": ["builtin.echo", "builtin.noop"], "heartbeat": time.time()}
    faults.redis.set(faults.keys.worker("fake"), orjson.dumps(info), ex=300)
    faults.redis.zadd(faults.keys.workers, {"fake": time.time()})
    return faults


def written(env: FaultEnv) -> dict[str, int]:
    with env.store.connection() as conn:
        counts = {
            table: conn.execute(f"SELECT count(*) AS n FROM {table}").fetchone()["n"]
            for table in ("workflow_runs", "workflow_events", "workflow_steps", "dead_letters", "run_commands")
        }
    streams = [env.keys.control_stream(p) for p in range(env.settings.coordinator.partitions)]
    counts["control entries"] = sum(env.redis.xlen(s) for s in streams)
    return counts


@pytest.mark.parametrize("case", list(CASES))
def test_17_hostile_input_is_rejected_before_any_write(submitter_env: FaultEnv, case: str) -> None:
    env = submitter_env
    document, inputs, message = CASES[case]
    started = time.monotonic()
    with pytest.raises((SpecValidationError, SubmitError)) as caught:
        env.submitter.submit(env.submitter.load(document), inputs=inputs)
    took_s = time.monotonic() - started
    text = str(caught.value) if isinstance(caught.value, SubmitError) else " | ".join(map(str, caught.value.problems))
    assert message in text, text
    assert set(written(env).values()) == {0}, written(env)
    assert not PWNED.exists(), "a YAML tag was evaluated"
    assert took_s < 10
    report(f"17-hostile-{case}", rejected_in_s=took_s, message=repr(text[:90]))


def test_17_reference_to_an_input_of_a_workflow_without_inputs_is_rejected(submitter_env: FaultEnv) -> None:
    document = "name: x\nsteps:\n  - {id: a, handler: builtin.echo, with: {v: '${{ inputs.__class__ }}'}}\n"
    with pytest.raises(SpecValidationError, match="undeclared input"):
        submitter_env.submitter.submit(submitter_env.submitter.load(document))
    assert set(written(submitter_env).values()) == {0}


def test_17_oversized_literal_step_arguments_are_rejected_at_submit(submitter_env: FaultEnv) -> None:
    document = "name: x\nsteps:\n  - {id: a, handler: builtin.echo, with: {v: '" + "x" * (10 * 1024 * 1024) + "'}}\n"
    with pytest.raises((SpecValidationError, SubmitError), match="limit"):
        submitter_env.submitter.submit(submitter_env.submitter.load(document))
    assert set(written(submitter_env).values()) == {0}


LITERALS = {
    "jinja": "{{ 7*7 }}",
    "jinja-block": "{% for x in range(9) %}{{ x }}{% endfor %}",
    "shell": "$(touch {pwned})",
    "backticks": "`touch {pwned}`",
    "escaped-reference": "$${{ inputs.x }}",
    "format": "{0.__class__}",
}


def test_17_non_reference_template_syntax_is_an_ordinary_string(faults: FaultEnv) -> None:
    """`{{ … }}`, `$(…)` and backticks are accepted — as text, passed through unevaluated."""
    faults.start(workers=1)
    values = {k: v.format(pwned=PWNED) if "{pwned}" in v else v for k, v in LITERALS.items()}
    inputs_doc = "inputs: {x: {type: string}}\n"
    with_ = ", ".join(f"{k.replace('-', '_')}: {orjson.dumps(v).decode()}" for k, v in values.items())
    run_id = faults.submit(
        f"name: literals\n{inputs_doc}steps:\n  - id: echo\n    handler: builtin.echo\n"
        f"    with: {{{with_}, from_input: '${{{{ inputs.x }}}}'}}\n",
        {"x": "${{ secrets.PATH }} and {{ 7*7 }}"},
    )
    doc = wait_terminal(faults, [run_id], deadline=20)[run_id]
    assert doc["status"] == "succeeded", doc
    output = doc["steps"]["echo"]["output"]
    expected = {k.replace("-", "_"): v for k, v in values.items()}
    expected["escaped_reference"] = "${{ inputs.x }}"  # `$${{` is the escape for a literal `${{`
    expected["from_input"] = "${{ secrets.PATH }} and {{ 7*7 }}"  # an input is data, never a template
    assert output == expected
    assert not PWNED.exists()
    check_event_logs(faults, [run_id])
    check_nothing_stranded(faults)
