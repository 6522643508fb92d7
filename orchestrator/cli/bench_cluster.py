"""`steppe bench all | scale | scaleout`: cluster benchmarks on private servers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from orchestrator.cli.bench import bench_app
from orchestrator.cli.common import console, err_console, load_settings, report_errors

PEERS_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "bench" / "peers"


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
    """Fresh embedded servers in a private STEPPE_HOME (so nothing else competes), torn down after.

    `redis_masters` > 0 runs Steppe on a private Redis Cluster of that many masters (no replicas)
    instead of the embedded Redis; `coordinators` coordinator processes share `partitions`.
    """
    from orchestrator.dev.benchmark import ClusterBench
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
        with ClusterBench(settings, workers=workers, concurrency=concurrency, coordinators=coordinators) as bench:
            state = json.loads(settings.dev_state_path.read_text())
            bench.server_pids = {
                "redis": [n.pid for n in cluster.nodes] if cluster else [state["redis"]["pid"]],
                "postgresql": [state["postgres"]["pid"]],
            }
            yield bench
    finally:
        if cluster is not None:
            cluster.stop()
            os.environ.pop("STEPPE_REDIS_URL", None)
        servers.down()
        if keep_home is None:
            shutil.rmtree(home, ignore_errors=True)


def _fmt(values: list[float]) -> str:
    return f"{sorted(values)[len(values) // 2]:.3f} ({min(values):.3f}–{max(values):.3f})"


def run_shapes(bench: Any, *, throughput: int, chain: int, fanout: int, repeat: int) -> dict[str, Any]:
    from orchestrator.dev.benchmark import repeat as rep

    bench.chain(5)  # warm-up: imports, connections, consumer groups
    results: dict[str, Any] = {}
    if throughput:
        wide = rep(bench.one_wide_workflow, throughput, repeat, "throughput (one wide workflow)")
        runs = rep(bench.many_one_step_workflows, throughput, repeat, "throughput (one-step workflows)")
        results["throughput_wide"] = wide.to_json()
        results["throughput_runs"] = runs.to_json()
    if chain:
        results["chain"] = rep(bench.chain, chain, repeat, "chain").to_json()
    if fanout:
        results["fanout"] = rep(bench.fanout, fanout, repeat, "fan-out + join").to_json()
    results["peak_rss_mib"] = bench.peak_rss_mib()
    results["durability"] = bench.durability()
    return results


def print_results(results: dict[str, Any], peers: dict[str, Any] | None = None) -> None:
    table = Table(title="steppe bench (median of runs, min–max in brackets)")
    for col in ("shape", "size", "seconds", "figure"):
        table.add_column(col)
    for key in ("throughput_wide", "throughput_runs"):
        if key in results:
            r = results[key]
            table.add_row(key.replace("_", " "), str(r["size"]), _fmt(r["seconds"]), f"{r['per_second']:,.0f} steps/s")
    if "chain" in results:
        r = results["chain"]
        table.add_row("chain", str(r["size"]), _fmt(r["seconds"]), f"{1000 * r['median_s'] / r['size']:.2f} ms/hop")
    if "fanout" in results:
        r = results["fanout"]
        table.add_row("fan-out + join", str(r["size"]), _fmt(r["seconds"]), f"{r['median_s']:.3f} s")
    console.print(table)
    rss = results.get("peak_rss_mib", {})
    console.print(f"peak RSS: coordinator {rss.get('coordinator', 0):.0f} MiB, workers {rss.get('workers', 0):.0f} MiB")
    for name, value in results.get("durability", {}).items():
        console.print(f"durability ({name}): {value}")
    if peers:
        print_ratios(results, peers)


def print_ratios(results: dict[str, Any], peers: dict[str, Any]) -> None:
    table = Table(title="Steppe against the best peer measured in the same run")
    for col in ("figure", "steppe", "best peer", "ratio", "goal"):
        table.add_column(col)
    tp = max(peers.items(), key=lambda kv: kv[1].get("throughput") or 0, default=None)
    if tp and "throughput_runs" in results:
        for key in ("throughput_wide", "throughput_runs"):
            ours = results[key]["per_second"]
            table.add_row(
                key.replace("_", " "),
                f"{ours:,.0f}/s",
                f"{tp[0]} {tp[1]['throughput']:,.0f}/s",
                f"{ours / tp[1]['throughput']:.1f}×",
                "≥ 10×",
            )
    for key, goal in (("chain", "≤ 0.5×"), ("fanout", "≤ 0.2×")):
        best = min(((n, p[key]) for n, p in peers.items() if p.get(key)), key=lambda kv: kv[1], default=None)
        if best and key in results:
            ours = results[key]["median_s"]
            table.add_row(key, f"{ours:.3f} s", f"{best[0]} {best[1]:.3f} s", f"{ours / best[1]:.2f}×", goal)
    console.print(table)


def run_peers(peers: str, results_dir: Path) -> dict[str, Any]:
    """Run the peer harness (same machine, same invocation) and read its medians."""
    script = PEERS_DIR / "run_all.sh"
    if not script.exists():
        raise typer.BadParameter(f"peer harness not found at {script}")
    env = dict(os.environ, PEERS=peers, SKIP_LIMITS="1", PEERS_RESULTS=str(results_dir))
    redis7 = Path(__file__).resolve().parents[2] / ".steppe-tools" / "redis7"
    if shutil.which("redis-server") is None and (redis7 / "usr/bin/redis-server").exists():
        # The Makefile unpacks Debian's redis-server 7 here; the harness wants one on PATH.
        env["PATH"] = f"{redis7 / 'usr/bin'}{os.pathsep}{env.get('PATH', '')}"
        libs = [str(p) for p in (redis7 / "usr/lib").glob("*-linux-gnu")]
        env["LD_LIBRARY_PATH"] = os.pathsep.join([*libs, env.get("LD_LIBRARY_PATH", "")])
    err_console.print(f"running the peer harness for {peers} (this takes minutes)…")
    # The harness reports on stdout; keep ours (possibly --json) clean.
    subprocess.run(["bash", str(script)], env=env, check=False, stdout=sys.stderr)
    out: dict[str, Any] = {}
    for path in sorted(results_dir.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except ValueError:
            continue
        if not isinstance(data, dict) or "peer" not in data:
            continue
        out[f"{data['peer']}/{data.get('variant', '')}"] = _peer_medians(data)
    return out


def _peer_medians(data: dict[str, Any]) -> dict[str, float | None]:
    import statistics

    def med(scenario: str) -> float | None:
        runs = [r["seconds"] for r in data.get("runs", {}).get(scenario, []) if r.get("ok") and r.get("seconds")]
        return statistics.median(runs) if runs else None

    tp = med("throughput")
    size = data.get("params", {}).get("n", 20000)
    return {"throughput": (size / tp) if tp else None, "chain": med("chain"), "fanout": med("fanout")}


@bench_app.command("all")
@report_errors
def bench_all(
    throughput: int = typer.Option(20000, help="Independent noop steps (0 to skip)"),
    chain: int = typer.Option(200, help="Sequential noop steps (0 to skip)"),
    fanout: int = typer.Option(1000, help="Parallel noop steps before the join (0 to skip)"),
    repeat: int = typer.Option(3, help="Repetitions; the median is reported"),
    workers: int = typer.Option(2, help="Worker processes"),
    concurrency: int | None = typer.Option(None, help="Steps per worker at once"),
    vs_peers: bool = typer.Option(False, "--vs-peers", help="Also run shared/bench/peers and print ratios"),
    peers: str = typer.Option(
        "celery:prefork celery:solo rq:simple dramatiq:t1 dramatiq:t8", help="Peer variants to run (peer:variant …)"
    ),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Throughput, chain and fan-out/fan-in on a private cluster (one coordinator, N workers)."""
    load_settings()
    with private_cluster(workers, concurrency, None) as bench:
        results = run_shapes(bench, throughput=throughput, chain=chain, fanout=fanout, repeat=repeat)
    peer_results = run_peers(peers, Path(tempfile.mkdtemp(prefix="steppe-peers-"))) if vs_peers else None
    if as_json:
        typer.echo(json.dumps({"steppe": results, "peers": peer_results}, indent=2))
    else:
        print_results(results, peer_results)


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
