"""What the UI's pages show, computed from status documents and event rows (pure: no I/O).

A run's step keys are its step ids, `id[i]` for the items of a `for_each` (or replicas of a
swarm) and `id:compensate` for compensations; the page groups all of them under their step,
in the planner's wave order, so that a 200-item fan-out is one row that unfolds.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from orchestrator.api.ui.dag import NodeState
from orchestrator.state import base_step_id

OUTPUT_LIMIT = 8_000  # characters of a step output or event payload shown before it is cut
EVENT_SUMMARY_LIMIT = 240
FAILED = frozenset({"failed", "dead_lettered"})
ACTIVE = frozenset({"dispatched", "running", "checking", "retry_scheduled"})


@dataclass(frozen=True, slots=True)
class Text:
    """Text to show in a <pre>, and how much of it was left out."""

    text: str
    cut: int = 0


@dataclass(slots=True)
class Attempt:
    number: int
    outcome: str
    error: str = ""


@dataclass(slots=True)
class StepRow:
    key: str
    status: str
    attempts: int
    output: Text | None = None
    error: str = ""
    traceback: str = ""
    child_run: str | None = None
    notes: str = ""
    due_at: str | None = None
    history: list[Attempt] = field(default_factory=list)


@dataclass(slots=True)
class StepGroup:
    """One step of the workflow: its own row, and its items and compensation when it has them."""

    step: str
    row: StepRow
    items: list[StepRow] = field(default_factory=list)
    compensation: StepRow | None = None
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def has_failures(self) -> bool:
        return self.row.status in FAILED or any(i.status in FAILED for i in self.items)

    def listed(self, limit: int) -> list[StepRow]:
        """The items a page lists: failed ones first, then in item order, at most `limit`."""
        return sorted(self.items, key=lambda i: i.status not in FAILED)[:limit]


@dataclass(frozen=True, slots=True)
class EventRow:
    seq: int
    at: str
    type: str
    step: str
    attempt: str
    summary: str


def pretty(value: Any, limit: int = OUTPUT_LIMIT) -> Text:
    """Indented JSON, cut at `limit` characters (the page of a run with huge outputs stays light)."""
    try:
        text = orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()
    except (TypeError, orjson.JSONEncodeError):
        text = repr(value)
    return Text(text[:limit], max(0, len(text) - limit))


def one_line(value: Any, limit: int = EVENT_SUMMARY_LIMIT) -> str:
    if value in (None, {}, []):
        return ""
    try:
        text = orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    except (TypeError, orjson.JSONEncodeError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def needs_of(definition: Mapping[str, Any] | None) -> dict[str, list[str]]:
    """Step id → the ids it needs, from a stored workflow definition."""
    steps = (definition or {}).get("steps") or []
    return {str(s["id"]): [str(n) for n in s.get("needs") or []] for s in steps if isinstance(s, dict) and "id" in s}


def fan_out_steps(definition: Mapping[str, Any] | None) -> set[str]:
    steps = (definition or {}).get("steps") or []
    return {str(s["id"]) for s in steps if isinstance(s, dict) and (s.get("for_each") is not None or s.get("swarm"))}


def waves_of(doc: Mapping[str, Any]) -> list[list[str]]:
    """The plan's waves, plus a last wave for any step the plan does not know (never hide a step)."""
    waves = [list(w) for w in (doc.get("plan") or {}).get("waves") or []]
    known = {s for w in waves for s in w}
    extra = sorted({base_step_id(k) for k in doc.get("steps", {})} - known)
    return [*waves, extra] if extra else waves


def node_states(doc: Mapping[str, Any], fan_out: Iterable[str]) -> dict[str, NodeState]:
    """The colour of every box: a step's own status; a fan-out's from its items when it has no row yet."""
    fan = set(fan_out)
    own: dict[str, str] = {}
    items: dict[str, Counter[str]] = {}
    compensation: dict[str, str] = {}
    for key, step in doc.get("steps", {}).items():
        base = base_step_id(key)
        if key == base:
            own[base] = step["status"]
        elif key.endswith(":compensate"):
            compensation[base] = step["status"]
        else:
            items.setdefault(base, Counter())[step["status"]] += 1
            fan.add(base)
    states: dict[str, NodeState] = {}
    for base in set(own) | set(items) | set(compensation) | fan:
        counts = items.get(base, Counter())
        status = own.get(base) or _aggregate(counts)
        states[base] = NodeState(
            status=status, items=dict(counts), fan_out=base in fan, compensation=compensation.get(base)
        )
    return states


