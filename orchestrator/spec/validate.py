"""Load and validate a workflow document, collecting every problem with its file:line:col.

Three layers each report what they find, and all of it is raised at once as a
SpecValidationError: the safe YAML loader (syntax, tags, duplicate keys, limits), the pydantic
models (types, unknown keys, patterns), and the checks that need the whole document (step
ids, `needs`, cycles, `${{ … }}` references), which run on the raw data so that a type error
in one step does not hide a cycle in another.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path as FsPath
from typing import Any

from pydantic import ValidationError

from orchestrator import planner, run_limits
from orchestrator.errors import SpecProblem, SpecValidationError
from orchestrator.settings import LimitSettings
from orchestrator.spec import diagnostics
from orchestrator.spec.loader import gc_paused, load_yaml
from orchestrator.spec.model import ID_PATTERN, WorkflowSpec
from orchestrator.spec.positions import Path, PositionMap
from orchestrator.templates import Reference, scan

MAX_REPORTED = 1000
_ID = re.compile(ID_PATTERN)


@dataclass
class _Pending:
    """A problem located by path; its message may need the line of another path (`other`)."""

    message: str | Callable[[int], str]
    path: Path
    at_key: bool = False
    other: Path | None = None
    expanded: bool = True  # the path is in the document as expanded by patterns, not as written


class _Collector:
    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.located: list[SpecProblem] = []
        self.pending: list[_Pending] = []
        # Maps a path of the expanded document to the written one, with a prefix for the message.
        self.original: Callable[[Path], tuple[Path, str]] | None = None

    def add(self, message: str, path: Path, *, at_key: bool = False, expanded: bool = True) -> None:
        self.pending.append(_Pending(message, path, at_key, expanded=expanded))

    def add_relative(self, message: Callable[[int], str], path: Path, other: Path) -> None:
        self.pending.append(_Pending(message, path, other=other))

    def __bool__(self) -> bool:
        return bool(self.located or self.pending)

    def problems(self, positions: PositionMap) -> list[SpecProblem]:
        if self.original is not None:
            self._to_original(self.original)
        wanted = [p.path for p in self.pending] + [p.other for p in self.pending if p.other is not None]
        found = positions.locate(wanted) if wanted else {}
        problems = list(self.located)
        for pending in self.pending:
            line, col = found[pending.path].point(at_key=pending.at_key)
            message = pending.message
            if callable(message):
                message = message(found[pending.other].value[0] if pending.other is not None else 0)
            problems.append(SpecProblem(message, self.filename, line, col))
        if self.original is not None:  # an inherited `needs` or `when` is checked in every entry step
            problems = list(dict.fromkeys(problems))
        problems.sort(key=lambda p: (p.line, p.column))
        if len(problems) > MAX_REPORTED:
            extra = len(problems) - MAX_REPORTED
            problems = problems[:MAX_REPORTED]
            problems.append(SpecProblem(f"… and {extra} more problems not shown", self.filename, 0, 0))
        return problems

    def _to_original(self, original: Callable[[Path], tuple[Path, str]]) -> None:
        for pending in self.pending:
            if not pending.expanded:
                continue
            pending.path, prefix = original(pending.path)
            if pending.other is not None:
                pending.other = original(pending.other)[0]
            if prefix:
                pending.message = _prefixed(prefix, pending.message)
                pending.at_key = True


def _prefixed(prefix: str, message: str | Callable[[int], str]) -> str | Callable[[int], str]:
    if not callable(message):
        return prefix + message
    return lambda line: prefix + message(line)


def load_workflow(
    source: str | bytes, *, filename: str = "<string>", limits: LimitSettings | None = None
) -> WorkflowSpec:
    """Parse and validate a workflow document; raise SpecValidationError listing every problem."""
    with gc_paused():
        document = load_yaml(source, filename=filename, limits=limits)
        problems = _Collector(filename)
        problems.located.extend(document.problems)
        data = document.data
        expansions: list[Any] = []
        if _uses_patterns(data):
            data, expansions = _expand(data, problems, document.flagged)
        spec: WorkflowSpec | None = None
        try:
            spec = WorkflowSpec.model_validate(data)
        except ValidationError as e:
            for error in e.errors():
                loc = tuple(error["loc"])
                if problems.original is not None:
                    loc = problems.original(loc)[0]
                if any(loc[: len(flagged)] == flagged for flagged in document.flagged):
                    continue  # the loader already reported this value
                message, path, at_key = diagnostics.describe(error, data)
                problems.add(message, path, at_key=at_key)
        analysis = _check_document(data, problems)
        if isinstance(data, dict):
            for limit in run_limits.document_problems(data, limits or LimitSettings()):
                problems.add(limit.message, limit.path)
        if problems:
            raise SpecValidationError(problems.problems(document.positions))
        assert spec is not None
        spec._analysis = analysis
        spec._expansions = expansions
        return spec


def _uses_patterns(data: dict[str, Any]) -> bool:
    steps = data.get("steps")
    return isinstance(steps, list) and any(isinstance(step, dict) and "uses" in step for step in steps)


def _expand(data: dict[str, Any], problems: _Collector, flagged: set[Path]) -> tuple[dict[str, Any], list[Any]]:
    """Replace `uses:` steps by the steps their patterns generate (docs/spec.md §6, custom patterns)."""
    # Imported here: plugins are discovered and loaded only for documents that use them.
    from patterns.expansion import expand_document

    expanded = expand_document(data)
    for message, path, at_key in expanded.problems:
        if not any(path[: len(f)] == f for f in flagged):  # the loader already reported this value
            problems.add(message, path, at_key=at_key, expanded=False)
    problems.original = expanded.original
    return expanded.data, expanded.expansions


def load_workflow_file(path: str | FsPath, limits: LimitSettings | None = None) -> WorkflowSpec:
    """`load_workflow` on a file; problems name the file as given."""
    file = FsPath(path)
    try:
        source = file.read_bytes()
    except OSError as e:
        reason = e.strerror or str(e)
        raise SpecValidationError([SpecProblem(f"cannot read the file: {reason}", str(path), 0, 0)]) from e
    return load_workflow(source, filename=str(path), limits=limits)


# --- whole-document checks -------------------------------------------------------------------


def _check_document(data: dict[str, Any], problems: _Collector) -> planner.GraphAnalysis | None:
    steps = data.get("steps")
    if not isinstance(steps, list):
        return None
    ids: dict[str, int] = {}
    for i, step in enumerate(steps):
        step_id = step.get("id") if isinstance(step, dict) else None
        if not isinstance(step_id, str) or not _ID.fullmatch(step_id):
            continue  # reported by the model
        if step_id in ids:
            first = ids[step_id]
            problems.add_relative(_duplicate_id(step_id, first), ("steps", i, "id"), ("steps", first, "id"))
        else:
            ids[step_id] = i
    needs = _check_needs(steps, ids, problems)
    analysis = planner.analyse(planner.graph_from_needs(needs))
    for cycle in analysis.cycles:
        _report_cycle(cycle, steps, ids, problems)
    _check_breakers(data, steps, problems)
    _References(data, steps, ids, analysis, problems).check()
    return analysis


def _duplicate_id(step_id: str, first: int) -> Callable[[int], str]:
    def message(line: int) -> str:
        return f"duplicate step id {step_id!r}: step #{first + 1} (line {line}) already uses it; rename one of them"

    return message


def _needs_of(step: dict[str, Any]) -> list[tuple[Path, Any]]:
    needs = step.get("needs")
    if isinstance(needs, str):
        return [(("needs",), needs)]
    if isinstance(needs, list):
        return [(("needs", j), need) for j, need in enumerate(needs)]
    return []


def _check_needs(steps: list[Any], ids: dict[str, int], problems: _Collector) -> dict[str, list[str]]:
    needs: dict[str, list[str]] = {}
    suggester = diagnostics.Suggester(ids)
    for step_id, i in ids.items():
        step = steps[i]
        known: list[str] = []
        for where, need in _needs_of(step):
            if not isinstance(need, str) or not _ID.fullmatch(need):
                continue  # reported by the model
            path = ("steps", i, *where)
            if need in known:
                problems.add(f"step {step_id!r} lists {need!r} twice in needs: remove one", path)
            elif need not in ids:
                hint = suggester.hint(need)
                problems.add(f"step {step_id!r} needs {need!r}, which is not a step in this workflow{hint}", path)
            else:
                known.append(need)
        needs[step_id] = known
    return needs


def _report_cycle(cycle: list[str], steps: list[Any], ids: dict[str, int], problems: _Collector) -> None:
    # Point at the `needs` entry that closes the cycle: the first step needs the one before it.
    last, first = cycle[-2], cycle[0]
    path: Path = ("steps", ids[first])
    for where, need in _needs_of(steps[ids[first]]):
        if need == last:
            path = (*path, *where)
            break
    shown = " -> ".join(cycle)
    problems.add(f"dependency cycle: {shown} (each step needs the one before it); remove one of these needs", path)


def _check_breakers(data: dict[str, Any], steps: list[Any], problems: _Collector) -> None:
    declared = data.get("breakers")
    if not isinstance(declared, dict) or not declared:
        return  # without a `breakers:` section every breaker uses the default settings
    suggester = diagnostics.Suggester(declared)
    named: list[tuple[Path, Any]] = [
        (("defaults", "circuit_breaker"), (data.get("defaults") or {}).get("circuit_breaker"))
    ]
    named += [
        (("steps", i, "circuit_breaker"), step.get("circuit_breaker"))
        for i, step in enumerate(steps)
        if isinstance(step, dict)
    ]
    for path, name in named:
        if isinstance(name, str) and name not in declared:
            problems.add(
                f"circuit breaker {name!r} is not declared under `breakers:`: declare it there or fix "
                f"the name{suggester.hint(name)}",
                path,
            )


class _References:
    """Checks every `${{ … }}` of every step and hook against what it may reference."""

    def __init__(
        self,
        data: dict[str, Any],
        steps: list[Any],
        ids: dict[str, int],
        analysis: planner.GraphAnalysis,
        problems: _Collector,
    ) -> None:
        self.steps = steps
        self.ids = ids
        self.analysis = analysis
        self.problems = problems
        inputs = data.get("inputs") or {}  # no `inputs:` declares none, so every `inputs.X` is unknown
        # A malformed `inputs:` is reported on its own; references are not checked against it.
        self.inputs: dict[str, Any] | None = inputs if isinstance(inputs, dict) else None
        self.hooks = data.get("hooks")
        self.step_suggester = diagnostics.Suggester(ids)
        self.ancestry: list[tuple[str, str, Path, Reference]] = []

    def check(self) -> None:
        for step_id, i in self.ids.items():
            step = self.steps[i]
            fan_out = step.get("for_each") is not None
            self._scan(step.get("with"), ("steps", i, "with"), step_id, item=fan_out)
            for key in ("when", "for_each"):
                if isinstance(step.get(key), str | list):
                    self._scan(step[key], ("steps", i, key), step_id, coordinator_side=key)
            for key in ("compensate", "gate"):
                block = step.get(key)
                if isinstance(block, dict):
                    self._scan(block.get("with"), ("steps", i, key, "with"), step_id, own=key)
            for key in ("concurrency", "rate_limit"):  # keys resolve when the step becomes ready
                block = step.get(key)
                if isinstance(block, dict) and isinstance(block.get("key"), str):
                    self._scan(block["key"], ("steps", i, key, "key"), step_id, item=fan_out)
        if isinstance(self.hooks, list):
            for h, hook in enumerate(self.hooks):
                if isinstance(hook, dict):
                    self._scan(hook.get("with"), ("hooks", h, "with"), None)
        self._check_ancestry()

    def _scan(
        self,
        value: Any,
        base: Path,
        step_id: str | None,
        *,
        item: bool = False,
        own: str | None = None,
        coordinator_side: str | None = None,
    ) -> None:
        if value is None:
            return
        references, issues = scan(value, base)
        for issue in issues:
            self.problems.add(issue.message, issue.location)
        for reference in references:
            self._check(reference, step_id, item=item, own=own, coordinator_side=coordinator_side)

    def _check(
        self, ref: Reference, step_id: str | None, *, item: bool, own: str | None, coordinator_side: str | None
    ) -> None:
        where = ref.location
        if ref.root == "inputs":
            if self.inputs is not None and ref.name not in self.inputs:
                hint = diagnostics.Suggester(self.inputs).hint(str(ref.name))
                self.problems.add(f"{ref} names an undeclared input: declare it under `inputs:`{hint}", where)
        elif ref.root == "item" and coordinator_side:
            self.problems.add(
                f"{ref}: `{coordinator_side}` is decided before there are items; use `item` in the step's `with`",
                where,
            )
        elif ref.root == "item" and not item:
            self.problems.add(f"{ref}: `item` is only defined in the `with` of a step that has for_each", where)
        elif ref.root == "secrets" and coordinator_side:
            self.problems.add(
                f"{ref}: `{coordinator_side}` is decided by the coordinator, which never sees secrets; "
                "use an input instead",
                where,
            )
        elif ref.root == "steps":
            self._check_step_reference(ref, step_id, own)

    def _check_step_reference(self, ref: Reference, step_id: str | None, own: str | None) -> None:
        target = str(ref.step_id)
        where = ref.location
        if step_id is None:
            self.problems.add(f"{ref}: hooks run on events and cannot reference step outputs", where)
        elif target not in self.ids:
            self.problems.add(f"{ref} names an unknown step{self.step_suggester.hint(target)}", where)
        elif target == step_id:
            if own is None:
                self.problems.add(
                    f"{ref}: a step cannot use its own output (only its compensate and gate blocks can)", where
                )
        elif target not in _needs_of_id(self.steps[self.ids[step_id]]):
            self.ancestry.append((target, step_id, where, ref))

    def _check_ancestry(self) -> None:
        if not self.ancestry or self.analysis.waves is None:
            return  # with a cycle there is no order to check against; the cycle is reported
        queries = [(target, step) for target, step, _, _ in self.ancestry]
        missing = planner.unreachable(self.analysis.graph, self.analysis.waves, queries)
        for target, step_id, where, ref in self.ancestry:
            if (target, step_id) in missing:
                self.problems.add(
                    f"{ref}: step {step_id!r} does not depend on {target!r}, so its output may not exist "
                    f"yet; add {target!r} to needs (directly or through another step)",
                    where,
                )


def _needs_of_id(step: dict[str, Any]) -> list[Any]:
    return [need for _, need in _needs_of(step)]
