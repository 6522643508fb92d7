"""Plan-time expansion of `uses:` steps into the ordinary steps their patterns generate.

`expand_document` runs on the plain data of a workflow document, before the pydantic models,
and returns the expanded data together with what validation needs to point at the YAML the
user wrote: problems found here carry paths into the original document, and `original()`
maps a path in the expanded document back to one (a problem in a generated step is shown at
the `uses:` of the step that generated it, prefixed with the pattern's name).

Rules applied to each expansion (see `patterns.plugins.Pattern` for the plugin's side):
* entry steps (generated without `needs`) receive the original step's `needs` and `when`;
* every generated step receives the original `queue`, `timeout`, `retry`, `priority` and
  `circuit_breaker` unless the pattern set its own; the exit step receives `description`;
* a step whose pattern cannot be applied is replaced by a placeholder with its id and
  `needs`, so that the rest of the document is still checked without follow-on errors.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from orchestrator.errors import PatternError
from orchestrator.spec import diagnostics
from orchestrator.spec.model import ID_PATTERN, StepSpec
from orchestrator.spec.positions import Path
from patterns.plugins import InstalledPattern, PatternStep, installed_patterns, pattern_names

_ID = re.compile(ID_PATTERN)
INHERITED = ("queue", "timeout", "retry", "priority", "circuit_breaker")
ALLOWED = frozenset({"id", "uses", "with", "description", "needs", "when", *INHERITED})
_CHOSEN_BY_PATTERN = ("handler", "workflow", "for_each", "compensate", "gate", "swarm", "estimate")
PLACEHOLDER_HANDLER = "builtin.noop"

Lookup = Callable[[list[str]], Mapping[str, InstalledPattern]]


@dataclass(frozen=True, slots=True)
class Expansion:
    """One `uses:` step and the ids of the steps it became (the exit step, its own id, last)."""

    step_id: str
    pattern: str
    step_ids: list[str]


@dataclass(frozen=True, slots=True)
class _Origin:
    index: int  # of the step in the original document
    pattern: str | None = None  # None: written by the user (or a placeholder for one)
    inherited: frozenset[str] = frozenset()  # keys copied from the original step


@dataclass
class ExpandedDocument:
    """The document with every `uses:` step replaced, and how to locate its problems."""

    data: dict[str, Any]
    expansions: list[Expansion] = field(default_factory=list)
    # (message, path in the original document, point at the key) for problems found while expanding.
    problems: list[tuple[str, Path, bool]] = field(default_factory=list)
    origins: list[_Origin] = field(default_factory=list)

    def original(self, path: Path) -> tuple[Path, str]:
        """The original-document path of an expanded-document path, and a prefix for its message."""
        if len(path) < 2 or path[0] != "steps" or not isinstance(path[1], int) or path[1] >= len(self.origins):
            return path, ""
        origin = self.origins[path[1]]
        rest = path[2:]
        if origin.pattern is None or (rest and rest[0] in origin.inherited):
            return ("steps", origin.index, *rest), ""
        step_id = self.data["steps"][path[1]]["id"]
        return ("steps", origin.index, "uses"), f"in what pattern {origin.pattern!r} generated ({step_id!r}): "


def expand_document(data: dict[str, Any], *, lookup: Lookup = installed_patterns) -> ExpandedDocument:
    """Replace every `uses:` step of `data` (which is not modified) by its pattern's steps."""
    steps: list[Any] = data["steps"]
    used = sorted({s["uses"] for s in steps if isinstance(s, dict) and isinstance(s.get("uses"), str)})
    plugins = lookup(used) if used else {}
    result = ExpandedDocument(data={**data})
    expanded: list[Any] = []
    for i, step in enumerate(steps):
        if not (isinstance(step, dict) and "uses" in step):
            expanded.append(step)
            result.origins.append(_Origin(i))
            continue
        generated = _Expander(i, step, data, plugins, result.problems).run()
        if generated is None:
            placeholder = _placeholder(step)
            if placeholder is not None:
                expanded.append(placeholder)
                result.origins.append(_Origin(i))
            continue
        name = str(step["uses"])
        for new_step, inherited in generated:
            expanded.append(new_step)
            result.origins.append(_Origin(i, name, inherited))
        ids = [s["id"] for s, _ in generated]
        ids.append(ids.pop(ids.index(step["id"])))
        result.expansions.append(Expansion(step["id"], name, ids))
    result.data["steps"] = expanded
    return result