def _aggregate(counts: Mapping[str, int]) -> str:
    if not counts:
        return "pending"
    if any(counts.get(s) for s in FAILED):
        return "failed"
    if any(counts.get(s) for s in ACTIVE):
        return "running"
    return "succeeded" if set(counts) == {"succeeded"} else next(iter(sorted(counts)))


def step_groups(
    doc: Mapping[str, Any], events: Sequence[Mapping[str, Any]], waves: Sequence[Sequence[str]]
) -> list[StepGroup]:
    """Every step of the run in wave order, each with its items and compensation (plan steps not
    started yet appear as pending)."""
    history = attempt_history(events)
    steps: Mapping[str, Any] = doc.get("steps", {})
    by_base: dict[str, list[str]] = {}
    for key in steps:
        by_base.setdefault(base_step_id(key), []).append(key)
    groups: list[StepGroup] = []
    for wave in waves:
        for base in wave:
            keys = by_base.get(base, [])
            own = steps.get(base)
            row = _row(base, own, history.get(base, [])) if own else StepRow(key=base, status="pending", attempts=0)
            group = StepGroup(step=base, row=row)
            items = sorted((k for k in keys if "[" in k), key=_item_index)
            group.items = [_row(k, steps[k], history.get(k, [])) for k in items]
            group.counts = dict(Counter(i.status for i in group.items))
            if own is None and group.items:
                row.status = _aggregate(group.counts)
            comp = f"{base}:compensate"
            if comp in steps:
                group.compensation = _row(comp, steps[comp], history.get(comp, []))
            groups.append(group)
    return groups


def _item_index(key: str) -> tuple[int, str]:
    inside = key[key.find("[") + 1 : key.find("]")]
    return (int(inside), key) if inside.isdigit() else (1 << 30, key)


def _row(key: str, step: Mapping[str, Any], history: list[Attempt]) -> StepRow:
    error = step.get("error") or {}
    detail = step.get("detail") or {}
    due = step.get("due_at")
    return StepRow(
        key=key,
        status=str(step.get("status", "pending")),
        attempts=int(step.get("attempts") or 0),
        output=pretty(step["output"]) if step.get("output") is not None else None,
        error=f"{error.get('type', 'Error')}: {error.get('message', '')}" if error else "",
        traceback=str(error.get("traceback") or "") if error else "",
        child_run=str(detail["child_run"]) if detail.get("child_run") else None,
        notes=one_line({k: v for k, v in detail.items() if k != "child_run"}) if detail else "",
        due_at=dt.datetime.fromtimestamp(due, dt.UTC).isoformat(timespec="seconds") if due else None,
        history=history,
    )


_OUTCOMES = {
    "step.succeeded": "succeeded",
    "step.failed": "failed",
    "step.retry_scheduled": "retry scheduled",
    "step.dead_lettered": "dead-lettered",
    "step.cancelled": "cancelled",
    "step.rejected": "rejected by its gate",
}


def attempt_history(events: Iterable[Mapping[str, Any]]) -> dict[str, list[Attempt]]:
    """Step key → how each of its attempts ended, with the error of those that failed."""
    out: dict[str, list[Attempt]] = {}
    for e in events:
        outcome = _OUTCOMES.get(str(e["type"]))
        if outcome is None or not e.get("step_key"):
            continue
        data = e.get("data") or {}
        error = data.get("error") or {}
        text = f"{error.get('type', 'Error')}: {error.get('message', '')}" if isinstance(error, dict) and error else ""
        out.setdefault(e["step_key"], []).append(
            Attempt(number=int(e.get("attempt") or 0), outcome=outcome, error=text)
        )
    return out


def event_rows(events: Iterable[Mapping[str, Any]]) -> list[EventRow]:
    return [
        EventRow(
            seq=int(e["seq"]),
            at=e["created_at"].isoformat(timespec="milliseconds") if e.get("created_at") else "",
            type=str(e["type"]),
            step=str(e.get("step_key") or ""),
            attempt=str(e["attempt"]) if e.get("attempt") is not None else "",
            summary=one_line(e.get("data")),
        )
        for e in events
    ]


def ago(value: float, now: float) -> str:
    """`3.2s ago` for a heartbeat timestamp."""
    return f"{max(0.0, now - value):.1f}s ago"
