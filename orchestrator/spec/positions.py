"""Where a value sits in a YAML document: path tuples such as ("steps", 3, "needs", 0) to line:col."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import yaml
from yaml import events as ev

Path = tuple[str | int, ...]
Point = tuple[int, int]  # 1-based line and column

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True, slots=True)
class Location:
    """Where a path's key (for mapping entries) and value start; `exact` is False when only an
    ancestor of the path exists in the document (e.g. a required key that is missing)."""

    key: Point | None
    value: Point
    exact: bool = True

    def point(self, *, at_key: bool = False) -> Point:
        return self.key if at_key and self.key is not None else self.value


class PositionMap(Mapping[Path, Point]):
    """Positions of a document's values, computed on demand by re-reading its events.

    Building a map of every value up front would cost as much as the load itself for large
    documents, and positions are only needed for the few values that have a problem. Use
    `locate()` to find many paths in one pass; the Mapping interface is exact (KeyError when
    a path is absent) and walks the document per lookup.
    """

    def __init__(self, text: str, *, filename: str = "<string>") -> None:
        self.text = text
        self.filename = filename

    def locate(self, paths: Iterable[Path]) -> dict[Path, Location]:
        """The location of each path, falling back to its nearest ancestor present in the document."""
        requested = set(paths)
        wanted: set[Path] = {()}
        for path in requested:
            wanted.update(path[:i] for i in range(1, len(path) + 1))
        found = _walk(self.text, wanted)
        result: dict[Path, Location] = {}
        for path in requested:
            for i in range(len(path), -1, -1):
                location = found.get(path[:i])
                if location is not None:
                    result[path] = location if i == len(path) else Location(None, location.value, exact=False)
                    break
            else:
                result[path] = Location(None, (1, 1), exact=False)
        return result

    def point(self, path: Path, *, at_key: bool = False) -> Point:
        """Best-effort line:col of one path (its key when `at_key` and it is a mapping entry)."""
        return self.locate([path])[path].point(at_key=at_key)

    def __getitem__(self, path: Path) -> Point:
        location = self.locate([path])[path]
        if not location.exact:
            raise KeyError(path)
        return location.value

    def __iter__(self) -> Iterator[Path]:
        return iter(_walk(self.text, None))

    def __len__(self) -> int:
        return len(_walk(self.text, None))


class _Frame:
    __slots__ = ("index", "key", "key_point", "mapping", "path")

    def __init__(self, path: Path, mapping: bool) -> None:
        self.path = path
        self.mapping = mapping
        self.index = 0
        self.key: str | int | None = None  # None: the next scalar in a mapping is a key
        self.key_point: Point | None = None


def _walk(text: str, wanted: set[Path] | None) -> dict[Path, Location]:
    """Locations of the paths in `wanted` (every path when None); subtrees outside it are skipped."""
    walker = _Walker(wanted)
    loader = _Loader(text)
    try:
        while True:
            event = loader.get_event()
            if event.__class__ is ev.StreamEndEvent:
                break
            walker.feed(event)
    except yaml.YAMLError:
        pass  # positions found before a syntax error are still useful
    finally:
        loader.dispose()
    return walker.found


_STARTS = (ev.MappingStartEvent, ev.SequenceStartEvent)
_ENDS = (ev.MappingEndEvent, ev.SequenceEndEvent)
_IGNORED = (ev.StreamStartEvent, ev.DocumentStartEvent, ev.DocumentEndEvent)


class _Walker:
    """Follows the event stream, keeping the path of the current value."""

    def __init__(self, wanted: set[Path] | None) -> None:
        self.wanted = wanted
        self.found: dict[Path, Location] = {}
        self.stack: list[_Frame] = []
        self.skip = 0  # depth inside a subtree that holds no wanted path
        self.skipping_key = False

    def feed(self, event: Any) -> None:
        cls = event.__class__
        start, end = cls in _STARTS, cls in _ENDS
        if self.skip:
            self.skip += 1 if start else -1 if end else 0
            if self.skip == 0 and not self.skipping_key:
                _advance(self.stack)
            self.skipping_key = self.skipping_key and self.skip > 0
        elif end:
            self.stack.pop()
            _advance(self.stack)
        elif cls not in _IGNORED:
            self._value(event, start)

    def _value(self, event: Any, start: bool) -> None:
        point = (event.start_mark.line + 1, event.start_mark.column + 1)
        frame = self.stack[-1] if self.stack else None
        if frame is not None and frame.mapping and frame.key is None:
            if start:  # a collection used as a key: nothing below it can be addressed
                self.skip, self.skipping_key = 1, True
            frame.key = event.value if event.__class__ is ev.ScalarEvent else -1
            frame.key_point = point
            return
        path: Path
        if frame is None:
            path, key_point = (), None
        elif frame.mapping:
            assert frame.key is not None
            path, key_point = (*frame.path, frame.key), frame.key_point
        else:
            path, key_point = (*frame.path, frame.index), None
        interesting = self.wanted is None or path in self.wanted
        if interesting and path not in self.found:
            self.found[path] = Location(key_point, point)
        if not start:
            _advance(self.stack)
        elif interesting:
            self.stack.append(_Frame(path, event.__class__ is ev.MappingStartEvent))
        else:
            self.skip = 1


def _advance(stack: list[_Frame]) -> None:
    """A value of the innermost collection is complete: move to its next key or index."""
    if stack:
        frame = stack[-1]
        if frame.mapping:
            frame.key = None
            frame.key_point = None
        else:
            frame.index += 1
