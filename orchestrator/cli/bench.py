"""`steppe bench …`: built-in benchmarks. `bench plan` measures loading, validating and planning
a random DAG in-process; other modules add cluster benchmarks to `bench_app`."""

from __future__ import annotations

import gc
import json
import random
import resource
import statistics
import sys
import time
import tracemalloc
from dataclasses import asdict, dataclass

import typer

from orchestrator.cli.common import console, report_errors

bench_app = typer.Typer(
    help="Built-in benchmarks: planning in-process, throughput and latency on a cluster.",
    no_args_is_help=True,
)

DEPENDENCY_WINDOW = 64  # dependencies are drawn from the previous steps, so that the graph is deep


def generate_dag_yaml(nodes: int, *, seed: int = 0, max_needs: int = 3) -> str:
    """A workflow of `nodes` builtin.noop steps, each needing up to `max_needs` earlier steps."""
    rng = random.Random(seed)
    out = [f"name: bench-{nodes}\n", "description: random DAG for steppe bench plan\n", "steps:\n"]
    for i in range(nodes):
        out.append(f"  - id: s{i}\n    handler: builtin.noop\n")
        start = max(0, i - DEPENDENCY_WINDOW)
        count = rng.randint(0, min(max_needs, i - start))
        if count:
            needs = sorted(rng.sample(range(start, i), count))
            out.append("    needs: [" + ", ".join(f"s{n}" for n in needs) + "]\n")
    return "".join(out)


@dataclass
class PlanBenchResult:
    nodes: int
    edges: int
    waves: int
    document_bytes: int
    parse_s: float  # YAML to plain data (median)
    validate_s: float  # models and whole-document checks (median)
    plan_s: float  # waves, critical path, queue widths (median)
    total_s: float  # load + validate + plan (median)
    peak_mib: float  # tracemalloc peak of one load + validate + plan
    max_rss_mib: float  # the process's peak resident set


def run_plan_bench(nodes: int, *, seed: int = 0, repeat: int = 3) -> PlanBenchResult:
    from orchestrator.planner import plan
    from orchestrator.spec import load_workflow, load_yaml

    source = generate_dag_yaml(nodes, seed=seed)
    parse, validate, planning, total = [], [], [], []
    edges = waves = 0
    for _ in range(repeat):
        # Start every run from the same heap: the previous run's objects are freed, untimed.
        gc.collect()
        t0 = time.perf_counter()
        load_yaml(source)
        t1 = time.perf_counter()
        spec = load_workflow(source)
        t2 = time.perf_counter()
        result = plan(spec)
        t3 = time.perf_counter()
        parse.append(t1 - t0)
        validate.append(t2 - t1 - (t1 - t0))
        planning.append(t3 - t2)
        total.append(t3 - t1)
        edges, waves = len(result.edges), len(result.waves)
        del spec, result
    gc.collect()
    tracemalloc.start()
    try:
        plan(load_workflow(source))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)
    return PlanBenchResult(
        nodes=nodes,
        edges=edges,
        waves=waves,
        document_bytes=len(source.encode()),
        parse_s=statistics.median(parse),
        validate_s=max(0.0, statistics.median(validate)),
        plan_s=statistics.median(planning),
        total_s=statistics.median(total),
        peak_mib=peak / 2**20,
        max_rss_mib=rss,
    )


@bench_app.command("plan")
@report_errors
def bench_plan(
    nodes: int = typer.Option(1000, "--nodes", "-n", min=1, help="Steps in the generated DAG"),
    seed: int = typer.Option(0, "--seed", help="Seed of the random graph"),
    repeat: int = typer.Option(3, "--repeat", "-r", min=1, help="Timed runs; the median is shown"),
    as_json: bool = typer.Option(False, "--json", help="Print the figures as JSON"),
) -> None:
    """Time load + validate + plan of a random DAG (up to 3 needs per step) and its peak memory."""
    with console.status(f"planning a {nodes:,}-step workflow {repeat}x…"):
        result = run_plan_bench(nodes, seed=seed, repeat=repeat)
    if as_json:
        sys.stdout.write(json.dumps(asdict(result)) + "\n")
        return
    from rich.table import Table

    table = Table(title=f"steppe bench plan: {result.nodes:,} steps, median of {repeat}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows = [
        ("edges / waves", f"{result.edges:,} / {result.waves:,}"),
        ("document", f"{result.document_bytes / 2**20:.2f} MiB"),
        ("parse YAML", f"{result.parse_s * 1000:.1f} ms"),
        ("validate", f"{result.validate_s * 1000:.1f} ms"),
        ("plan", f"{result.plan_s * 1000:.1f} ms"),
        ("load + validate + plan", f"{result.total_s * 1000:.1f} ms"),
        ("peak traced memory", f"{result.peak_mib:.1f} MiB"),
        ("max RSS", f"{result.max_rss_mib:.1f} MiB"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")
