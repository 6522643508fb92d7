"""The PromQL that Steppe ships: every dashboard panel and variable query, every alert expression.

Pure functions over the files in deploy/grafana/dashboards and deploy/prometheus/alerts.yml,
shared by deploy/check_dashboards.py (which evaluates them against a live Prometheus) and the
unit tests (which check that they name only series and labels of orchestrator/metrics.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).resolve().parent
DASHBOARDS = DEPLOY / "grafana" / "dashboards"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"

# What Grafana substitutes for its built-in variables, at the scale of a short check.
GRAFANA_BUILTINS = {"__rate_interval": "1m", "__interval": "15s", "__range": "5m", "__range_s": "300"}
_COMPARISONS = ("==", "!=", ">=", "<=", ">", "<")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_SELECTOR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(.+?)\s*,\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)\s*$")


@dataclass(frozen=True)
class Query:
    """One shipped query: `expr` must parse; `probe` (the same, or its signal) must return series."""

    source: str
    name: str
    expr: str
    probe: str


def substitute(expr: str, variables: dict[str, str]) -> str:
    """Replace Grafana variables ($name, ${name}, [[name]]) by their values; longest names first."""
    values = {**GRAFANA_BUILTINS, **variables}
    for name in sorted(values, key=len, reverse=True):
        value = values[name]
        expr = expr.replace("${" + name + "}", value).replace("[[" + name + "]]", value)
        expr = re.sub(r"\$" + re.escape(name) + r"(?![a-zA-Z0-9_])", value.replace("\\", "\\\\"), expr)
    return expr


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels") or [])


def dashboard_queries(path: Path) -> list[Query]:
    """Every target of every panel (rows included) and every query variable of one dashboard."""
    doc = json.loads(path.read_text())
    variables: dict[str, str] = {}
    found: list[Query] = []
    for var in doc.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        variables[var["name"]] = var.get("allValue") or ".*"
        raw = var.get("query")
        text = raw.get("query", "") if isinstance(raw, dict) else str(raw or "")
        match = _LABEL_VALUES.match(text)
        # label_values() is Grafana's, not PromQL: probe the series and label it lists.
        probe = f"group by ({match.group(2)}) ({match.group(1)})" if match else text
        found.append(Query(path.name, f"variable ${var['name']}", probe, probe))
    for panel in _panels(doc.get("panels", [])):
        for target in panel.get("targets") or []:
            if "expr" in target:
                expr = substitute(target["expr"], variables)
                name = f"{panel.get('title', '?')} [{target.get('refId', '?')}]"
                found.append(Query(path.name, name, expr, expr))
    return found


def alert_queries(path: Path = ALERTS) -> list[Query]:
    """Every alerting and recording rule; the probe of an alert is its signal (see `signal`)."""
    doc = yaml.safe_load(path.read_text())
    found = []
    for group in doc.get("groups", []):
        for rule in group.get("rules", []):
            name = rule.get("alert") or rule.get("record")
            expr = str(rule["expr"]).strip()
            found.append(Query(path.name, f"{group['name']}/{name}", expr, signal(expr) if "alert" in rule else expr))
    return found


def all_queries(dashboards: Path = DASHBOARDS, alerts: Path = ALERTS) -> list[Query]:
    queries: list[Query] = []
    for path in sorted(dashboards.glob("*.json")):
        queries += dashboard_queries(path)
    return queries + alert_queries(alerts)


def _outside_strings(expr: str) -> Iterator[tuple[int, str]]:
    """(index, character) of the characters of `expr` outside string literals."""
    i = 0
    while i < len(expr):
        string = _STRING.match(expr, i)
        if string:
            i = string.end()
            continue
        yield i, expr[i]
        i += 1


def _top_level(expr: str) -> list[int]:
    """Indices of the characters of `expr` outside brackets and string literals."""
    depth = 0
    found = []
    for i, ch in _outside_strings(expr):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif depth == 0:
            found.append(i)
    return found


def _balanced(text: str) -> bool:
    depth = 0
    for _, ch in _outside_strings(text):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth < 0:
            return False
    return depth == 0


def signal(expr: str) -> str:
    """What an alert measures, as a query that returns series whether or not the alert fires.

    `absent(X)` measures X; `A > 300` becomes `A > bool 300`, which keeps every series of A
    (valued 0 or 1) instead of dropping those below the threshold.
    """
    expr = expr.strip()
    inner = re.fullmatch(r"absent\s*\((.*)\)", expr, flags=re.DOTALL)
    if inner and _balanced(inner.group(1)):
        return inner.group(1).strip()
    for i in _top_level(expr):
        op = expr[i : i + 2] if expr[i : i + 2] in _COMPARISONS else expr[i] if expr[i] in "<>" else None
        if op is None:
            continue
        rest = expr[i + len(op) :].lstrip()
        if rest.startswith("bool "):
            return expr
        return f"{expr[:i].rstrip()} {op} bool {rest}"
    return expr


def series_names(expr: str) -> set[str]:
    """The Steppe series an expression reads (identifiers starting with `steppe_`)."""
    bare = _STRING.sub('""', expr)
    return {name for name in _IDENT.findall(bare) if name.startswith("steppe_")}


def matcher_labels(expr: str) -> list[tuple[str, str]]:
    """(series, label) for every label matcher written inside a `series{…}` selector."""
    bare = _STRING.sub('""', expr)
    return [(m.group(1), label) for m in _SELECTOR.finditer(bare) for label in _MATCHER.findall(m.group(2))]


def grouping_labels(expr: str) -> set[str]:
    """Labels named in by/without/on/ignoring/group_* clauses."""
    bare = _STRING.sub('""', expr)
    return {label.strip() for m in _GROUPING.finditer(bare) for label in m.group(1).split(",") if label.strip()}