def _placeholder(step: dict[str, Any]) -> dict[str, Any] | None:
    step_id = step.get("id")
    if not isinstance(step_id, str) or not _ID.fullmatch(step_id):
        return None
    needs = step.get("needs")
    ok = isinstance(needs, str) or (isinstance(needs, list) and all(isinstance(n, str) for n in needs))
    return {"id": step_id, "handler": PLACEHOLDER_HANDLER, "needs": needs if ok else []}


class _Expander:
    """Applies one pattern to one step; `run()` returns the generated steps or None on a problem."""

    def __init__(
        self,
        index: int,
        step: dict[str, Any],
        data: dict[str, Any],
        plugins: Mapping[str, InstalledPattern],
        problems: list[tuple[str, Path, bool]],
    ) -> None:
        self.index = index
        self.step = step
        self.data = data
        self.plugins = plugins
        self.problems = problems
        self.path: Path = ("steps", index)

    def _problem(self, message: str, *where: str | int, at_key: bool = False) -> None:
        self.problems.append((message, (*self.path, *where), at_key))

    def run(self) -> list[tuple[dict[str, Any], frozenset[str]]] | None:
        installed = self._installed()
        keys_ok = self._check_keys()
        settings_ok = self._check_settings()
        if installed is None or installed.pattern is None:
            return None
        config = self._config(installed.pattern.config_model)
        if config is None or not (keys_ok and settings_ok):
            return None
        pattern_step = PatternStep(id=self.step["id"], description=self.step.get("description"))
        try:
            generated = installed.pattern.expand(pattern_step, config)
        except PatternError as e:
            self._problem(f"step {pattern_step.id!r}, with: {e}", "with" if "with" in self.step else "uses")
            return None
        except Exception as e:  # third-party code: report it as the plugin's fault, never as a traceback
            self._problem(
                f"pattern {installed.name!r} ({installed.origin}) failed to expand step {pattern_step.id!r}: "
                f"{type(e).__name__}: {e}; this is a bug in the plugin: report it to its authors",
                "uses",
            )
            return None
        problem = _check_output(pattern_step, generated) or self._check_when(generated)
        if problem is not None:
            user_error = problem.startswith("the step id")
            suffix = "" if user_error else "; this is a bug in the plugin: report it to its authors"
            where = "id" if user_error else "uses"
            self._problem(f"pattern {installed.name!r} ({installed.origin}): {problem}{suffix}", where)
            return None
        return self._inherit(generated)

    def _installed(self) -> InstalledPattern | None:
        name = self.step["uses"]
        if not isinstance(name, str):
            self._problem(f"step {self._id()}, uses: must be the name of a pattern, such as map_reduce", "uses")
            return None
        installed = self.plugins.get(name)
        if installed is None:
            names = pattern_names()
            hint = diagnostics.Suggester(names).hint(name).removeprefix("; ")
            listing = ", ".join(names) if names else "none"
            self._problem(
                f"unknown pattern {name!r}: installed patterns are {listing} (see `steppe patterns`); fix the "
                f"name or install the plugin that provides it{'; ' + hint if hint else ''}",
                "uses",
            )
            return None
        if installed.pattern is None:
            self._problem(f"pattern {name!r} ({installed.origin}) {installed.error}", "uses")
            return None
        return installed

    def _id(self) -> str:
        return diagnostics.show(self.step.get("id"))

    def _check_keys(self) -> bool:
        ok = True
        for key in self.step:
            if key in ALLOWED:
                continue
            ok = False
            if key in _CHOSEN_BY_PATTERN:
                message = (
                    f"step {self._id()} uses a pattern, which chooses its steps' {key!r}: remove `{key}` "
                    "or `uses`, and put the pattern's settings under `with:`"
                )
            else:
                hint = diagnostics.Suggester(sorted(ALLOWED)).hint(str(key))
                message = (
                    f"unknown key {diagnostics.show(key)} in step {self._id()}{hint}; a step with `uses:` "
                    f"may have {', '.join(sorted(ALLOWED))}"
                )
            self._problem(message, key, at_key=True)
        return ok

    def _check_settings(self) -> bool:
        """The step's own settings, checked once here with the ordinary step model."""
        common = {k: v for k, v in self.step.items() if k in ALLOWED and k not in ("uses", "with")}
        try:
            StepSpec.model_validate({**common, "handler": PLACEHOLDER_HANDLER})
        except ValidationError as e:
            for error in e.errors():
                moved: ErrorDetails = {**error, "loc": (*self.path, *error["loc"])}
                message, path, at_key = diagnostics.describe(moved, self.data)
                self.problems.append((message, path, at_key))
            return False
        return True

    def _config(self, model: type[BaseModel]) -> BaseModel | None:
        raw = self.step.get("with")
        try:
            return model.model_validate({} if raw is None else raw)
        except ValidationError as e:
            for error in e.errors():
                moved: ErrorDetails = {**error, "loc": (*self.path, "with", *error["loc"])}
                message, path, at_key = diagnostics.describe(
                    moved, self.data, keys=lambda loc: diagnostics.keys_at(loc[3:], root=model)
                )
                self.problems.append((message, path, at_key))
            return None

    def _check_when(self, generated: list[dict[str, Any]]) -> str | None:
        if self.step.get("when") is None:
            return None
        clashing = [s["id"] for s in generated if not s.get("needs") and s.get("when") is not None]
        if clashing:
            return f"entry steps {clashing} set `when`, which they must take from the step that uses the pattern"
        return None

    def _inherit(self, generated: list[dict[str, Any]]) -> list[tuple[dict[str, Any], frozenset[str]]]:
        step = self.step
        needs = step.get("needs")
        result = []
        for original in generated:
            new = dict(original)
            inherited: set[str] = set()
            if not new.get("needs"):
                new.pop("needs", None)
                for key in ("needs", "when"):
                    if step.get(key) is not None:
                        new[key] = needs if key == "needs" else step[key]
                        inherited.add(key)
            for key in INHERITED:
                if step.get(key) is not None and new.get(key) is None:
                    new[key] = step[key]
                    inherited.add(key)
            if new["id"] == step["id"] and step.get("description") is not None:
                new["description"] = step["description"]
            result.append((new, frozenset(inherited)))
        return result


