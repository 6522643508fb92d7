"""`steppe bench floor`: the floor program (orchestrator/dev/floor.py) on private servers, its figures
and CPU per step by role; `measure` and `run_floor` are shared with `steppe bench all`."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import typer
from rich.table import Table

from orchestrator.cli.bench import bench_app
from orchestrator.cli.bench_report import cpu_ms_per_step
from orchestrator.cli.common import console, load_settings, report_errors


def measure(bench: Any, fn: Callable[[int], float], size: int, times: int, shape: str) -> dict[str, Any]:
    """`times` timed runs of `fn(size)`, each after `bench.settle()`; the ShapeResult's JSON plus
    `cpu_ms_per_step` by role over the timed runs only (the settling's VACUUM is left out)."""
    from orchestrator.dev.benchmark import ShapeResult

    result = ShapeResult(shape=shape, size=size)
    used: dict[str, float] = {}
    for _ in range(times):
        bench.settle()
        before = bench.cpu_by_role()
        result.seconds.append(fn(size))
        after = bench.cpu_by_role()
        for role, seconds in after.items():
            used[role] = used.get(role, 0.0) + seconds - before.get(role, 0.0)
    out = result.to_json()
    out["cpu_ms_per_step"] = cpu_ms_per_step({}, used, size * times)
    return out


def run_floor(
    settings: Any, server_pids: dict[str, list[int]], *, throughput: int, chain: int, repeat: int
) -> dict[str, Any]:
    """The floor's shapes on the servers of `settings` (migrated here; the database must have no live coordinator)."""
    from orchestrator.dev.floor import FloorBench
    from orchestrator.store.db import upgrade

    upgrade(settings.resolved_migration_url())
    results: dict[str, Any] = {}
    with FloorBench(settings) as floor:
        floor.server_pids = server_pids
        floor.chain(5)  # warm-up, and the readiness check of its processes
        if throughput:
            results["throughput_wide"] = measure(
                floor, floor.one_wide_workflow, throughput, repeat, "one wide workflow"
            )
            results["throughput_runs"] = measure(
                floor, floor.many_one_step_workflows, throughput, repeat, "one-step workflows"
            )
        if chain:
            results["chain"] = measure(floor, floor.chain, chain, repeat, "chain")
        results["durability"] = floor.durability()
    return results


def shape_rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(shape, size, seconds median (min to max), figure) of each shape measured."""
    rows = []
    for key, label in (("throughput_wide", "one wide workflow"), ("throughput_runs", "one-step workflows")):
        if key in results:
            r = results[key]
            rows.append((label, f"{r['size']:,}", _spread(r["seconds"]), f"{r['per_second']:,.0f} steps/s"))
    if "chain" in results:
        r = results["chain"]
        rows.append(
            ("chain", f"{r['size']:,}", _spread(r["seconds"]), f"{1000 * r['median_s'] / r['size']:.2f} ms/hop")
        )
    if "fanout" in results:
        r = results["fanout"]
        rows.append(("fan-out + join", f"{r['size']:,}", _spread(r["seconds"]), f"{r['median_s']:.3f} s"))
    return rows


def _spread(values: list[float]) -> str:
    return f"{sorted(values)[len(values) // 2]:.3f} ({min(values):.3f}–{max(values):.3f})"


SHAPE_LABELS = {"throughput_wide": "wide", "throughput_runs": "runs", "chain": "chain", "fanout": "fan-out"}
ROLE_LABELS = {"coordinators": "coord.", "postgresql": "pg", "producer": "prod."}


def print_cpu(title: str, parts: dict[str, dict[str, Any]]) -> None:
    """CPU ms per step by role: one row per (who, shape) that has `cpu_ms_per_step`."""
    rows = [
        (who, shape, r["cpu_ms_per_step"])
        for who, results in parts.items()
        for shape, r in results.items()
        if isinstance(r, dict) and r.get("cpu_ms_per_step")
    ]
    if not rows:
        return
    roles = list(rows[0][2])
    table = Table(title=title)
    table.add_column("program")
    table.add_column("shape")
    for role in roles:
        table.add_column(ROLE_LABELS.get(role, role), justify="right")
    for who, shape, cpu in rows:
        table.add_row(who, SHAPE_LABELS.get(shape, shape), *(f"{cpu.get(role, 0):.3f}" for role in roles))
    console.print(table)


@bench_app.command("floor")
@report_errors
def bench_floor(
    throughput: int = typer.Option(20000, help="Steps of the throughput shapes (0 to skip)"),
    chain: int = typer.Option(200, help="Sequential steps (0 to skip)"),
    repeat: int = typer.Option(3, help="Repetitions; the median is reported"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The floor: per step only the durable work Steppe's contract requires (orchestrator/dev/floor.py)."""
    from orchestrator.cli.bench_cluster import private_servers

    load_settings()
    with private_servers(None) as (settings, pids):
        results = run_floor(settings, pids, throughput=throughput, chain=chain, repeat=repeat)
    if as_json:
        typer.echo(json.dumps({"floor": results}, indent=2))
        return
    table = Table(title="steppe bench floor (median of runs, min–max in brackets)")
    for col in ("shape", "size", "seconds", "figure"):
        table.add_column(col)
    for row in shape_rows(results):
        table.add_row(*row)
    console.print(table)
    for name, value in results.get("durability", {}).items():
        console.print(f"durability ({name}): {value}")
    print_cpu("CPU milliseconds per step, by process role", {"floor": results})
