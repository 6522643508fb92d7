"""Run the locust load test against a private local cluster, then print runs/s and run latency per shape.

    python loadtests/run_loadtest.py [--users 20] [--spawn-rate 5] [--run-time 60s] [--workers 2]

Starts, in a private STEPPE_HOME under /tmp: the embedded Redis and PostgreSQL (`steppe dev up`),
the schema (`steppe db upgrade`), one coordinator and N workers, and `steppe api` on a free
loopback port with a random bearer token; runs locust headless against it (CSV and HTML reports
in loadtests/results/); stops exactly what it started (by pid, and `steppe dev down`).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from orchestrator.dev.cluster import LocalCluster, steppe_argv  # noqa: E402 - after the path set-up above
from orchestrator.settings import Settings  # noqa: E402

MAX_USERS = 500
MAX_RUN_SECONDS = 30 * 60
SHAPES = ("noop", "chain5", "fanout20", "fail_retry")


@dataclass
class ShapeFigures:
    shape: str
    runs: int
    failures: int
    runs_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument("--users", "-u", type=int, default=20, help=f"concurrent locust users (at most {MAX_USERS})")
    p.add_argument("--spawn-rate", "-r", type=float, default=5.0, help="users started per second")
    p.add_argument("--run-time", "-t", default="60s", help="how long to load, e.g. 60s, 5m (at most 30m)")
    p.add_argument("--workers", type=int, default=2, help="worker processes")
    p.add_argument("--concurrency", type=int, default=None, help="steps each worker runs at once")
    p.add_argument("--results", type=Path, default=HERE / "results", help="where CSV/HTML reports go")
    p.add_argument("--keep-home", action="store_true", help="keep the private STEPPE_HOME (data and logs)")
    args = p.parse_args(argv)
    if not 1 <= args.users <= MAX_USERS:
        p.error(f"--users must be between 1 and {MAX_USERS}")
    args.run_seconds = seconds(args.run_time)
    if not 1 <= args.run_seconds <= MAX_RUN_SECONDS:
        p.error("--run-time must be between 1s and 30m")
    return args


def seconds(text: str) -> int:
    """Locust's --run-time syntax (`90`, `60s`, `5m`, `1h30m`) in seconds."""
    if text.isdigit():
        return int(text)
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text.strip())
    if not parts or not any(parts.groups()):
        raise SystemExit(f"bad --run-time {text!r}: use e.g. 60s, 5m or 1h30m")
    h, m, s = (int(g or 0) for g in parts.groups())
    return h * 3600 + m * 60 + s


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def steppe(env: dict[str, str], log: IO[bytes], *args: str, check: bool = True) -> None:
    """Run a short `steppe` command; its output goes to the log, and to stderr if it fails."""
    done = subprocess.run([*steppe_argv(), *args], env=env, capture_output=True, timeout=180, check=False)
    log.write(done.stdout + done.stderr)
    log.flush()
    if done.returncode != 0:
        if not check:
            print(f"warning: `steppe {' '.join(args)}` exited with code {done.returncode}", file=sys.stderr)
            return
        sys.stderr.write((done.stdout + done.stderr).decode(errors="replace"))
        raise SystemExit(f"`steppe {' '.join(args)}` failed with exit code {done.returncode}")


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"`steppe api` exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as r:  # noqa: S310 - loopback URL built above
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise SystemExit(f"the API at {url} was not ready within {timeout:.0f}s")


