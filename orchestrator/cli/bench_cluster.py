"""`steppe bench all | scale | scaleout`: cluster benchmarks on private servers.

`bench all` measures Steppe's shapes, then the floor program on the same servers (`bench_floor`),
and with `--vs-peers` both peer harnesses (`bench_peers`) in the same invocation; the ratios
against the best peer of each kind and the floor, with the goals of issue 21, come from `bench_report`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from orchestrator.cli import bench_floor
from orchestrator.cli.bench import bench_app
from orchestrator.cli.bench_peers import run_durable_peers, run_peers
from orchestrator.cli.bench_report import Ratio, ratio_rows
from orchestrator.cli.common import console, err_console, load_settings, report_errors

DEFAULT_PEERS = "celery:solo dramatiq:t8"  # the fastest Redis rows of the 2026-12-04 run
DEFAULT_DURABLE_PEERS = "procrastinate:c1 dbos:tuned"  # ~15 minutes at full sizes


@contextmanager
def private_servers(
    keep_home: Path | None, *, redis_masters: int = 0, partitions: int | None = None
) -> Iterator[tuple[Any, dict[str, list[int]]]]:
    """Fresh embedded Redis and PostgreSQL in a private STEPPE_HOME (so nothing else competes), torn
    down after; yields their Settings and pids ({"redis": [...], "postgresql": [postmaster]}).

    `redis_masters` > 0 runs a private Redis Cluster of that many masters (no replicas) instead of
    the embedded Redis."""
    from orchestrator.dev.launcher import DevServers
    from orchestrator.dev.redis_cluster import LocalRedisCluster
    from orchestrator.settings import Settings

    home = keep_home or Path(tempfile.mkdtemp(prefix="steppe-bench-"))
    os.chmod(home, 0o755)  # noqa: S103 - PostgreSQL runs as another user and must traverse it
    namespace = f"bench{uuid.uuid4().hex[:6]}"
    os.environ["STEPPE_HOME"] = str(home)
    os.environ["STEPPE_NAMESPACE"] = namespace
    for var in ("STEPPE_REDIS_URL", "STEPPE_DATABASE_URL", "STEPPE_COORDINATOR__PARTITIONS"):
        os.environ.pop(var, None)
    if partitions:
        os.environ["STEPPE_COORDINATOR__PARTITIONS"] = str(partitions)
    settings = Settings(home=home, namespace=namespace)
    servers = DevServers(settings=settings)
    servers.up()
    cluster = None
    try:
        if redis_masters:
            cluster = LocalRedisCluster.start(home / "redis-cluster", masters=redis_masters, replicas=0)
            os.environ["STEPPE_REDIS_URL"] = cluster.url
            settings = Settings(home=home, namespace=namespace, redis_url=cluster.url)
        state = json.loads(settings.dev_state_path.read_text())
        pids = {
            "redis": [n.pid for n in cluster.nodes] if cluster else [state["redis"]["pid"]],
            "postgresql": [state["postgres"]["pid"]],
        }
        yield settings, pids
    finally:
        if cluster is not None:
            cluster.stop()
            os.environ.pop("STEPPE_REDIS_URL", None)
        servers.down()
        if keep_home is None:
            shutil.rmtree(home, ignore_errors=True)


@contextmanager
def steppe_cluster(
    settings: Any, pids: dict[str, list[int]], workers: int, concurrency: int | None, *, coordinators: int = 1
) -> Iterator[Any]:
    """Steppe's coordinator(s) and workers on servers `private_servers` started (a `ClusterBench`)."""
    from orchestrator.dev.benchmark import ClusterBench

    with ClusterBench(settings, workers=workers, concurrency=concurrency, coordinators=coordinators) as bench:
        bench.server_pids = pids
        yield bench


