"""`${{ … }}` references in step arguments (docs/spec.md §3): found, checked and resolved without evaluation.

A template is a reference, never an expression:

    ${{ inputs.NAME[.path] }}   ${{ steps.ID.output[.path] }}   ${{ item[.path] }}
    ${{ run.id }}   ${{ run.workflow }}   ${{ secrets.NAME }}

where a path is any mix of `.key`, `[0]` and `["any key"]`. A string that is exactly one
reference (surrounding whitespace aside) becomes the referenced JSON value; references inside
longer strings are rendered as text (JSON for mappings and lists, `true`/`false`/`null`).
`{{ … }}`, `$(…)`, `${ … }` and backticks are ordinary text, and `$${{` is a literal `${{`.

Secrets are resolved in two stages: the coordinator calls `resolve(..., secrets="keep")`,
which leaves `${{ secrets.X }}` in place, and the worker calls `resolve_secrets()` with its
environment. So that data cannot smuggle a template into the second stage (an input whose
value is "${{ secrets.DB_PASSWORD }}"), "keep" escapes `${{` in every value it substitutes
as `$${{`, and the second stage turns each `$${{` back into `${{`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from orchestrator.errors import TemplateError

Path = tuple[str | int, ...]

ROOTS = ("inputs", "steps", "item", "run", "secrets")
RUN_FIELDS = ("id", "workflow")
FORMS = "inputs.NAME, steps.ID.output, item, run.id, run.workflow or secrets.NAME"

# `$${{` (escape) | `${{ … }}` (template) | `${{` without its closing braces.
_TOKEN = re.compile(r"\$\$\{\{|\$\{\{(.*?)\}\}|\$\{\{", re.DOTALL)
_IDENT = r"[A-Za-z_][A-Za-z0-9_-]*"
_WHOLE = re.compile(r"\$\{\{((?:(?!\}\}).)*)\}\}", re.DOTALL)
_SEGMENT = re.compile(rf"\.({_IDENT})|\[(-?\d+)\]|\[\"([^\"\\]*)\"\]|\['([^'\\]*)'\]")
_ROOT = re.compile(rf"({_IDENT})")
_SECRET_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_STEP_ID = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")


@dataclass(frozen=True, slots=True)
class Reference:
    """One well-formed `${{ … }}` reference.

    `name` is the input, run field or secret named; `step_id` is set for `steps.ID.output`;
    `path` is what follows (after `.output` for steps, after the name for inputs, the whole
    path for `item`). `location` is where the string holding it sits inside the scanned value,
    and `whole` tells whether the reference is that entire string.
    """

    root: str
    raw: str
    name: str | None = None
    step_id: str | None = None
    path: Path = ()
    location: Path = ()
    whole: bool = False

    def __str__(self) -> str:
        return self.raw.strip()


@dataclass(frozen=True, slots=True)
class TemplateIssue:
    """A `${{ … }}` that is not a valid reference, at `location` inside the scanned value."""

    raw: str
    message: str
    location: Path = ()


class _Missing:
    def __repr__(self) -> str:
        return "<no item>"


NO_ITEM: Any = _Missing()


@dataclass(frozen=True, slots=True)
class TemplateContext:
    """What references resolve against: inputs, outputs of finished steps, the current item, the run."""

    inputs: Mapping[str, Any] = field(default_factory=dict)
    outputs: Mapping[str, Any] = field(default_factory=dict)  # step id -> its output
    item: Any = NO_ITEM
    run_id: str | None = None
    workflow: str | None = None

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> TemplateContext:
        """From `{"inputs": …, "steps": {id: {"output": …}}, "item": …, "run": {"id", "workflow"}}`."""
        steps = data.get("steps") or {}
        run = data.get("run") or {}
        return cls(
            inputs=data.get("inputs") or {},
            outputs={sid: entry["output"] for sid, entry in steps.items() if "output" in entry},
            item=data.get("item", NO_ITEM),
            run_id=run.get("id"),
            workflow=run.get("workflow"),
        )

    def with_item(self, item: Any) -> TemplateContext:
        return replace(self, item=item)


def is_template(value: object) -> bool:
    """Whether `value` is a string holding at least one `${{ … }}` (escaped `$${{` aside)."""
    return isinstance(value, str) and "${{" in value and any(m.group() != "$${{" for m in _TOKEN.finditer(value))


def whole_reference(value: str) -> str | None:
    """The inner text of `value` when it is exactly one `${{ … }}` (whitespace around it aside)."""
    match = _WHOLE.fullmatch(value.strip())
    return None if match is None else match.group(1)


def parse_reference(inner: str) -> Reference:
    """Parse the text between `${{` and `}}`; raise TemplateError saying what is wrong."""
    text = inner.strip()
    raw = "${{ " + text + " }}"
    root_match = _ROOT.match(text)
    if root_match is None:
        raise TemplateError(f"{raw} is not a reference: templates are references only ({FORMS})")
    root = root_match.group(1)
    path = _parse_path(text, root_match.end(), raw)
    if root == "inputs":
        if not path or not isinstance(path[0], str):
            raise TemplateError(f"{raw}: name the input, as in ${{{{ inputs.NAME }}}}")
        return Reference("inputs", raw, name=path[0], path=path[1:])
    if root == "steps":
        return _parse_step_reference(raw, path)
    if root == "item":
        return Reference("item", raw, path=path)
    if root == "run":
        if len(path) != 1 or path[0] not in RUN_FIELDS:
            raise TemplateError(f"{raw}: a run reference is ${{{{ run.id }}}} or ${{{{ run.workflow }}}}")
        return Reference("run", raw, name=str(path[0]))
    if root == "secrets":
        if len(path) != 1 or not isinstance(path[0], str) or not _SECRET_NAME.fullmatch(path[0]):
            raise TemplateError(f"{raw}: a secret reference is ${{{{ secrets.NAME }}}} (letters, digits, _)")
        return Reference("secrets", raw, name=path[0])
    raise TemplateError(f"{raw}: unknown reference {root!r}; a reference starts with {FORMS}")


def _parse_path(text: str, pos: int, raw: str) -> Path:
    path: list[str | int] = []
    while pos < len(text):
        match = _SEGMENT.match(text, pos)
        if match is None:
            raise TemplateError(
                f'{raw} is not a reference: {text[pos:]!r} is not a `.key`, `[0]` or `["key"]`; '
                f"templates are references only (no expressions, filters or function calls)"
            )
        key, index, dq, sq = match.groups()
        path.append(int(index) if index is not None else key if key is not None else dq if dq is not None else sq)
        pos = match.end()
    return tuple(path)


def _parse_step_reference(raw: str, path: Path) -> Reference:
    if not path or not isinstance(path[0], str) or not _STEP_ID.fullmatch(path[0]):
        raise TemplateError(f"{raw}: name the step, as in ${{{{ steps.ID.output }}}}")
    if len(path) < 2 or path[1] != "output":
        raise TemplateError(f"{raw}: a step is referenced through its output, as in ${{{{ steps.{path[0]}.output }}}}")
    return Reference("steps", raw, step_id=path[0], path=path[2:])


def scan(value: Any, location: Path = ()) -> tuple[list[Reference], list[TemplateIssue]]:
    """Every reference and every malformed template in a nested value of dicts, lists and strings."""
    references: list[Reference] = []
    issues: list[TemplateIssue] = []
    _scan(value, location, references, issues)
    return references, issues


def find_references(value: Any) -> list[Reference]:
    """Every well-formed reference in `value` (see `scan` for malformed ones too)."""
    return scan(value)[0]


def _scan(value: Any, location: Path, references: list[Reference], issues: list[TemplateIssue]) -> None:
    if isinstance(value, str):
        if "${{" in value:
            _scan_string(value, location, references, issues)
    elif isinstance(value, dict):
        for key, item in value.items():
            _scan(item, (*location, key), references, issues)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _scan(item, (*location, index), references, issues)


def _scan_string(text: str, location: Path, references: list[Reference], issues: list[TemplateIssue]) -> None:
    whole = whole_reference(text) is not None
    for match in _TOKEN.finditer(text):
        if match.group() == "$${{":
            continue
        inner = match.group(1)
        if inner is None:
            message = f"unclosed template in {text!r}: end it with }}}} (write $${{{{ for a literal ${{{{)"
            issues.append(TemplateIssue(match.group(), message, location))
            continue
        try:
            reference = parse_reference(inner)
        except TemplateError as e:
            issues.append(TemplateIssue(match.group(), str(e), location))
            continue
        references.append(replace(reference, location=location, whole=whole))


Resolver = Callable[[Reference], tuple[bool, Any]]


def resolve(
    value: Any,
    context: TemplateContext | Mapping[str, Any],
    *,
    secrets: Literal["keep"] | Mapping[str, str] = "keep",
) -> Any:
    """A copy of `value` with every reference replaced; TemplateError when one cannot be resolved."""
    ctx = context if isinstance(context, TemplateContext) else TemplateContext.from_mapping(context)
    keep = isinstance(secrets, str)
    if keep and secrets != "keep":
        raise ValueError("secrets must be 'keep' or a mapping of secret names to values")

    def lookup(reference: Reference) -> tuple[bool, Any]:
        if reference.root == "secrets":
            if keep:
                return False, None
            assert not isinstance(secrets, str)
            return True, _secret(reference, secrets)
        return True, _lookup(reference, ctx)

    return _render(value, lookup, final=not keep)


def resolve_secrets(value: Any, env: Mapping[str, str]) -> Any:
    """The worker's stage: resolve `${{ secrets.NAME }}` from `env` and turn `$${{` back into `${{`."""

    def lookup(reference: Reference) -> tuple[bool, Any]:
        if reference.root != "secrets":
            return False, None
        return True, _secret(reference, env)

    return _render(value, lookup, final=True)


