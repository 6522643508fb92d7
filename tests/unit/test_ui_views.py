"""What the run page shows (orchestrator/api/ui/dag.py, views.py): boxes by wave, fan-outs collapsed."""

from __future__ import annotations

import datetime as dt
from typing import Any

from orchestrator.api.ui import dag, views


def doc(steps: dict[str, dict[str, Any]], waves: list[list[str]], definition: list[dict[str, Any]]) -> dict[str, Any]:
    return {"steps": steps, "plan": {"waves": waves, "critical_path": []}, "definition": {"steps": definition}}


def step(status: str, **extra: Any) -> dict[str, Any]:
    return {"status": status, "attempts": 1, "output": None, "error": None, "due_at": None, "detail": {}, **extra}


DEFINITION = [
    {"id": "a"},
    {"id": "fan", "needs": ["a"], "for_each": "${{ inputs.items }}"},
    {"id": "b", "needs": ["a"]},
    {"id": "end", "needs": ["fan", "b"]},
]
WAVES = [["a"], ["b", "fan"], ["end"]]


def test_a_fan_out_is_one_box_with_a_bar_of_its_items() -> None:
    steps = {"a": step("succeeded"), "b": step("failed", error={"type": "E", "message": "m", "traceback": "tb"})}
    steps |= {f"fan[{i}]": step("succeeded" if i < 150 else "failed") for i in range(200)}
    d = doc(steps, WAVES, DEFINITION)
    states = views.node_states(d, views.fan_out_steps(d["definition"]))
    drawing = dag.layout(views.waves_of(d), views.needs_of(d["definition"]), states)
    boxes = {b.step: b for b in drawing.boxes}
    assert set(boxes) == {"a", "b", "fan", "end"}
    assert boxes["fan"].label == "fan \u00d7200"
    assert boxes["fan"].status == "failed"  # no row of its own yet: its items say
    assert [(s.status, s.count) for s in boxes["fan"].segments] == [("succeeded", 150), ("failed", 50)]
    assert sum(s.width for s in boxes["fan"].segments) == dag.NODE_W - 2
    assert boxes["end"].status == "pending"  # not started: drawn anyway
    assert len(drawing.curves) == 4
    assert boxes["a"].x < boxes["b"].x == boxes["fan"].x < boxes["end"].x


def test_a_wide_wave_wraps_into_columns_and_waves_are_ordered_by_their_dependencies() -> None:
    first = [f"w{i:03d}" for i in range(60)]
    second = ["z_needs_first", "a_needs_last"]
    needs = {"z_needs_first": ["w000"], "a_needs_last": ["w059"]}
    drawing = dag.layout([first, second], needs, {})
    xs = sorted({b.x for b in drawing.boxes if b.step in first})
    assert len(xs) == 3  # 60 steps, MAX_ROWS per column
    assert drawing.height < 30 * (dag.NODE_H + dag.ROW_GAP)
    boxes = {b.step: b for b in drawing.boxes}
    assert boxes["z_needs_first"].y < boxes["a_needs_last"].y  # barycentre, not alphabetical


def test_the_step_table_groups_items_and_compensations_under_their_step() -> None:
    steps = {
        "a": step("compensated"),
        "a:compensate": step("succeeded"),
        "fan": step("succeeded", output=[1, 2]),
        "fan[1]": step("succeeded", output=2),
        "fan[0]": step("failed", error={"type": "RuntimeError", "message": "<b>x</b>", "traceback": "Traceback …"}),
    }
    d = doc(steps, WAVES, DEFINITION)
    events = [
        {
            "type": "step.retry_scheduled",
            "step_key": "fan[0]",
            "attempt": 1,
            "data": {"error": {"type": "E", "message": "1"}},
        },
        {"type": "step.failed", "step_key": "fan[0]", "attempt": 2, "data": {"error": {"type": "E", "message": "2"}}},
    ]
    groups = {g.step: g for g in views.step_groups(d, events, views.waves_of(d))}
    assert list(groups) == ["a", "b", "fan", "end"]
    assert groups["a"].compensation is not None
    assert groups["a"].compensation.status == "succeeded"
    fan = groups["fan"]
    assert [i.key for i in fan.items] == ["fan[0]", "fan[1]"]
    assert fan.counts == {"failed": 1, "succeeded": 1}
    assert fan.has_failures
    assert fan.items[0].error == "RuntimeError: <b>x</b>"  # escaped by the template, kept verbatim here
    assert fan.items[0].traceback == "Traceback …"
    assert [(h.number, h.outcome) for h in fan.items[0].history] == [(1, "retry scheduled"), (2, "failed")]
    assert [r.key for r in fan.listed(1)] == ["fan[0]"]
    assert groups["b"].row.status == "pending"


def test_steps_the_plan_does_not_know_are_still_shown() -> None:
    d = doc({"a": step("succeeded"), "ghost": step("failed")}, [["a"]], [{"id": "a"}])
    assert views.waves_of(d) == [["a"], ["ghost"]]


def test_large_outputs_are_cut_and_events_summarised() -> None:
    text = views.pretty({"blob": "x" * 20_000})
    assert len(text.text) == views.OUTPUT_LIMIT
    assert text.cut > 10_000
    rows = views.event_rows(
        [
            {
                "seq": 1,
                "type": "run.submitted",
                "step_key": None,
                "attempt": None,
                "data": {"k": "v" * 500},
                "created_at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
            }
        ]
    )
    assert rows[0].summary.endswith("…")
    assert len(rows[0].summary) == views.EVENT_SUMMARY_LIMIT