@contextmanager
def private_cluster(
    workers: int,
    concurrency: int | None,
    keep_home: Path | None,
    *,
    redis_masters: int = 0,
    coordinators: int = 1,
    partitions: int | None = None,
) -> Iterator[Any]:
    """Private servers (`private_servers`) with Steppe running on them; `coordinators` coordinator
    processes share `partitions`."""
    with (
        private_servers(keep_home, redis_masters=redis_masters, partitions=partitions) as (settings, pids),
        steppe_cluster(settings, pids, workers, concurrency, coordinators=coordinators) as bench,
    ):
        yield bench


def run_shapes(bench: Any, *, throughput: int, chain: int, fanout: int, repeat: int) -> dict[str, Any]:
    """Steppe's shapes, each with CPU per step by role (`bench_floor.measure`)."""
    measure = bench_floor.measure
    bench.chain(5)  # warm-up: imports, connections, consumer groups
    results: dict[str, Any] = {}
    if throughput:
        results["throughput_wide"] = measure(bench, bench.one_wide_workflow, throughput, repeat, "one wide workflow")
        results["throughput_runs"] = measure(
            bench, bench.many_one_step_workflows, throughput, repeat, "one-step workflows"
        )
    if chain:
        results["chain"] = measure(bench, bench.chain, chain, repeat, "chain")
    if fanout:
        results["fanout"] = measure(bench, bench.fanout, fanout, repeat, "fan-out + join")
    results["peak_rss_mib"] = bench.peak_rss_mib()
    results["durability"] = bench.durability()
    return results


def print_results(report: dict[str, Any]) -> None:
    """The tables of `bench all`: Steppe's shapes, the floor's, CPU per step, durability, ratios."""
    steppe = report["steppe"]
    table = Table(title="steppe bench (median of runs, min–max in brackets)")
    for col in ("program", "shape", "size", "seconds", "figure"):
        table.add_column(col)
    for who in ("steppe", "floor"):
        for row in bench_floor.shape_rows(report.get(who) or {}):
            table.add_row(who, *row)
    console.print(table)
    rss = steppe.get("peak_rss_mib", {})
    console.print(f"peak RSS: coordinator {rss.get('coordinator', 0):.0f} MiB, workers {rss.get('workers', 0):.0f} MiB")
    for name, value in steppe.get("durability", {}).items():
        console.print(f"durability ({name}): {value}")
    parts = {"steppe": steppe, **({"floor": report["floor"]} if report.get("floor") else {})}
    bench_floor.print_cpu("CPU milliseconds per step, by process role", parts)
    for kind, title in (("peers", "Redis peers"), ("durable_peers", "durable peers")):
        if report.get(kind):
            print_peers(title, report[kind])
    if report.get("ratios"):
        print_ratios([Ratio(**r) for r in report["ratios"]])


FORMS = {"throughput": "one by one", "throughput_batch": "batched", "chain": "in-process", "chain_queued": "queued"}


def print_peers(title: str, peers: dict[str, Any]) -> None:
    table = Table(title=f"{title}, medians (same invocation)")
    for col in ("row", "throughput", "chain", "fan-out + join"):
        table.add_column(col)
    for name, p in peers.items():
        tp = f"{p['throughput']:,.0f}/s" if p.get("throughput") else "—"
        if p.get("throughput_form"):
            tp += f" ({FORMS.get(p['throughput_form'], p['throughput_form'])})"
        hop = f"{p['chain_ms_per_hop']:.2f} ms/hop" if p.get("chain_ms_per_hop") else "—"
        if p.get("chain_form"):
            hop += f" ({FORMS.get(p['chain_form'], p['chain_form'])})"
        fan = f"{p['fanout']:.3f} s ({p.get('fanout_size', '?')} wide)" if p.get("fanout") else "—"
        table.add_row(name, tp, hop, fan)
    console.print(table)
    for name, p in peers.items():
        if p.get("durability"):
            console.print(f"durability ({name}): PostgreSQL {p['durability']}")


