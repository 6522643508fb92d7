"""The run page's DAG (pure: no I/O): boxes laid out by the planner's waves, edges as curves, for SVG.

One column per wave (the planner's topological generations, left to right); a wave wider than
MAX_ROWS wraps into several adjacent columns so that a 200-step wave stays on screen. Inside a
wave, steps are ordered by the mean row of the steps they need (one barycentre sweep), which
removes most crossings of layered graphs at no cost. A `for_each` step is one box, whatever its
item count, with a bar of its items' states. Coordinates are integers; the template draws them.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

NODE_W = 176
NODE_H = 34
COL_GAP = 64
WRAP_GAP = 16
ROW_GAP = 10
MARGIN = 12
MAX_ROWS = 24
LABEL_CHARS = 22
BAR_H = 5


@dataclass(frozen=True, slots=True)
class NodeState:
    """What the DAG shows of one step: its status, and for a fan-out the count of items per status."""

    status: str
    items: Mapping[str, int] = field(default_factory=dict)
    fan_out: bool = False
    compensation: str | None = None  # the status of its compensation, when one ran


@dataclass(frozen=True, slots=True)
class Segment:
    x: int
    width: int
    status: str
    count: int


@dataclass(frozen=True, slots=True)
class Box:
    step: str
    x: int
    y: int
    label: str
    status: str
    title: str
    segments: tuple[Segment, ...] = ()
    fan_out: bool = False


@dataclass(frozen=True, slots=True)
class Curve:
    path: str
    critical: bool


@dataclass(frozen=True, slots=True)
class Drawing:
    width: int
    height: int
    boxes: list[Box]
    curves: list[Curve]
    node_w: int = NODE_W
    node_h: int = NODE_H
    bar_h: int = BAR_H


def layout(
    waves: Sequence[Sequence[str]],
    needs: Mapping[str, Sequence[str]],
    states: Mapping[str, NodeState],
    *,
    critical_path: Sequence[str] = (),
) -> Drawing:
    """Positions for every step of `waves`; `needs` gives the edges, `states` the colours."""
    ordered = _order(waves, needs)
    position: dict[str, tuple[int, int]] = {}
    x = MARGIN
    max_rows = 0
    for wave in ordered:
        columns = [wave[i : i + MAX_ROWS] for i in range(0, len(wave), MAX_ROWS)] or [[]]
        for c, column in enumerate(columns):
            for row, step in enumerate(column):
                position[step] = (x, MARGIN + row * (NODE_H + ROW_GAP))
            max_rows = max(max_rows, len(column))
            x += NODE_W + (WRAP_GAP if c < len(columns) - 1 else COL_GAP)
    width = max(x - COL_GAP + MARGIN, 2 * MARGIN + NODE_W)
    height = max(2 * MARGIN + max_rows * (NODE_H + ROW_GAP) - ROW_GAP, 2 * MARGIN + NODE_H)
    boxes = [_box(step, *position[step], states.get(step)) for wave in ordered for step in wave]
    on_path = set(itertools.pairwise(critical_path))
    curves = [
        _curve(position[dep], position[step], (dep, step) in on_path)
        for wave in ordered
        for step in wave
        for dep in needs.get(step, ())
        if dep in position
    ]
    return Drawing(width=width, height=height, boxes=boxes, curves=curves)


def _order(waves: Sequence[Sequence[str]], needs: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Each wave sorted by the barycentre of its dependencies' rows (ties: the planner's order)."""
    row: dict[str, float] = {}
    ordered: list[list[str]] = []
    for w, wave in enumerate(waves):
        if w == 0:
            result = list(wave)
        else:
            keyed = []
            for i, step in enumerate(wave):
                rows = [row[d] for d in needs.get(step, ()) if d in row]
                keyed.append((sum(rows) / len(rows) if rows else float(i), i, step))
            result = [step for _, _, step in sorted(keyed)]
        for i, step in enumerate(result):
            row[step] = float(i)
        ordered.append(result)
    return ordered


def _box(step: str, x: int, y: int, state: NodeState | None) -> Box:
    state = state or NodeState(status="pending")
    label = step if len(step) <= LABEL_CHARS else step[: LABEL_CHARS - 1] + "…"
    total = sum(state.items.values())
    title = f"{step}: {state.status}"
    if state.fan_out:
        label = f"{label} \u00d7{total}" if total else f"{label} (for each)"
        title += "".join(f", {n} {s}" for s, n in sorted(state.items.items()))
    if state.compensation:
        title += f", compensation {state.compensation}"
    return Box(
        step=step,
        x=x,
        y=y,
        label=label,
        status=state.status,
        title=title,
        segments=_segments(x, state.items) if state.fan_out else (),
        fan_out=state.fan_out,
    )


def _segments(x: int, items: Mapping[str, int]) -> tuple[Segment, ...]:
    """The item bar of a fan-out box: one segment per status, widths proportional to counts."""
    total = sum(items.values())
    if not total:
        return ()
    out: list[Segment] = []
    offset = 0
    inner = NODE_W - 2
    for i, (status, count) in enumerate(sorted(items.items(), key=lambda kv: _STATUS_ORDER.get(kv[0], 99))):
        w = inner - offset if i == len(items) - 1 else round(inner * count / total)
        if w > 0:
            out.append(Segment(x=x + 1 + offset, width=w, status=status, count=count))
        offset += w
    return tuple(out)


_STATUS_ORDER = {
    s: i
    for i, s in enumerate(
        ("succeeded", "running", "dispatched", "checking", "retry_scheduled", "pending", "failed", "dead_lettered")
    )
}


def _curve(src: tuple[int, int], dst: tuple[int, int], critical: bool) -> Curve:
    x1, y1 = src[0] + NODE_W, src[1] + NODE_H // 2
    x2, y2 = dst[0], dst[1] + NODE_H // 2
    if x2 <= x1:  # a dependency in a wrapped column of the same wave cannot happen; guard anyway
        x2 = x1 + 1
    mid = (x1 + x2) // 2
    return Curve(path=f"M{x1} {y1} C{mid} {y1} {mid} {y2} {x2} {y2}", critical=critical)