def _check_output(step: PatternStep, generated: object) -> str | None:  # noqa: PLR0911 - one return per rule
    """What is wrong with a pattern's output, or None. Messages starting "the step id" are the user's to fix."""
    if not isinstance(generated, list) or not generated:
        return f"expand() must return a non-empty list of step mappings, not {diagnostics.type_name(generated)}"
    if not all(isinstance(s, dict) and isinstance(s.get("id"), str) for s in generated):
        return "expand() returned a step that is not a mapping with a string `id`"
    ids = [s["id"] for s in generated]
    for step_id in ids:
        if step_id != step.id and not step_id.startswith(step.id + "-"):
            return f"generated step id {step_id!r} is not derived from {step.id!r}: use step.derive(...)"
        if not _ID.fullmatch(step_id):
            longest = 64 - (len(step_id) - len(step.id))
            return (
                f"the step id {step.id!r} is too long for this pattern, which derives ids such as {step_id!r} "
                f"(at most 64 characters): shorten the id to {longest} characters or fewer"
            )
    if ids.count(step.id) != 1:
        return (
            f"expand() must return exactly one step with the id {step.id!r} (the exit step), not {ids.count(step.id)}"
        )
    if len(set(ids)) != len(ids):
        return f"expand() returned duplicate step ids: {sorted({i for i in ids if ids.count(i) > 1})}"
    needs: dict[str, list[str]] = {}
    for s in generated:
        if "uses" in s:
            return f"generated step {s['id']!r} uses a pattern: patterns cannot generate `uses:` steps"
        raw = s.get("needs") or []
        listed = [raw] if isinstance(raw, str) else raw
        if not isinstance(listed, list) or not all(isinstance(n, str) and n in ids for n in listed):
            return f"generated step {s['id']!r} has needs {raw!r}; it may only need steps of the same expansion"
        needs[s["id"]] = listed
    reached = _ancestors(step.id, needs)
    stray = [i for i in ids if i not in reached]
    if stray:
        return f"generated steps {stray} do not lead to the exit step {step.id!r}; every step must (through needs)"
    return None


def _ancestors(exit_id: str, needs: dict[str, list[str]]) -> set[str]:
    seen = {exit_id}
    todo = [exit_id]
    while todo:
        for need in needs[todo.pop()]:
            if need not in seen:
                seen.add(need)
                todo.append(need)
    return seen