def print_ratios(rows: list[Ratio]) -> None:
    table = Table(title="Steppe against the best of each kind measured in the same run")
    for col in ("shape", "vs", "steppe", "best", "ratio", "goal", "met"):
        table.add_column(col, justify="right" if col in ("steppe", "ratio") else "left")
    for r in rows:
        fmt = "{:,.0f}" if r.unit == "steps/s" else "{:.2f}" if r.unit == "ms/hop" else "{:.3f}"
        met = "—" if r.met is None else ("yes" if r.met else "NO")
        shape = f"{bench_floor.SHAPE_LABELS.get(r.shape, r.shape)} {r.unit.replace('steps/s', '/s')}"
        table.add_row(
            shape,
            r.against,
            fmt.format(r.steppe),
            f"{r.other_name} {fmt.format(r.other)}",
            f"{r.ratio:.2f}×",
            r.goal or "—",
            met,
        )
    console.print(table)


@bench_app.command("all")
@report_errors
def bench_all(
    throughput: int = typer.Option(20000, help="Independent noop steps (0 to skip)"),
    chain: int = typer.Option(200, help="Sequential noop steps (0 to skip)"),
    fanout: int = typer.Option(1000, help="Parallel noop steps before the join (0 to skip)"),
    repeat: int = typer.Option(3, help="Repetitions; the median is reported"),
    workers: int = typer.Option(2, help="Worker processes"),
    concurrency: int | None = typer.Option(None, help="Steps per worker at once"),
    floor: bool = typer.Option(True, "--floor/--no-floor", help="Also run the floor program (`bench floor`)"),
    vs_peers: bool = typer.Option(
        False, "--vs-peers", help="Also run both peer harnesses (Redis peers, durable peers) and print every ratio"
    ),
    peers: str = typer.Option(DEFAULT_PEERS, help="Redis peer rows (peer:variant …, shared/bench/peers); '' for none"),
    durable_peers: str = typer.Option(
        DEFAULT_DURABLE_PEERS,
        help="Durable peer rows (dbos:default dbos:tuned procrastinate:c1 procrastinate:c8 prefect:default);"
        " '' for none",
    ),
    peers_quick: bool = typer.Option(
        False, "--peers-quick", help="Peers at the harnesses' small sizes (--quick: 2,000 / 50 / 200, one repetition)"
    ),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Throughput, chain and fan-out/fan-in on a private cluster (one coordinator, N workers), the floor, peers."""
    load_settings()
    report: dict[str, Any] = {}
    with private_servers(None) as (settings, pids):
        with steppe_cluster(settings, pids, workers, concurrency) as bench:
            report["steppe"] = run_shapes(bench, throughput=throughput, chain=chain, fanout=fanout, repeat=repeat)
        if floor:  # after Steppe's processes stopped: same servers, nothing else running
            report["floor"] = bench_floor.run_floor(settings, pids, throughput=throughput, chain=chain, repeat=repeat)
    if vs_peers and peers.strip():
        report["peers"] = run_peers(peers, Path(tempfile.mkdtemp(prefix="steppe-peers-")), quick=peers_quick)
    if vs_peers and durable_peers.strip():
        durable_dir = Path(tempfile.mkdtemp(prefix="steppe-durable-peers-"))
        report["durable_peers"] = run_durable_peers(durable_peers, durable_dir, quick=peers_quick)
    for kind, label in (("peers", "Redis peer"), ("durable_peers", "durable peer")):
        if kind in report and not report[kind]:
            err_console.print(f"the {label} harness produced no results; its output above says why")
    rows = ratio_rows(
        report["steppe"],
        redis_peers=report.get("peers"),
        durable_peers=report.get("durable_peers"),
        floor=report.get("floor"),
    )
    report["ratios"] = [r.to_json() for r in rows]
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        print_results(report)


@bench_app.command("scale")
@report_errors
def bench_scale(
    sizes: str = typer.Option("2000,20000,200000", help="Throughput sizes (comma-separated)"),
    runs: int = typer.Option(0, help="Also measure coordinator memory with this many active runs"),
) -> None:
    """The throughput shape at growing sizes: cost per step must stay flat (linear growth)."""
    with private_cluster(2, None, None) as bench:
        bench.chain(5)
        table = Table(title="throughput scaling (one wide workflow)")
        for col in ("steps", "seconds", "steps/s", "µs per step"):
            table.add_column(col)
        for size in (int(s) for s in sizes.split(",") if s.strip()):
            seconds = bench.one_wide_workflow(size)
            table.add_row(f"{size:,}", f"{seconds:.2f}", f"{size / seconds:,.0f}", f"{1e6 * seconds / size:.0f}")
        console.print(table)
        if runs:
            memory = bench.active_runs_memory(runs)
            console.print(f"coordinator RSS with {runs:,} active runs: {memory:.0f} MiB")


@bench_app.command("scaleout")
@report_errors
def bench_scaleout(
    configs: str = typer.Option(
        "0x1,1x1,3x1,1x3,3x3",
        help="Comma-separated MASTERSxCOORDINATORS; 0 masters = the single embedded Redis",
    ),
    size: int = typer.Option(20000, help="Steps per measurement (one wide workflow; as many one-step runs)"),
    repeat: int = typer.Option(3, help="Repetitions; the median is reported"),
    workers: int = typer.Option(2, help="Worker processes"),
    partitions: int = typer.Option(6, help="Run partitions (the same for every configuration)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Throughput for 1 vs N Redis Cluster masters and 1 vs N coordinators, each on fresh servers."""
    from orchestrator.dev.benchmark import repeat as rep

    results: dict[str, Any] = {}
    for config in (c.strip() for c in configs.split(",") if c.strip()):
        masters, _, coordinators = config.partition("x")
        err_console.print(f"measuring {config} (Redis Cluster masters x coordinators)…")
        with private_cluster(
            workers, None, None, redis_masters=int(masters), coordinators=int(coordinators or 1), partitions=partitions
        ) as bench:
            bench.chain(5)  # warm-up: imports, connections, consumer groups
            before = bench.cpu_by_role()
            results[config] = {
                "throughput_wide": rep(bench.one_wide_workflow, size, repeat, "one wide workflow").to_json(),
                "throughput_runs": rep(bench.many_one_step_workflows, size, repeat, "one-step workflows").to_json(),
                "peak_rss_mib": bench.peak_rss_mib(),
            }
            after = bench.cpu_by_role()
            steps = 2 * size * repeat
            # CPU milliseconds per 1,000 steps, by role (settling between repeats included).
            results[config]["cpu_ms_per_1000_steps"] = {
                role: round(1e6 * (after[role] - before[role]) / steps, 1) for role in after
            }
    if as_json:
        typer.echo(json.dumps(results, indent=2))
        return
    table = Table(title=f"steppe bench scaleout: {size:,} noop steps, median of {repeat} (min–max)")
    for col in ("Redis", "coordinators", "one wide workflow", "one-step workflows"):
        table.add_column(col)
    for config, r in results.items():
        masters, _, coordinators = config.partition("x")
        redis_label = "single" if masters == "0" else f"cluster, {masters} master(s)"
        table.add_row(redis_label, coordinators, _rate(r["throughput_wide"]), _rate(r["throughput_runs"]))
    console.print(table)
    cpu = Table(title="CPU milliseconds per 1,000 steps, by process role (both shapes)")
    roles = list(next(iter(results.values()))["cpu_ms_per_1000_steps"]) if results else []
    for col in ("masters x coordinators", *roles):
        cpu.add_column(col)
    for config, r in results.items():
        cpu.add_row(config, *(f"{r['cpu_ms_per_1000_steps'][role]:,.0f}" for role in roles))
    console.print(cpu)


def _rate(r: dict[str, Any]) -> str:
    rates = sorted(r["size"] / s for s in r["seconds"])
    return f"{r['per_second']:,.0f} steps/s ({rates[0]:,.0f}–{rates[-1]:,.0f})"
