"""Safe YAML loading for workflow documents: plain JSON-like data, size limits, and source positions.

The document is read from libyaml's event stream (`yaml.CSafeLoader` when available) and
turned into dicts, lists and scalars directly, without PyYAML's composer or constructors:

* only mappings with scalar keys, sequences, and scalars resolved by the safe resolver
  (str, int, float, bool, null) are accepted; any other tag (`!!python/object`, `!!set`,
  `!custom`) is an error at its position. Implicit timestamps stay strings, as in JSON.
* mapping keys are taken as written: `on:` is the string "on", not YAML 1.1's `True`.
* merge keys (`<<: *defaults`) are supported: explicit keys override merged ones and earlier
  merge sources override later ones (YAML 1.1 merge semantics).
* aliases share the anchored value; every alias counts the full size of what it expands to
  against a budget proportional to the document size, which stops "billion laughs" bombs.
* NUL characters (raw, or escaped as `"\\0"`/`"\\x00"` in a double-quoted string), unpaired
  surrogates (`"\\ud800"`), documents over `LimitSettings.document_bytes`, duplicate keys, recursive
  aliases and nesting deeper than MAX_DEPTH are rejected (libyaml's own composer recurses
  in C and crashes on very deep documents, hence the event-driven builder).

Positions are not recorded while building (a 100,000-step document has millions of
values); `PositionMap` re-reads the events on demand, only when a problem must be located.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml import events as ev
from yaml.nodes import ScalarNode

from orchestrator.errors import SpecProblem, SpecValidationError
from orchestrator.settings import LimitSettings
from orchestrator.spec.diagnostics import show
from orchestrator.spec.positions import Path, Point, PositionMap
from orchestrator.spec.values import MAX_DEPTH, SURROGATE, text_problem

_DEPTH_MESSAGE = f"nesting deeper than {MAX_DEPTH} levels: flatten this data"
# An alias-free document cannot hold more values than it has bytes; aliases may multiply that
# tenfold before the expansion is treated as a bomb.
EXPANSION_FACTOR = 10
MIN_EXPANSION_BUDGET = 100_000

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_RESOLVERS: dict[str | None, list[tuple[str, Any]]] = yaml.SafeLoader.yaml_implicit_resolvers
_CONSTRUCTOR = yaml.constructor.SafeConstructor()

_Y = "tag:yaml.org,2002:"
STR, INT, FLOAT, BOOL, NULL = _Y + "str", _Y + "int", _Y + "float", _Y + "bool", _Y + "null"
MAP, SEQ, MERGE = _Y + "map", _Y + "seq", _Y + "merge"
_SCALAR_TAGS = frozenset({STR, INT, FLOAT, BOOL, NULL})
_OPEN = object()  # anchor of a collection still being built: an alias to it is recursive
_NO_KEY = object()
_MERGE_KEY = object()


@dataclass
class LoadedDocument:
    """The plain data of a document, its non-fatal problems, and a way to locate paths in it."""

    data: dict[str, Any]
    positions: PositionMap
    problems: list[SpecProblem] = field(default_factory=list)
    # Paths whose values were replaced because of a loader problem; later checks skip them.
    flagged: set[Path] = field(default_factory=set)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic GC while building large acyclic structures (it otherwise rescans them
    over and over: loading a 100,000-step document is ~4x slower with it on)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def load_yaml(
    source: str | bytes, *, filename: str = "<string>", limits: LimitSettings | None = None
) -> LoadedDocument:
    """Parse `source` into plain data; raise SpecValidationError when it cannot be used at all."""
    limits = limits or LimitSettings()
    text = _decode(source, filename, limits)
    problems: list[SpecProblem] = []
    flagged: set[Path] = set()
    budget = max(MIN_EXPANSION_BUDGET, EXPANSION_FACTOR * len(text))
    builder = _Builder(filename=filename, budget=budget, problems=problems, flagged=flagged)
    loader = _Loader(text)
    try:
        with gc_paused():
            root, root_mark = builder.build_document(loader)
    except yaml.MarkedYAMLError as e:
        raise SpecValidationError([*problems, _yaml_problem(e, filename)]) from None
    except yaml.YAMLError as e:
        raise SpecValidationError([*problems, SpecProblem(f"invalid YAML: {e}", filename, 1, 1)]) from None
    finally:
        loader.dispose()
    positions = PositionMap(text, filename=filename)
    if builder.duplicates:
        firsts = positions.locate(path for path, _, _ in builder.duplicates)
        for path, key, point in builder.duplicates:
            first = firsts[path].key or firsts[path].value
            message = f"duplicate key {key!r} (first defined on line {first[0]}): keep only one of them"
            problems.append(SpecProblem(message, filename, *point))
        problems.sort(key=lambda p: (p.line, p.column))
    if root is None:
        problem = "the document is empty: a workflow needs at least `name` and `steps`"
        raise SpecValidationError([*problems, SpecProblem(problem, filename, 1, 1)])
    if not isinstance(root, dict):
        kind = type(root).__name__ if not isinstance(root, list) else "list"
        message = f"the top level must be a mapping with `name` and `steps`, not a {kind}"
        raise SpecValidationError([*problems, SpecProblem(message, filename, *root_mark)])
    return LoadedDocument(root, positions, problems, flagged)


def _decode(source: str | bytes, filename: str, limits: LimitSettings) -> str:
    size = len(source) if isinstance(source, bytes) else len(source.encode("utf-8", "surrogatepass"))
    if size > limits.document_bytes:
        message = (
            f"the document is {size / 2**20:.1f} MiB, over the {limits.document_bytes / 2**20:g} MiB limit "
            "(STEPPE_LIMITS__DOCUMENT_BYTES): pass large data by reference (a URL or object-store key "
            "as an input) instead of inlining it"
        )
        raise SpecValidationError([SpecProblem(message, filename, 1, 1)])
    if isinstance(source, bytes):
        try:
            text = source.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            line, col = _point_at(source[: e.start].decode("utf-8", "replace"))
            message = f"the document is not valid UTF-8 (byte {source[e.start]:#04x}); save it as UTF-8"
            raise SpecValidationError([SpecProblem(message, filename, line, col)]) from None
    else:
        text = source
    nul = text.find("\x00")
    if nul >= 0:
        message = "NUL character in the document: remove it (workflow documents are text)"
        raise SpecValidationError([SpecProblem(message, filename, *_point_at(text[:nul]))])
    if not text.isascii() and (surrogate := SURROGATE.search(text)) is not None:
        message = "unpaired surrogate in the document: save it as valid UTF-8"
        raise SpecValidationError([SpecProblem(message, filename, *_point_at(text[: surrogate.start()]))])
    return text


def _point_at(prefix: str) -> Point:
    """1-based line and column of the character that follows `prefix`."""
    line = prefix.count("\n") + 1
    return line, len(prefix) - (prefix.rfind("\n") + 1) + 1


def _yaml_problem(e: yaml.MarkedYAMLError, filename: str) -> SpecProblem:
    mark = e.problem_mark or e.context_mark
    what = " ".join(part for part in (e.context, e.problem) if part)
    line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    if "maximum nesting depth" in what:
        # libyaml >= 0.2.6 (PyYAML 6.0.2+ wheels) scans flow collections ahead and stops at its own
        # limit before the builder sees the events: report it as the builder would.
        return SpecProblem(_DEPTH_MESSAGE, filename, line, col)
    return SpecProblem(f"invalid YAML: {what}; fix the syntax here", filename, line, col)


def show_tag(tag: str) -> str:
    return "!!" + tag[len(_Y) :] if tag.startswith(_Y) else tag


def _mark(event: Any) -> Point:
    return event.start_mark.line + 1, event.start_mark.column + 1


class _FatalError(Exception):
    """Stops building: the document cannot be read any further."""


class _Frame:
    __slots__ = ("anchor", "bad", "count0", "items", "key", "mapping", "merges")

    def __init__(self, mapping: bool, anchor: str | None, count0: int, bad: bool) -> None:
        self.mapping = mapping
        self.items: Any = {} if mapping else []
        self.anchor = anchor
        self.count0 = count0
        self.bad = bad
        self.key: Any = _NO_KEY
        self.merges: list[dict[str, Any]] = []


class _Builder:
    """Turns one document's events into plain data (see the module docstring for the rules)."""

    def __init__(self, *, filename: str, budget: int, problems: list[SpecProblem], flagged: set[Path]) -> None:
        self.filename = filename
        self.budget = budget
        self.problems = problems
        self.flagged = flagged
        self.count = 0
        self.anchors: dict[str, tuple[Any, int]] = {}
        self.stack: list[_Frame] = []
        self.duplicates: list[tuple[Path, str, Point]] = []

    def build_document(self, loader: Any) -> tuple[Any, Point]:
        get_event = loader.get_event
        get_event()  # StreamStart
        event = get_event()
        if isinstance(event, ev.StreamEndEvent):
            return None, (1, 1)
        root_mark = _mark(loader.peek_event())
        try:
            root = self._build(get_event)
        except _FatalError:
            raise SpecValidationError(self.problems) from None
        get_event()  # DocumentEnd
        event = get_event()
        if not isinstance(event, ev.StreamEndEvent):
            self.problems.append(
                SpecProblem(
                    "more than one YAML document (`---`): put one workflow per file", self.filename, *_mark(event)
                )
            )
            raise SpecValidationError(self.problems)
        return root, root_mark

    def _problem(self, message: str, point: Point, *, fatal: bool = False) -> None:
        self.problems.append(SpecProblem(message, self.filename, *point))
        if fatal:
            raise _FatalError

    def _path(self) -> Path:
        """Path of the value about to be added to the innermost collection."""
        path: list[str | int] = []
        for frame in self.stack:
            if frame.mapping:
                if isinstance(frame.key, str):
                    path.append(frame.key)
            else:
                path.append(len(frame.items))
        return tuple(path)

    def _spend(self, amount: int, point: Point) -> None:
        self.count += amount
        if self.count > self.budget:
            self._problem(
                f"the document expands to more than {self.budget:,} values through aliases (an alias "
                "bomb?): use fewer `*alias` references, or pass large data by reference",
                point,
                fatal=True,
            )

    def _build(self, get_event: Any) -> Any:  # noqa: PLR0912 - one branch per event kind keeps the hot loop flat
        stack = self.stack
        while True:
            event = get_event()
            cls = event.__class__
            if cls is ev.ScalarEvent:
                if stack and stack[-1].mapping and stack[-1].key is _NO_KEY:
                    self._key(stack[-1], event)
                    continue
                self.count += 1
                if self.count > self.budget:
                    self._spend(0, _mark(event))
                value = self._scalar(event)
                if event.anchor is not None:
                    self.anchors[event.anchor] = (value, 1)
            elif cls is ev.MappingStartEvent or cls is ev.SequenceStartEvent:
                if stack and stack[-1].mapping and stack[-1].key is _NO_KEY:
                    self._problem("mapping keys must be plain strings, not collections", _mark(event), fatal=True)
                if len(stack) >= MAX_DEPTH:
                    self._problem(_DEPTH_MESSAGE, _mark(event), fatal=True)
                self._spend(1, _mark(event))
                mapping = cls is ev.MappingStartEvent
                bad = self._collection_tag_bad(event, MAP if mapping else SEQ)
                if event.anchor is not None:
                    self.anchors[event.anchor] = (_OPEN, 0)
                stack.append(_Frame(mapping, event.anchor, self.count, bad))
                continue
            elif cls is ev.MappingEndEvent or cls is ev.SequenceEndEvent:
                frame = stack.pop()
                value = self._finish(frame)
                if frame.anchor is not None:
                    self.anchors[frame.anchor] = (value, self.count - frame.count0 + 1)
            elif cls is ev.AliasEvent:
                value = self._alias(event)
                if stack and stack[-1].mapping and stack[-1].key is _NO_KEY:
                    if not isinstance(value, str):
                        self._problem("an alias used as a mapping key must name a string", _mark(event), fatal=True)
                    self._set_key(stack[-1], value, _mark(event))
                    continue
            else:  # pragma: no cover - libyaml only emits the events above inside a document
                self._problem(f"unexpected YAML event {cls.__name__}", _mark(event), fatal=True)
            if not stack:
                return value
            self._add(stack[-1], value, event)

    def _add(self, frame: _Frame, value: Any, event: Any) -> None:
        if not frame.mapping:
            frame.items.append(value)
            return
        key = frame.key
        frame.key = _NO_KEY
        if key is _MERGE_KEY:
            sources = value if isinstance(value, list) else [value]
            if not all(isinstance(source, dict) for source in sources):
                self._problem("a merge key `<<` needs a mapping or a list of mappings", _mark(event))
                return
            frame.merges.extend(sources)
        elif key not in frame.items:
            frame.items[key] = value

    def _key(self, frame: _Frame, event: Any) -> None:
        tag = event.tag
        point = _mark(event)
        if tag is not None and tag != "!" and tag not in _SCALAR_TAGS and not (tag == MERGE and not event.style):
            self._problem(f"tag {show_tag(tag)} is not allowed on a key: write the key as a plain string", point)
        if event.value == "<<" and not event.style and tag is None:
            if frame.merges or _MERGE_KEY in frame.items:
                self._problem("duplicate merge key `<<`: list every source in one `<<: [*a, *b]`", point)
            frame.key = _MERGE_KEY
            return
        if event.style == '"' and (problem := text_problem(event.value)) is not None:
            # Only a double-quoted scalar can hold escapes; raw NUL and surrogates are refused in `_decode`.
            self._problem(f"key {show(event.value)} {problem}", point)
        self._set_key(frame, event.value, point)

    def _set_key(self, frame: _Frame, key: str, point: Point) -> None:
        if key in frame.items:
            # The first occurrence's line is looked up afterwards, only for documents that have one.
            self.duplicates.append(((*self._path(), key), key, point))
            frame.key = _DuplicateKey(key)  # equal to `key`, so _add keeps the first value
            return
        frame.key = key

    def _finish(self, frame: _Frame) -> Any:
        if frame.bad:
            return None
        if not frame.mapping or not frame.merges:
            return frame.items
        merged: dict[str, Any] = {}
        for source in reversed(frame.merges):
            merged.update(source)
        merged.update(frame.items)
        return merged

    def _alias(self, event: Any) -> Any:
        point = _mark(event)
        anchored = self.anchors.get(event.anchor)
        if anchored is None:
            self._problem(
                f"alias *{event.anchor} names no anchor: define `&{event.anchor}` before it", point, fatal=True
            )
        assert anchored is not None
        value, size = anchored
        if value is _OPEN:
            self._problem(f"alias *{event.anchor} refers to a collection that contains it", point, fatal=True)
        self._spend(size, point)
        return value

    def _collection_tag_bad(self, event: Any, plain: str) -> bool:
        if event.tag is None or event.tag in (plain, "!"):
            return False
        self.flagged.add(self._path())
        self._problem(_tag_message(event.tag), _mark(event))
        return True

    def _scalar(self, event: Any) -> Any:
        value: str = event.value
        tag = event.tag
        if event.style == '"' and (problem := text_problem(value)) is not None:
            self.flagged.add(self._path())
            self._problem(f"{show(value)} {problem}", _mark(event))
            return None
        if tag is None or tag == "!":
            if tag is not None or not event.implicit[0]:
                return value
            tag = _resolve(value)
            if tag is STR:
                return value
        elif tag not in _SCALAR_TAGS:
            self.flagged.add(self._path())
            self._problem(_tag_message(tag), _mark(event))
            return None
        return self._construct(tag, value, event)

    def _construct(self, tag: str, value: str, event: Any) -> Any:  # noqa: PLR0911 - one return per tag
        if tag == STR:
            return value
        if tag == INT and value.isdigit() and (value[0] != "0" or value == "0"):
            return int(value)
        try:
            if tag == NULL:
                return None
            if tag == BOOL:
                return _CONSTRUCTOR.bool_values[value.lower()]
            if tag == INT:
                return _CONSTRUCTOR.construct_yaml_int(ScalarNode(tag, value))
            if tag == FLOAT:
                number = _CONSTRUCTOR.construct_yaml_float(ScalarNode(tag, value))
                if not math.isfinite(number):
                    self.flagged.add(self._path())
                    self._problem(f"{value!r} is not a finite number: JSON cannot represent it", _mark(event))
                    return None
                return number
        except (ValueError, KeyError):
            self.flagged.add(self._path())
            self._problem(f"{value!r} is not a valid {show_tag(tag)} value", _mark(event))
            return None
        return value  # timestamps and other implicit scalars stay text, as in JSON


class _DuplicateKey(str):
    """The key of a duplicate entry: its value is built (to keep reading) and then dropped."""

    __slots__ = ()


def _resolve(value: str) -> str:
    resolvers = _RESOLVERS.get(value[0] if value else "", [])
    for tag, regexp in resolvers:
        if regexp.match(value):
            return str(tag)
    for tag, regexp in _RESOLVERS.get(None, []):
        if regexp.match(value):
            return str(tag)
    return STR


def _tag_message(tag: str) -> str:
    return (
        f"tag {show_tag(tag)} is not allowed: workflow documents hold only mappings, lists, strings, "
        "numbers, booleans and null; remove the tag"
    )
