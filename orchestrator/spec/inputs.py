"""Submit-time inputs: `--input k=v` parsing and checks against a workflow's declared inputs."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from orchestrator.errors import SubmitError
from orchestrator.settings import LimitSettings
from orchestrator.spec.diagnostics import Suggester, show, type_name
from orchestrator.spec.model import WorkflowSpec, matches_type
from orchestrator.spec.values import depth_message, text_problem, value_problem


def parse_cli_inputs(pairs: Iterable[str]) -> dict[str, Any]:
    """`["k=v", …]` as a dict; a value is JSON when it parses as JSON (`n=3`, `tags=["a"]`), else text."""
    values: dict[str, Any] = {}
    problems: list[str] = []
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            problems.append(f"--input {show(pair)} is not key=value: write it as --input name=value")
            continue
        if key in values:
            problems.append(f"--input {key} is given twice: keep one")
            continue
        try:
            values[key] = json.loads(raw)
        except ValueError:
            values[key] = raw
        except RecursionError:
            problems.append(f"--input {key} {depth_message()}")
    if problems:
        raise SubmitError("; ".join(problems))
    return values


def validate_inputs(
    spec: WorkflowSpec, provided: Mapping[str, Any], *, limits: LimitSettings | None = None
) -> dict[str, Any]:
    """The run's inputs: `provided` checked against the declarations, with defaults applied.

    Every declared input is present in the result (None when optional and without default),
    so `${{ inputs.X }}` always resolves. Raises SubmitError listing every problem.
    """
    limits = limits or LimitSettings()
    problems: list[str] = []
    declared = spec.inputs
    suggester = Suggester(declared)
    unusable: set[str] = set()  # not looked at further (showing a 100,000-level value would recurse)
    for name in provided:
        if (bad_name := text_problem(name)) is not None:
            problems.append(f"input name {show(name)} {bad_name}")
            unusable.add(name)
            continue
        found = value_problem(provided[name], at=(name,))
        if found is not None:
            problems.append(f"input {found[0]} {found[1]}")
            unusable.add(name)
            continue
        if name not in declared:
            known = ", ".join(declared) or "none"
            hint = suggester.hint(name) or f" (declared inputs: {known})"
            problems.append(f"unknown input {show(name)}{hint}")
    result: dict[str, Any] = {}
    for name, decl in declared.items():
        if name in provided:
            value = provided[name]
            if name not in unusable and not matches_type(value, decl.type):
                problems.append(f"input {name!r} must be of type {decl.type}, not {type_name(value)} ({show(value)})")
            result[name] = value
        elif decl.required:
            problems.append(f"input {name!r} is required: pass it with --input {name}=VALUE")
        else:
            result[name] = decl.default
    if not problems:
        size = len(json.dumps(result, ensure_ascii=False, default=str).encode())
        if size > limits.payload_bytes:
            problems.append(
                f"the inputs are {size:,} bytes, over the {limits.payload_bytes:,}-byte limit "
                "(STEPPE_LIMITS__PAYLOAD_BYTES): pass large data by reference (a URL or object-store key)"
            )
    if problems:
        raise SubmitError(f"inputs of workflow {spec.name!r} are not valid: " + "; ".join(problems))
    return result