def _secret(reference: Reference, env: Mapping[str, str]) -> str:
    assert reference.name is not None
    if reference.name not in env:
        raise TemplateError(
            f"secret {reference.name!r} is not set: define the environment variable "
            f"{reference.name} for every worker that runs this step"
        )
    return env[reference.name]


def _render(value: Any, lookup: Resolver, *, final: bool) -> Any:
    if isinstance(value, str):
        return _render_string(value, lookup, final=final) if "${{" in value else value
    if isinstance(value, dict):
        return {key: _render(item, lookup, final=final) for key, item in value.items()}
    if isinstance(value, list):
        return [_render(item, lookup, final=final) for item in value]
    return value


def _render_string(text: str, lookup: Resolver, *, final: bool) -> Any:
    inner = whole_reference(text)
    if inner is not None:
        found, resolved = lookup(parse_reference(inner))
        if not found:
            return text
        return resolved if final else _escape(resolved)
    parts: list[str] = []
    pos = 0
    for match in _TOKEN.finditer(text):
        parts.append(text[pos : match.start()])
        pos = match.end()
        if match.group() == "$${{":
            parts.append("${{" if final else "$${{")
        elif match.group(1) is None:
            raise TemplateError(f"unclosed template in {text!r}: end it with }}}} (write $${{{{ for a literal ${{{{)")
        else:
            found, resolved = lookup(parse_reference(match.group(1)))
            if not found:
                parts.append(match.group())
            else:
                rendered = as_text(resolved)
                parts.append(rendered if final else rendered.replace("${{", "$${{"))
    parts.append(text[pos:])
    return "".join(parts)


