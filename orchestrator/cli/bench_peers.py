"""The two peer harnesses of `steppe bench all --vs-peers`, run from this invocation.

Redis task queues (`shared/bench/peers/run_all.sh`: Celery, RQ, Dramatiq) and durable engines
(`shared/bench/durable-peers/run_durable.sh`: DBOS, procrastinate, Prefect, on their own private
PostgreSQL). Each harness reports on our stderr (stdout stays clean for --json) and writes one
JSON per row into a temporary folder, read back here into medians (`bench_report`). A harness
whose virtualenv is missing is set up first: the Redis peers' venv with the versions its
`--setup` pins, the durable peers' by the harness's own `--setup`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from orchestrator.cli.bench_report import durable_medians, peer_medians
from orchestrator.cli.common import err_console

SHARED_BENCH = Path(__file__).resolve().parents[2].parent / "shared" / "bench"
PEERS_DIR = SHARED_BENCH / "peers"
DURABLE_DIR = SHARED_BENCH / "durable-peers"
# The versions `run_all.sh --setup` installs (its PEERS_PIP default); without its apt step.
PEERS_PIP = ("celery[redis]==5.7.0", "rq==3.0.0", "dramatiq[redis]==2.2.1", "hiredis==3.5.0", "redis==8.1.0")
DURABLE_VENVS = {
    "dbos": "DURABLE_VENV_DBOS",
    "procrastinate": "DURABLE_VENV_PROCRASTINATE",
    "prefect": "DURABLE_VENV_PREFECT",
}


def _harness(script: Path) -> None:
    if not script.exists():
        raise typer.BadParameter(
            f"peer harness not found at {script}; it lives in the shared folder next to the checkout"
        )


def _redis_on_path(env: dict[str, str]) -> None:
    redis7 = Path(__file__).resolve().parents[2] / ".steppe-tools" / "redis7"
    if shutil.which("redis-server") is None and (redis7 / "usr/bin/redis-server").exists():
        # The Makefile unpacks Debian's redis-server 7 here; the harness wants one on PATH.
        env["PATH"] = f"{redis7 / 'usr/bin'}{os.pathsep}{env.get('PATH', '')}"
        libs = [str(p) for p in (redis7 / "usr/lib").glob("*-linux-gnu")]
        env["LD_LIBRARY_PATH"] = os.pathsep.join([*libs, env.get("LD_LIBRARY_PATH", "")])


def _read_rows(results_dir: Path, medians: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path in sorted(results_dir.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except ValueError:
            continue
        if isinstance(data, dict) and "peer" in data:
            out[f"{data['peer']}/{data.get('variant', '')}"] = medians(data)
    return out


def run_peers(peers: str, results_dir: Path, *, quick: bool = False) -> dict[str, Any]:
    """The Redis peers (same machine, same invocation): their medians by `peer/variant`."""
    script = PEERS_DIR / "run_all.sh"
    _harness(script)
    env = dict(os.environ, PEERS=peers, SKIP_LIMITS="1", PEERS_RESULTS=str(results_dir))
    _redis_on_path(env)
    venv = Path(env.get("PEERS_VENV", "/tmp/peers-venv"))  # noqa: S108 - the harness's default
    if not (venv / "bin" / "python").exists():
        err_console.print(f"creating the Redis peers' venv {venv} ({' '.join(PEERS_PIP)})…")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, stdout=sys.stderr)
        subprocess.run([str(venv / "bin" / "pip"), "install", *PEERS_PIP], check=True, stdout=sys.stderr)
    err_console.print(f"running the Redis peer harness for {peers} (this takes minutes)…")
    subprocess.run(["bash", str(script), *(["--quick"] if quick else [])], env=env, check=False, stdout=sys.stderr)
    return _read_rows(results_dir, peer_medians)


def missing_durable_venvs(rows: str, env: dict[str, str]) -> list[str]:
    """The venvs the durable rows need that do not exist yet."""
    missing = []
    for row in rows.split():
        peer = row.partition(":")[0]
        if peer not in DURABLE_VENVS:
            raise typer.BadParameter(f"unknown durable peer {row!r}; choose among {', '.join(sorted(DURABLE_VENVS))}")
        venv = Path(env.get(DURABLE_VENVS[peer], f"/tmp/durable-venv-{peer}"))  # noqa: S108 - the harness's default
        if not (venv / "bin" / "python").exists():
            missing.append(str(venv))
    return missing


def run_durable_peers(rows: str, results_dir: Path, *, quick: bool = False) -> dict[str, Any]:
    """The durable peers (`rows` as "procrastinate:c1 dbos:tuned"), their own PostgreSQL included."""
    script = DURABLE_DIR / "run_durable.sh"
    _harness(script)
    env = dict(os.environ, PEERS=rows, DURABLE_RESULTS=str(results_dir))
    args = ["--quick"] if quick else []
    missing = missing_durable_venvs(rows, env)
    if missing:
        err_console.print(f"creating {', '.join(missing)} with the harness's own --setup…")
        args.append("--setup")
    err_console.print(f"running the durable peer harness for {rows} (this takes minutes)…")
    subprocess.run(["bash", str(script), *args], env=env, check=False, stdout=sys.stderr, cwd=DURABLE_DIR)
    return _read_rows(results_dir, durable_medians)
