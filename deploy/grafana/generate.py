"""Render Steppe's Grafana dashboards (deploy/grafana/dashboards/*.json) from panels.py.

Uses the grafana-foundation-sdk builders. After changing a metric or a panel, run
`python deploy/grafana/generate.py` and commit the JSON; `--check` exits 1 when the committed
files are out of date (the unit tests run the same comparison).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard as gd
from grafana_foundation_sdk.builders import prometheus, stat, statetimeline, timeseries
from grafana_foundation_sdk.builders.common import StackingConfig
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models.common import StackingMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from panels import DASHBOARDS, QUEUE, P, Q

OUT_DIR = Path(__file__).resolve().parent / "dashboards"
DS = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
TAGS = ["steppe", "generated"]


def _target(q: Q, ref: str) -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(q.expr).legend_format(q.legend or "__auto").ref_id(ref).datasource(DS)


def _thresholds(steps: tuple[tuple[float, str], ...]) -> gd.ThresholdsConfig:
    values = [dm.Threshold(value=None, color=steps[0][1])] + [dm.Threshold(value=v, color=c) for v, c in steps[1:]]
    return gd.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE).steps(values)


def _panel(p: P, panel_id: int) -> stat.Panel | timeseries.Panel | statetimeline.Panel:
    builder: stat.Panel | timeseries.Panel | statetimeline.Panel
    if p.kind == "stat":
        builder = stat.Panel().height(4)
    elif p.kind == "state":
        builder = statetimeline.Panel().height(8)
    else:
        builder = timeseries.Panel().height(8).fill_opacity(10 if not p.stack else 40)
        if p.stack:
            builder = builder.stacking(StackingConfig().mode(StackingMode.NORMAL))
    builder = builder.id(panel_id).title(p.title).span(p.width).unit(p.unit).datasource(DS)
    if p.description:
        builder = builder.description(p.description)
    if p.thresholds:
        builder = builder.thresholds(_thresholds(p.thresholds))
    if p.mappings:
        options = {
            value: dm.ValueMappingResult(text=text, color=color, index=i)
            for i, (value, (text, color)) in enumerate(p.mappings.items())
        }
        builder = builder.mappings([dm.ValueMap(options=options)])
    for i, q in enumerate(p.queries):
        builder = builder.with_target(_target(q, chr(ord("A") + i)))
    return builder


def _variables(rows: dict[str, list[P]]) -> list[object]:
    variables: list[object] = [
        gd.DatasourceVariable("datasource").label("Data source").type("prometheus"),
    ]
    if any(QUEUE in q.expr for panels in rows.values() for p in panels for q in p.queries):
        variables.append(
            gd.QueryVariable("queue")
            .label("Queue")
            .datasource(DS)
            .query("label_values(steppe_queue_depth, queue)")
            .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(dm.VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
            .all_value(".*")
            .current(dm.VariableOption(selected=True, text="All", value="$__all"))
        )
    return variables


def build(uid: str, title: str, rows: dict[str, list[P]], description: str) -> dict[str, object]:
    builder = (
        gd.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(TAGS)
        .editable()
        .refresh("30s")
        .time("now-1h", "now")
        .timezone("browser")
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
    )
    for variable in _variables(rows):
        builder = builder.with_variable(variable)  # type: ignore[arg-type]
    panel_id = 0
    for row_title, panels in rows.items():
        panel_id += 1
        builder = builder.with_row(gd.Row(row_title).id(panel_id))
        for p in panels:
            panel_id += 1
            builder = builder.with_panel(_panel(p, panel_id))
    encoded = JSONEncoder(sort_keys=True, indent=2).encode(builder.build())
    document: dict[str, object] = json.loads(encoded)
    return document


def render() -> dict[str, str]:
    """File name → JSON text of every dashboard."""
    return {
        f"{name}.json": json.dumps(build(*spec), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        for name, spec in DASHBOARDS.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed JSON is out of date")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="output directory")
    args = parser.parse_args(argv)
    stale = []
    for name, text in render().items():
        path = args.out / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
            continue
        args.out.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}")
    if stale:
        print(f"out of date: {', '.join(stale)}; run `python deploy/grafana/generate.py`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
