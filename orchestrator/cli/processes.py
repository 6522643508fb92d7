"""`steppe coordinator`, `steppe worker` and the one-command `steppe run`.

This is the only module that ties the coordinator side and the worker side together.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from orchestrator.cli.common import console, err_console, load_settings, report_errors
from orchestrator.cli.context import connect
from orchestrator.cli.runs import exit_code_for, print_result, read_inputs, wait_for

if TYPE_CHECKING:
    from orchestrator.settings import Settings


def _split(values: list[str]) -> list[str]:
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


def register(app: typer.Typer) -> None:
    # Long on purpose: the typer commands are closures registered here, each short on its own.
    @app.command()
    @report_errors
    def coordinator(
        metrics_port: int | None = typer.Option(None, "--metrics-port", help="Serve /metrics on this port"),
        metrics_host: str = typer.Option(
            "127.0.0.1", "--metrics-host", envvar="STEPPE_METRICS_HOST", help="Address /metrics listens on"
        ),
    ) -> None:
        """Run a coordinator: plan, dispatch, apply results, retry, reconcile (SIGTERM stops it)."""
        from orchestrator import bus, gc_tuning, tracing
        from orchestrator.coordinator import Coordinator
        from orchestrator.metrics import serve_metrics
        from orchestrator.settings import check_timing
        from orchestrator.store.runs import RunStore

        settings = load_settings()
        check_timing(settings, "coordinator")  # before connecting to anything
        serve_metrics(metrics_port, metrics_host)
        client = bus.connect(settings)
        store = RunStore(
            settings.resolved_database_url(),
            pool_size=settings.database.pool_size,
            connect_timeout=settings.database.connect_timeout,
            durability=settings.durability,
        )
        store.open()
        coord = Coordinator(settings=settings, client=client, store=store)
        traces = tracing.configure(settings, tracing.COORDINATOR)  # None when off (docs/spec.md §12.7)
        if traces is not None:
            coord.run_spans = tracing.RunSpans(traces, store)
        gc_tuning.tune()

        def _stop(*_: object) -> None:
            coord.stopping = True

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        try:
            coord.run_forever()
        finally:
            if traces is not None:
                traces.shutdown()
            store.close()

    @app.command()
    @report_errors
    def worker(
        queues: list[str] = typer.Option(["default,hooks"], "--queues", "-q", help="Queues to serve (comma-separated)"),
        concurrency: int | None = typer.Option(None, "--concurrency", "-c", help="Steps run at once"),
        imports: list[str] = typer.Option([], "--import", help="Handler module to import (repeatable)"),
        metrics_port: int | None = typer.Option(None, "--metrics-port", help="Serve /metrics on this port"),
        metrics_host: str = typer.Option(
            "127.0.0.1", "--metrics-host", envvar="STEPPE_METRICS_HOST", help="Address /metrics listens on"
        ),
    ) -> None:
        """Run a worker that executes steps from the given queues (SIGTERM drains it)."""
        from orchestrator import gc_tuning, tracing
        from orchestrator.metrics import serve_metrics
        from orchestrator.settings import check_timing
        from workers.builtins import register_builtins
        from workers.consumer import Worker
        from workers.registry import default_registry, import_modules

        settings = load_settings()
        check_timing(settings, "worker")  # before importing handler modules
        sys.path.insert(0, os.getcwd())
        register_builtins(default_registry)
        import_modules([*settings.imports, *imports])
        serve_metrics(metrics_port, metrics_host)
        w = Worker(settings=settings, registry=default_registry, queues=_split(queues), concurrency=concurrency)
        traces = tracing.configure(settings, tracing.WORKER)  # None when off (docs/spec.md §12.7)
        if traces is not None:
            w.runner.spans = tracing.StepSpans(traces, worker=w.id)
        gc_tuning.tune()
        try:
            _run_async(w.run())
        finally:
            if traces is not None:
                traces.shutdown()

    @app.command("run")
    @report_errors
    def run_(
        file: Path = typer.Argument(..., help="Workflow YAML"),
        input_: list[str] = typer.Option([], "--input", "-i", help="Input as key=value"),
        inputs_file: Path | None = typer.Option(None, "--inputs-file"),
        workers: int = typer.Option(2, "--workers", "-w", help="Worker processes to start"),
        imports: list[str] = typer.Option([], "--import", help="Handler module for the workers"),
        timeout: float | None = typer.Option(None, "--timeout", help="Give up waiting after N seconds"),
    ) -> None:
        """One command: servers, migrations, a coordinator and workers, the run with live progress, the result."""
        from orchestrator.dev.cluster import LocalCluster

        settings = load_settings()
        values = read_inputs(input_, inputs_file)
        _ensure_servers(settings)
        # SIGTERM (a supervisor, `timeout`, `kill`) unwinds like Ctrl-C does, so that leaving the
        # `with` below stops the coordinator and workers it started instead of orphaning them.
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
        code = 1
        with (
            connect(settings) as clients,
            LocalCluster(settings, log_path=settings.home / "run.log") as cluster,
        ):
            submitter = clients.submitter
            spec = submitter.load_file(file)
            queues = sorted(
                submitter.queues_of(submitter.definition(spec, base_dir=file.parent)) | {"default", "hooks"}
            )
            cluster.start_coordinator()
            for _ in range(workers):
                cluster.start_worker(queues=queues, imports=imports)
            cluster.wait_for_workers(clients.redis, workers)
            result = submitter.submit(spec, inputs=values, base_dir=file.parent)
            console.print(
                f"submitted [bold]{result.run_id}[/] ({result.workflow}) to {workers} worker(s); "
                f"logs in {settings.home / 'run.log'}"
            )
            doc = wait_for(clients, result.run_id, live=True, timeout=timeout)
            print_result(doc)
            code = exit_code_for(doc["status"])
        raise typer.Exit(code)


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _run_async(coro: object) -> None:
    import asyncio

    try:
        import uvloop

        uvloop.run(coro)  # type: ignore[arg-type]
    except ImportError:
        asyncio.run(coro)  # type: ignore[arg-type]


def _ensure_servers(settings: Settings) -> None:
    from orchestrator.store.db import upgrade

    if not (settings.redis_url and settings.database_url):
        from orchestrator.dev.launcher import DevServers

        err_console.print("starting embedded Redis and PostgreSQL (steppe dev up)…")
        DevServers(settings=settings).up()
    upgrade(settings.resolved_migration_url())
