"""The figures of `steppe bench all | floor` side by side: peers' medians, ratios against goals, CPU per step.

Pure functions on the result dicts the benchmarks and the peer harnesses produce (no I/O), so that
the report can be checked without running anything: `peer_medians` (a `shared/bench/peers` JSON),
`durable_medians` (a `shared/bench/durable-peers` JSON), `ratio_rows` (every Steppe shape against
the best Redis peer, the best durable peer and the floor, with the goals of issue 21),
`cpu_ms_per_step` (CPU by role between two `cpu_by_role` readings).
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Ratio", "best", "cpu_ms_per_step", "durable_medians", "peer_medians", "ratio_rows"]

# (shape, against) → (goal as text, comparison, bound); "min": ratio ≥ bound, "max": ratio ≤ bound.
GOALS: dict[tuple[str, str], tuple[str, str, float]] = {
    ("throughput_runs", "redis"): ("≥ 1.5×", "min", 1.5),
    ("throughput_runs", "durable"): ("≥ 10×", "min", 10.0),
    ("throughput_wide", "redis"): ("≥ 3×", "min", 3.0),
    ("chain", "redis"): ("≤ 0.6×", "max", 0.6),
    ("chain", "durable"): ("≤ 0.6×", "max", 0.6),
    ("fanout", "redis"): ("≤ 0.15×", "max", 0.15),
    ("fanout", "durable"): ("≤ 0.15×", "max", 0.15),
    ("throughput_runs", "floor"): ("≥ 0.5×", "min", 0.5),
    ("throughput_wide", "floor"): ("≥ 0.5×", "min", 0.5),
    ("chain", "floor"): ("≤ 1.5×", "max", 1.5),
}
SHAPES = ("throughput_wide", "throughput_runs", "chain", "fanout")


@dataclass(frozen=True, slots=True)
class Ratio:
    """Steppe's figure for `shape` against the best of `against` (redis, durable, floor)."""

    shape: str
    against: str
    unit: str  # steps/s (higher is better), ms/hop or s (lower is better)
    steppe: float
    other: float
    other_name: str
    ratio: float  # steppe / other
    goal: str | None
    met: bool | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _median_ok(runs: list[dict[str, Any]]) -> float | None:
    seconds = [r["seconds"] for r in runs if r.get("ok") and r.get("seconds")]
    return statistics.median(seconds) if seconds else None


def peer_medians(data: dict[str, Any]) -> dict[str, Any]:
    """One Redis peer's JSON (`shared/bench/peers`): throughput (steps/s), chain (s and ms/hop), fanout (s)."""
    params = data.get("params", {})
    runs = data.get("runs", {})
    tp = _median_ok(runs.get("throughput", []))
    chain = _median_ok(runs.get("chain", []))
    fanout = _median_ok(runs.get("fanout", []))
    chain_size = params.get("chain", 200)
    return {
        "throughput": params.get("n", 20000) / tp if tp else None,
        "chain": chain,
        "chain_ms_per_hop": 1000 * chain / chain_size if chain else None,
        "fanout": fanout,
        "fanout_size": params.get("fanout", 1000),
    }


def durable_medians(data: dict[str, Any]) -> dict[str, Any]:
    """One durable peer's JSON (`shared/bench/durable-peers`): the best of its throughput forms (one-by-one
    and batched enqueue), the faster of its chain forms (in-process, queued per hop), its fan-out."""
    params = data.get("params", {})
    runs = data.get("runs", {})
    rates: dict[str, float] = {}
    for form in ("throughput", "throughput_batch"):
        seconds = _median_ok(runs.get(form, []))
        if seconds:
            rates[form] = params.get("n", 20000) / seconds
    hops: dict[str, float] = {}
    for form, size_key in (("chain", "chain"), ("chain_queued", "chain_queued")):
        seconds = _median_ok(runs.get(form, []))
        if seconds:
            hops[form] = 1000 * seconds / params.get(size_key, params.get("chain", 200))
    tp_form = max(rates, key=lambda k: rates[k], default=None)
    hop_form = min(hops, key=lambda k: hops[k], default=None)
    fanout = _median_ok(runs.get("fanout", []))
    pg = data.get("postgresql") or {}
    return {
        "durability": f"fsync={pg.get('fsync', '?')} synchronous_commit={pg.get('synchronous_commit', '?')}",
        "throughput": rates[tp_form] if tp_form else None,
        "throughput_form": tp_form,
        "chain_ms_per_hop": hops[hop_form] if hop_form else None,
        "chain_form": hop_form,
        "fanout": fanout,
        "fanout_size": params.get("fanout", 1000),
    }


def best(
    peers: dict[str, dict[str, Any]], key: str, *, higher: bool, size: int | None = None
) -> tuple[str, float] | None:
    """The best peer for `key` (the highest or the lowest figure); for fan-out only peers measured
    at Steppe's `size` (Prefect's harness runs 100 wide, not 1,000)."""
    found = [
        (name, float(p[key]))
        for name, p in peers.items()
        if p.get(key) and (size is None or p.get("fanout_size") == size)
    ]
    if not found:
        return None
    return max(found, key=lambda kv: kv[1]) if higher else min(found, key=lambda kv: kv[1])


def _steppe_figure(results: dict[str, Any], shape: str) -> float | None:
    r = results.get(shape)
    if not r:
        return None
    if shape.startswith("throughput"):
        return float(r["per_second"])
    if shape == "chain":
        return 1000 * float(r["median_s"]) / int(r["size"])
    return float(r["median_s"])


def _ratio(shape: str, against: str, ours: float, other: tuple[str, float]) -> Ratio:
    unit = "steps/s" if shape.startswith("throughput") else "ms/hop" if shape == "chain" else "s"
    value = ours / other[1]
    goal = GOALS.get((shape, against))
    met = None
    if goal is not None:
        met = value >= goal[2] if goal[1] == "min" else value <= goal[2]
    return Ratio(shape, against, unit, ours, other[1], other[0], value, goal[0] if goal else None, met)


def ratio_rows(
    steppe: dict[str, Any],
    *,
    redis_peers: dict[str, dict[str, Any]] | None = None,
    durable_peers: dict[str, dict[str, Any]] | None = None,
    floor: dict[str, Any] | None = None,
) -> list[Ratio]:
    """Every Steppe shape against the best Redis peer, the best durable peer and the floor (what was measured)."""
    rows: list[Ratio] = []
    fanout_size = (steppe.get("fanout") or {}).get("size")
    for shape in SHAPES:
        ours = _steppe_figure(steppe, shape)
        if ours is None:
            continue
        for against, peers in (("redis", redis_peers), ("durable", durable_peers)):
            if not peers:
                continue
            if shape.startswith("throughput"):
                other = best(peers, "throughput", higher=True)
            elif shape == "chain":
                other = best(peers, "chain_ms_per_hop", higher=False)
            else:
                other = best(peers, "fanout", higher=False, size=fanout_size)
            if other is not None:
                rows.append(_ratio(shape, against, ours, other))
        theirs = _steppe_figure(floor, shape) if floor else None
        if theirs:
            rows.append(_ratio(shape, "floor", ours, ("floor", theirs)))
    return rows


def cpu_ms_per_step(before: dict[str, float], after: dict[str, float], steps: int) -> dict[str, float]:
    """CPU milliseconds per step by role between two `cpu_by_role` readings, and their total."""
    out = {role: round(1000 * (after[role] - before.get(role, 0.0)) / steps, 3) for role in after} if steps else {}
    if out:
        out["total"] = round(sum(out.values()), 3)
    return out
