"""`steppe bench client`: submit-to-result latency of a one-step run through the Python client,
over the direct transport and over a real `steppe api` process, on a private cluster."""

from __future__ import annotations

import json
import socket
import statistics
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from orchestrator.cli.bench import bench_app
from orchestrator.cli.bench_cluster import private_cluster
from orchestrator.cli.common import console, load_settings, report_errors

if TYPE_CHECKING:
    from orchestrator.client import Client

ONE_STEP = """
name: bench-client
steps:
  - id: only
    handler: builtin.noop
"""


def measure(client: Client, runs: int, warmup: int) -> dict[str, float]:
    """Milliseconds from `submit()` to `result()` returning, one run at a time."""
    samples = []
    for i in range(warmup + runs):
        start = time.perf_counter()
        client.submit(ONE_STEP).result(timeout=60)
        if i >= warmup:
            samples.append((time.perf_counter() - start) * 1000)
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return {
        "runs": runs,
        "p50_ms": statistics.median(samples),
        "p90_ms": cuts[89],
        "p99_ms": cuts[98],
        "mean_ms": statistics.fmean(samples),
        "max_ms": max(samples),
    }


@contextmanager
def api_process(env: dict[str, str]) -> Iterator[str]:
    """`steppe api` on a free loopback port for the duration; stopped by its pid."""
    import httpx

    from orchestrator.dev.cluster import steppe_argv

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    argv = [*steppe_argv(), "api", "--host", "127.0.0.1", "--port", str(port), "--no-access-log"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise typer.Exit(3)
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@bench_app.command("client")
@report_errors
def bench_client(
    runs: int = typer.Option(200, min=2, help="Measured runs per transport"),
    warmup: int = typer.Option(20, min=0, help="Runs before measuring (connections, caches)"),
    workers: int = typer.Option(1, min=1, help="Worker processes"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Submit-to-result latency of a one-step run (builtin.noop) via Client, direct and over HTTP."""
    from orchestrator.client import Client

    load_settings()
    results: dict[str, Any] = {}
    with private_cluster(workers, None, None) as bench:
        assert bench.cluster is not None
        with Client(settings=bench.settings) as direct:
            results["direct"] = measure(direct, runs, warmup)
        with api_process(bench.cluster.env) as url, Client(api_url=url) as http:
            results["http"] = measure(http, runs, warmup)
    if as_json:
        typer.echo(json.dumps(results, indent=2))
        return
    table = Table(title=f"submit → result of a one-step run, {runs} runs one at a time")
    for col in ("transport", "p50 ms", "p90 ms", "p99 ms", "mean ms", "max ms"):
        table.add_column(col, justify="right")
    for kind, r in results.items():
        table.add_row(kind, *(f"{r[k]:.1f}" for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "max_ms")))
    console.print(table)