def stop(proc: subprocess.Popen[bytes] | None, timeout: float = 20.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_locust(args: argparse.Namespace, env: dict[str, str], url: str, prefix: Path) -> int:
    argv = [
        sys.executable, "-m", "locust", "-f", str(HERE / "locustfile.py"), "--headless",
        "--users", str(args.users), "--spawn-rate", str(args.spawn_rate), "--run-time", f"{args.run_seconds}s",
        "--host", url, "--csv", str(prefix), "--html", str(prefix.with_name(prefix.name + ".html")),
        "--stop-timeout", "30", "--only-summary", "--loglevel", "WARNING",
    ]  # fmt: skip
    proc = subprocess.Popen(argv, env=env)
    try:
        # Bounded: run time + the stop timeout for runs in flight + start-up and report writing.
        return proc.wait(timeout=args.run_seconds + 30 + 60)
    except subprocess.TimeoutExpired:
        stop(proc)
        raise SystemExit("locust did not stop in time; stopped it") from None
    finally:
        stop(proc)


def figures(stats_csv: Path) -> list[ShapeFigures]:
    rows: list[ShapeFigures] = []
    with stats_csv.open(newline="") as f:
        for row in csv.DictReader(f):
            if row["Type"] != "RUN":
                continue
            rows.append(
                ShapeFigures(
                    shape=row["Name"], runs=int(row["Request Count"]), failures=int(row["Failure Count"]),
                    runs_per_s=float(row["Requests/s"]), p50_ms=_ms(row["50%"]), p95_ms=_ms(row["95%"]),
                    p99_ms=_ms(row["99%"]),
                )
            )  # fmt: skip
    order = {name: i for i, name in enumerate(SHAPES)}
    return sorted(rows, key=lambda r: order.get(r.shape, len(order)))


def _ms(value: str) -> float:
    return float(value) if value not in ("", "N/A") else float("nan")


def http_summary(stats_csv: Path) -> list[dict[str, str]]:
    with stats_csv.open(newline="") as f:
        return [row for row in csv.DictReader(f) if row["Type"] not in ("RUN", "")]


def report(shapes: list[ShapeFigures], http: list[dict[str, str]]) -> str:
    lines = [f"{'shape':<12}{'runs':>7}{'failed':>8}{'runs/s':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"]
    for s in shapes:
        lines.append(
            f"{s.shape:<12}{s.runs:>7}{s.failures:>8}{s.runs_per_s:>9.2f}{s.p50_ms:>9.0f}{s.p95_ms:>9.0f}{s.p99_ms:>9.0f}"
        )
    total = sum(s.runs_per_s for s in shapes)
    lines.append(f"{'all runs':<12}{sum(s.runs for s in shapes):>7}{sum(s.failures for s in shapes):>8}{total:>9.2f}")
    lines.append("")
    lines.append(f"{'HTTP':<22}{'requests':>9}{'failed':>8}{'req/s':>8}{'p50 ms':>8}{'p95 ms':>8}{'p99 ms':>8}")
    for row in http:
        name = row["Name"] if row["Name"] == "Aggregated" else f"{row['Type']} {row['Name']}"
        lines.append(
            f"{name[:22]:<22}{row['Request Count']:>9}{row['Failure Count']:>8}{float(row['Requests/s']):>8.1f}"
            f"{row['50%']:>8}{row['95%']:>8}{row['99%']:>8}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:  # noqa: PLR0915 - one linear start, load, stop sequence
    args = parse_args(argv)
    args.results.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="steppe-loadtest-", dir="/tmp"))
    home.chmod(0o755)  # PostgreSQL runs as an unprivileged user when we are root; it must reach its data
    token = secrets.token_urlsafe(24)
    env = {k: v for k, v in os.environ.items() if k not in ("STEPPE_REDIS_URL", "STEPPE_DATABASE_URL")}
    env.update({
        "STEPPE_HOME": str(home), "STEPPE_NAMESPACE": "loadtest", "STEPPE_API_TOKEN": token,
        "STEPPE_LOG_LEVEL": "WARNING", "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
    })  # fmt: skip
    log_path = home / "loadtest.log"
    prefix = args.results / f"loadtest-{time.strftime('%Y%m%d-%H%M%S')}"
    api: subprocess.Popen[bytes] | None = None
    cluster: LocalCluster | None = None
    servers_up = False
    print(f"private STEPPE_HOME {home}; logs in {log_path}", flush=True)
    with log_path.open("ab") as log:
        try:
            steppe(env, log, "dev", "up")
            servers_up = True
            steppe(env, log, "db", "upgrade")
            settings = Settings(_env_file=None, home=home, namespace="loadtest")
            cluster = LocalCluster(settings, log_path=home / "cluster.log", env=env)
            cluster.start_coordinator()
            for _ in range(args.workers):
                cluster.start_worker(queues=["default"], concurrency=args.concurrency)
            import redis

            with redis.Redis.from_url(settings.resolved_redis_url()) as client:
                cluster.wait_for_workers(client, args.workers)
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            api_argv = [*steppe_argv(), "api", "--host", "127.0.0.1", "--port", str(port), "--no-access-log"]
            api = subprocess.Popen(api_argv, env=env, stdout=log, stderr=subprocess.STDOUT)
            wait_ready(url, api)
            print(
                f"cluster up: 1 coordinator, {args.workers} worker(s), API at {url}; "
                f"locust: {args.users} users, spawn rate {args.spawn_rate}/s, {args.run_seconds}s",
                flush=True,
            )
            code = run_locust(args, env, url, prefix)
        finally:
            stop(api)
            if cluster is not None:
                cluster.stop()
            if servers_up:
                steppe(env, log, "dev", "down", check=False)
    stats = prefix.with_name(prefix.name + "_stats.csv")
    if not stats.exists():
        print(f"locust wrote no statistics (exit code {code}); see {log_path}", file=sys.stderr)
        return code or 1
    shapes = figures(stats)
    print()
    print(report(shapes, http_summary(stats)))
    summary = {"users": args.users, "run_seconds": args.run_seconds, "workers": args.workers,
               "shapes": [asdict(s) for s in shapes]}  # fmt: skip
    prefix.with_name(prefix.name + "_summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\nreports: {prefix}_stats.csv, {prefix}.html, {prefix}_summary.json")
    for name in ("cluster.log", "loadtest.log"):
        if (home / name).exists():
            shutil.copy(home / name, prefix.with_name(f"{prefix.name}_{name}"))
    if not args.keep_home:
        shutil.rmtree(home, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
