"""Messages for spec problems: pydantic errors rewritten for YAML authors, and "did you mean …?"."""

from __future__ import annotations

import difflib
import types
from collections.abc import Callable, Iterable
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import ErrorDetails

from orchestrator.spec.model import PATTERN_HINTS, WorkflowSpec
from orchestrator.spec.positions import Path

SUGGESTION_BUDGET = 100  # difflib over 100,000 step ids is slow: suggest for the first problems only
LARGE_POOL = 2000

_TYPE_NAMES = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
_EXPECTED = {
    "model_type": "must be a mapping of keys to values",
    "dict_type": "must be a mapping of keys to values",
    "model_attributes_type": "must be a mapping of keys to values",
    "list_type": "must be a list",
    "string_type": "must be a string",
    "int_type": "must be a whole number",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
}


class Suggester:
    """Closest-match hints among known names, bounded in cost for very large name sets."""

    def __init__(self, candidates: Iterable[str]) -> None:
        self.candidates = [c for c in candidates if isinstance(c, str)]
        self.budget = SUGGESTION_BUDGET

    def hint(self, word: str) -> str:
        """`; did you mean 'x'?`, or "" when nothing is close."""
        if not self.candidates or self.budget <= 0:
            return ""
        self.budget -= 1
        pool = self.candidates
        if len(pool) > LARGE_POOL:
            pool = [c for c in pool if abs(len(c) - len(word)) <= 2 and c[:1] == word[:1]][:LARGE_POOL]
        matches = difflib.get_close_matches(word, pool, n=1, cutoff=0.6)
        return f"; did you mean {matches[0]!r}?" if matches else ""


def show(value: Any, limit: int = 60) -> str:
    """A value as a message may quote it: escaped when it holds control, bidi or other non-ASCII text."""
    if isinstance(value, str):
        text = repr(value) if value.isascii() and value.isprintable() else ascii(value)
    else:
        text = ascii(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def type_name(value: Any) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "a number"
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def subject(loc: Path, data: Any) -> str:
    """Where a problem is, for a reader: `step 'charge', retry.max_attempts`."""
    if not loc:
        return "the workflow"
    if loc[0] in ("steps", "hooks") and len(loc) >= 2 and isinstance(loc[1], int):
        entries = data.get(loc[0]) if isinstance(data, dict) else None
        entry = entries[loc[1]] if isinstance(entries, list) and loc[1] < len(entries) else None
        name = entry.get("id" if loc[0] == "steps" else "name") if isinstance(entry, dict) else None
        kind = "step" if loc[0] == "steps" else "hook"
        head = f"{kind} {show(name)}" if isinstance(name, str) else f"{kind} #{loc[1] + 1}"
        return head + (f", {dotted(loc[2:])}" if len(loc) > 2 else "")
    return dotted(loc)


def dotted(loc: Path) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def describe(  # noqa: PLR0911 - one return per kind
    error: ErrorDetails, data: Any, *, keys: Callable[[Path], list[str]] | None = None
) -> tuple[str, Path, bool]:
    """(message, path, whether to point at the key) for one pydantic error; `keys` lists the
    valid keys of the mapping at a path (by default, from the workflow models)."""
    loc: Path = tuple(error["loc"])
    at_key = bool(loc) and loc[-1] == "[key]"
    if at_key:
        loc = loc[:-1]
    kind = error["type"]
    value = error.get("input")
    if kind == "extra_forbidden":
        key = str(loc[-1])
        valid = (keys or keys_at)(loc[:-1])
        hint = Suggester(valid).hint(key) or (f"; valid keys: {', '.join(valid)}" if valid else "")
        return f"unknown key {show(key)} in {subject(loc[:-1], data)}{hint}", loc, True
    where = subject(loc, data)
    if kind == "missing":
        return f"{subject(loc[:-1], data)}: missing required key {show(loc[-1])}", loc, True
    if kind in ("value_error", "assertion_error"):
        return f"{where}: {error.get('ctx', {}).get('error', error['msg'])}", loc, at_key
    if kind == "string_pattern_mismatch":
        hint = PATTERN_HINTS.get(str(error.get("ctx", {}).get("pattern")), "has a form that is not allowed")
        return f"{where}: {show(value)} {hint}", loc, at_key
    if kind == "too_short" and loc == ("steps",):
        return "a workflow needs at least one step under `steps:`", loc, at_key
    if kind in _EXPECTED:
        return f"{where}: {_EXPECTED[kind]}, not {type_name(value)} {_scalar(value)}".rstrip(), loc, at_key
    message = str(error["msg"])
    message = message.replace("Input should be", "must be")
    message = message[0].lower() + message[1:]
    got = _scalar(value)
    return f"{where}: {message}" + (f" (got {got})" if got else ""), loc, at_key


def _scalar(value: Any) -> str:
    return "" if isinstance(value, dict | list) else show(value)


def keys_at(loc: Path, root: type[BaseModel] = WorkflowSpec) -> list[str]:
    """The keys a mapping at `loc` (under `root`) may have, found by walking the models' field annotations."""
    annotation: Any = root
    for part in loc:
        annotation = _unwrap(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            fields = {(f.alias or name): f for name, f in annotation.model_fields.items()}
            if part not in fields:
                return []
            annotation = fields[str(part)].annotation
        elif get_origin(annotation) is list:
            annotation = get_args(annotation)[0]
        elif get_origin(annotation) is dict:
            annotation = get_args(annotation)[1]
        else:
            return []
    annotation = _unwrap(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [f.alias or name for name, f in annotation.model_fields.items()]
    return []


def _unwrap(annotation: Any) -> Any:
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin is Union or origin is types.UnionType:
            members = [a for a in get_args(annotation) if a is not type(None)]
            models = [a for a in members if isinstance(a, type) and issubclass(a, BaseModel)]
            annotation = models[0] if models else members[0]
        else:
            return annotation