def _escape(value: Any) -> Any:
    """Protect substituted data from the second stage (see the module docstring)."""
    if isinstance(value, str):
        return value.replace("${{", "$${{") if "${{" in value else value
    if isinstance(value, dict):
        return {key: _escape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_escape(item) for item in value]
    return value


def as_text(value: Any) -> str:
    """How a value reads inside a longer string: text as is, everything else as JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def _lookup(reference: Reference, ctx: TemplateContext) -> Any:
    if reference.root == "inputs":
        assert reference.name is not None
        if reference.name not in ctx.inputs:
            raise TemplateError(f"{reference}: input {reference.name!r} was not provided; pass it with --input")
        base = ctx.inputs[reference.name]
    elif reference.root == "steps":
        assert reference.step_id is not None
        if reference.step_id not in ctx.outputs:
            raise TemplateError(
                f"{reference}: step {reference.step_id!r} has no output (it has not succeeded, or was skipped)"
            )
        base = ctx.outputs[reference.step_id]
    elif reference.root == "item":
        if ctx.item is NO_ITEM:
            raise TemplateError(f"{reference}: `item` is only defined inside a step with for_each")
        base = ctx.item
    else:
        value = ctx.run_id if reference.name == "id" else ctx.workflow
        if value is None:
            raise TemplateError(f"{reference}: the run's {reference.name} is not known here")
        return value
    return follow(base, reference.path, str(reference))


def follow(value: Any, path: Path, what: str = "value") -> Any:
    """`value` at `path` (keys and list indexes); TemplateError naming the first step that fails."""
    for i, segment in enumerate(path):
        where = what if not path[:i] else f"{what} at {_show_path(path[:i])}"
        if isinstance(value, dict):
            if str(segment) not in value:
                keys = ", ".join(sorted(map(str, value))[:10]) or "none"
                raise TemplateError(f"{where}: no key {segment!r} (keys: {keys})")
            value = value[str(segment)]
        elif isinstance(value, list):
            if not isinstance(segment, int):
                raise TemplateError(f"{where}: is a list; index it with [0], not .{segment}")
            if not -len(value) <= segment < len(value):
                raise TemplateError(f"{where}: index {segment} is out of range (the list has {len(value)} items)")
            value = value[segment]
        else:
            raise TemplateError(f"{where}: is {as_text(value)[:40]}, which has no {segment!r} inside")
    return value


def _show_path(path: Path) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)
