"""Prove the shipped dashboards and alerts against a real Prometheus scraping a live Steppe cluster.

    python deploy/check_dashboards.py [--pg-admin-url URL [--pg-credentials FILE]] [--prometheus PATH] [--keep]

What it does, all on 127.0.0.1, on free ports, in a temporary directory, within ~3 minutes:

1. `promtool check rules` and `promtool test rules` on deploy/prometheus/alerts*.yml;
2. starts a private redis-server with the users of deploy/redis/users.acl and a PostgreSQL
   database set up by deploy/postgres/roles.sql and migrated as `steppe_migrator`, so that the
   cluster runs with the least-privilege credentials the deployment docs prescribe;
3. starts Prometheus (scraping every second) with alerts.yml, a coordinator and two workers
   with --metrics-port, and runs a workload of builtin steps: successes, retries, failures, a
   saga, a circuit breaker, hooks, and a worker that stalls (SIGSTOP) mid-step so that its
   message is reclaimed, dead-lettered, and its late result suppressed as a duplicate;
4. evaluates every dashboard target and variable and every alert expression (its signal: `A > 3`
   as `A > bool 3`, `absent(X)` as X) through /api/v1/query, checks that every rule evaluates
   cleanly, and that Redis refused no command (ACL LOG) and PostgreSQL no statement.

Exit 0 when every query parses and returns series; 1 with a table of offenders; 2 when a tool
is missing (the message says how to install it). Everything it started is stopped by pid.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis
import yaml
from psycopg import sql

from orchestrator.dev import PostgresServer, find_redis_server
from orchestrator.dev.process import free_port
from orchestrator.dev.redis_server import binary_env

DEPLOY = Path(__file__).resolve().parent
ROOT = DEPLOY.parent
if str(DEPLOY) not in sys.path:  # the sibling modules below; deploy/ is not a package
    sys.path.insert(0, str(DEPLOY))

from check_workload import Workload  # noqa: E402
from monitoring_queries import Query, all_queries  # noqa: E402

PROMETHEUS_ENV = "STEPPE_PROMETHEUS"
TOOLS_PROMETHEUS = ROOT / ".steppe-tools" / "prometheus" / "usr" / "bin" / "prometheus"
INSTALL_HINT = (
    "Prometheus is not installed. `make prometheus` unpacks Debian's package into .steppe-tools/ "
    "without starting a service (apt-get download prometheus && dpkg -x prometheus_*.deb "
    ".steppe-tools/prometheus), or `apt-get install -y prometheus`, or set STEPPE_PROMETHEUS to a binary."
)
SCRAPE_JOBS = ("steppe-coordinator", "steppe-worker")
BUDGET = 170.0  # seconds for the whole check, start-up and clean-up included
HISTORY = 36.0  # seconds of samples the queries need, from the coordinator's first scrape


def find_prometheus(configured: str | None = None) -> Path | None:
    """$STEPPE_PROMETHEUS, else the copy unpacked into .steppe-tools, else `prometheus` on PATH."""
    for candidate in (configured, os.environ.get(PROMETHEUS_ENV), TOOLS_PROMETHEUS, shutil.which("prometheus")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate).resolve()
    return None


@dataclass
class Offender:
    source: str
    name: str
    problem: str
    expr: str = ""


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self, cap: float | None = None) -> float:
        left = max(0.0, self.end - time.monotonic())
        return left if cap is None else min(cap, left)


def wait_until(predicate: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll `predicate` until it returns something truthy; raise TimeoutError naming `what`."""
    end = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as e:  # not ready yet: servers starting, connections refused
            last = e
        if time.monotonic() >= end:
            raise TimeoutError(f"{what} within {timeout:.0f}s" + (f" (last error: {last})" if last else ""))
        time.sleep(interval)


class Processes:
    """Everything this check starts, stopped in reverse order, each by its own pid."""

    def __init__(self) -> None:
        self._stops: list[tuple[str, Callable[[], None]]] = []

    def on_close(self, what: str, stop: Callable[[], None]) -> None:
        self._stops.append((what, stop))

    def popen(
        self, what: str, argv: list[str], *, log: Path, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.on_close(what, lambda: terminate(proc))
        return proc

    def close(self) -> None:
        while self._stops:
            what, stop = self._stops.pop()
            try:
                stop()
            except Exception as e:
                print(f"warning: stopping {what} failed: {e}", file=sys.stderr)


def terminate(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    if proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGCONT)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -- servers -----------------------------------------------------------------------------------------


def acl_with_passwords(workdir: Path) -> tuple[Path, dict[str, str]]:
    """deploy/redis/users.acl with fresh passwords, plus an administrative user for this check."""
    passwords: dict[str, str] = {}
    lines = []
    for line in (DEPLOY / "redis" / "users.acl").read_text().splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "user" and words[1] != "default":
            passwords[words[1]] = secrets.token_hex(12)
            words = [w for w in words if not w.startswith(("#", ">", "<", "!")) and w != "nopass"]
            words.insert(3, ">" + passwords[words[1]])
        lines.append(" ".join(words))
    passwords["steppe-check"] = secrets.token_hex(12)
    lines.append(f"user steppe-check on >{passwords['steppe-check']} ~* &* +@all")
    path = workdir / "users.acl"
    path.write_text("\n".join(lines) + "\n")
    return path, passwords


def redis7_binary() -> Path:
    """STEPPE_TEST_REDIS_SERVER, else the Redis 7 `make install` unpacks: users.acl needs ACL selectors (7+)."""
    unpacked = ROOT / ".steppe-tools" / "redis7" / "usr" / "bin" / "redis-server"
    configured = os.environ.get("STEPPE_TEST_REDIS_SERVER") or (str(unpacked) if unpacked.exists() else None)
    found = find_redis_server(configured)
    if found.version_info < (7,):
        raise RuntimeError(
            f"{found.path} is Redis {found.version}; deploy/redis/users.acl needs Redis 7 (ACL selectors): "
            "run `make install` or set STEPPE_TEST_REDIS_SERVER to a redis-server 7"
        )
    return found.path


def start_redis(procs: Processes, workdir: Path, deadline: Deadline) -> tuple[int, dict[str, str]]:
    binary = redis7_binary()
    acl, passwords = acl_with_passwords(workdir)
    port = free_port()
    procs.popen("redis-server", [
        str(binary), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
        "--dir", str(workdir), "--aclfile", str(acl), "--maxmemory-policy", "noeviction",
    ], log=workdir / "redis.log", env=binary_env(binary))  # fmt: skip
    admin = redis.Redis(host="127.0.0.1", port=port, username="steppe-check", password=passwords["steppe-check"])
    wait_until(admin.ping, timeout=deadline.left(20), what="redis-server did not answer")
    admin.close()
    return port, passwords


def _url(base: str, *, user: str, database: str, password: str | None = None) -> str:
    parts = urllib.parse.urlsplit(base)
    host = parts.hostname or "127.0.0.1"
    credentials = f"{user}:{urllib.parse.quote(password, safe='')}" if password else user
    netloc = f"{credentials}@{host}:{parts.port or 5432}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, f"/{database}", parts.query, ""))


def prepare_database(
    procs: Processes, admin_url: str, workdir: Path, env: dict[str, str], passwords: dict[str, str]
) -> str:
    """A fresh database set up with roles.sql and migrated by steppe_migrator; the steppe_app URL.

    `passwords` are the roles' passwords where the cluster has them (a `steppe dev` cluster's
    credentials file); roles without one get a fresh password here."""
    name = f"steppe_check_{secrets.token_hex(4)}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    procs.on_close(f"database {name}", drop)
    roles = (DEPLOY / "postgres" / "roles.sql").read_text()
    admin = urllib.parse.urlsplit(admin_url)
    database_admin_url = _url(
        admin_url,
        user=admin.username or "postgres",
        database=name,
        password=admin.password and urllib.parse.unquote(admin.password),
    )
    with psycopg.connect(database_admin_url, autocommit=True) as conn:
        conn.execute(roles)  # a trusted, shipped file
        for role in ("steppe_migrator", "steppe_app"):
            if role not in passwords:
                passwords[role] = secrets.token_hex(12)
                conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                    sql.Identifier(role), sql.Literal(passwords[role])
                ))  # fmt: skip
    migrator_url = _url(admin_url, user="steppe_migrator", database=name, password=passwords["steppe_migrator"])
    migrate_env = {**env, "STEPPE_DATABASE_URL": migrator_url}
    subprocess.run(
        [sys.executable, "-m", "orchestrator.cli.main", "db", "upgrade"],
        env=migrate_env,
        check=True,
        stdout=(workdir / "migrate.log").open("ab"),
        stderr=subprocess.STDOUT,
        timeout=120,
    )
    with psycopg.connect(database_admin_url, autocommit=True) as conn:
        conn.execute(roles)  # again after an upgrade, as docs/deployment.md says
    return _url(admin_url, user="steppe_app", database=name, password=passwords["steppe_app"])


def start_prometheus(
    procs: Processes, binary: Path, workdir: Path, targets: dict[str, list[int]], deadline: Deadline
) -> str:
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
        "rule_files": [str(DEPLOY / "prometheus" / "alerts.yml")],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{p}" for p in ports]}]}
            for job, ports in targets.items()
        ],
    }
    path = workdir / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    procs.popen("prometheus", [
        str(binary), f"--config.file={path}", f"--storage.tsdb.path={workdir / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h", "--log.level=warn",
    ], log=workdir / "prometheus.log")  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_until(
        lambda: httpx.get(f"{url}/-/ready", timeout=2).status_code == 200,
        timeout=deadline.left(30),
        what="Prometheus did not become ready",
    )
    return url


# -- Prometheus queries --------------------------------------------------------------------------------


def _timestamp(text: str) -> float:
    """RFC 3339 with up to nanoseconds, as Prometheus writes it, to Unix seconds."""
    text = re.sub(r"(\.\d{6})\d+", r"\1", text).replace("Z", "+00:00")
    return datetime.fromisoformat(text).timestamp()


def _api(url: str, path: str, **params: str) -> dict[str, Any]:
    reply = (
        httpx.post(f"{url}/api/v1/{path}", data=params, timeout=10)
        if params
        else httpx.get(f"{url}/api/v1/{path}", timeout=10)
    )
    body: dict[str, Any] = reply.json()
    return body


def wait_for_scrapes(url: str, since: float, deadline: Deadline) -> None:
    """Until every target was scraped (up) twice after `since` and every rule evaluated after it."""

    late: list[str] = []

    def scraped() -> bool:
        active = _api(url, "targets")["data"]["activeTargets"]
        late[:] = [
            f"{t['labels']['job']} {t['scrapeUrl']} ({t['health']}: {t['lastError'] or 'not scraped yet'})"
            for t in active
            if t["health"] != "up" or _timestamp(t["lastScrape"]) <= since + 1.2
        ]
        return bool(active) and not late

    def evaluated() -> bool:
        groups = _api(url, "rules")["data"]["groups"]
        return all(_timestamp(g["lastEvaluation"]) > since + 1.2 for g in groups)

    try:
        wait_until(scraped, timeout=deadline.left(30), what="Prometheus did not scrape every target twice")
    except TimeoutError as e:
        raise TimeoutError(f"{e}: {'; '.join(late)}") from None
    wait_until(evaluated, timeout=deadline.left(10), what="Prometheus did not evaluate the rules")


def evaluate(url: str, queries: list[Query]) -> list[Offender]:
    offenders = []
    for q in queries:
        for expr in dict.fromkeys((q.expr, q.probe)):
            body = _api(url, "query", query=expr)
            if body.get("status") != "success":
                offenders.append(Offender(q.source, q.name, f"{body.get('errorType')}: {body.get('error')}", expr))
            elif expr == q.probe and not body["data"]["result"]:
                offenders.append(Offender(q.source, q.name, "returns no series", expr))
    for group in _api(url, "rules")["data"]["groups"]:
        for rule in group["rules"]:
            if rule.get("health") != "ok":
                offenders.append(
                    Offender(
                        "alerts.yml",
                        f"{group['name']}/{rule['name']}",
                        f"rule health {rule.get('health')}: {rule.get('lastError')}",
                    )
                )
    return offenders


def privilege_offenders(admin: redis.Redis, logs: list[Path]) -> list[Offender]:
    """Commands Redis refused to the ACL users, statements PostgreSQL refused to steppe_app."""
    found = []
    for entry in admin.acl_log():
        if entry.get("object") in ("client|setinfo", "client"):
            continue  # redis-py announces itself with CLIENT SETINFO (logged as `client` before Redis 7)
            # and ignores a refusal; users.acl cannot allow it on a Redis that predates it (< 7.2)
        found.append(
            Offender(
                "redis/users.acl",
                str(entry.get("username")),
                f"{entry.get('reason')} {entry.get('object')!r} refused {entry.get('count')}x",
            )
        )
    for log in logs:
        text = log.read_text(errors="replace") if log.exists() else ""
        for line in sorted({ln for ln in text.splitlines() if "permission denied" in ln.lower()})[:5]:
            found.append(Offender("postgres/roles.sql", log.name, line.strip()[:200]))
    return found


def print_table(offenders: list[Offender]) -> None:
    width = max(len(f"{o.source} · {o.name}") for o in offenders)
    print(f"\n{'query':<{width}}  problem", file=sys.stderr)
    print(f"{'-' * width}  -------", file=sys.stderr)
    for o in offenders:
        print(f"{o.source + ' · ' + o.name:<{width}}  {o.problem}", file=sys.stderr)
        if o.expr:
            print(f"{'':<{width}}    {o.expr}", file=sys.stderr)


# -- main ------------------------------------------------------------------------------------------------


def promtool_checks(prometheus: Path) -> list[Offender]:
    promtool = prometheus.with_name("promtool")
    if not promtool.exists():
        return [Offender("promtool", "-", f"promtool not found next to {prometheus}")]
    found = []
    for args in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"]):
        done = subprocess.run(
            [str(promtool), *args], cwd=DEPLOY / "prometheus", capture_output=True, text=True, timeout=60, check=False
        )
        if done.returncode != 0:
            found.append(Offender("promtool", " ".join(args), (done.stdout + done.stderr).strip()[-1500:]))
    return found


def run(args: argparse.Namespace, prometheus: Path, workdir: Path, procs: Processes) -> int:
    deadline = Deadline(BUDGET)
    queries = all_queries()
    offenders = promtool_checks(prometheus)
    redis_port, passwords = start_redis(procs, workdir, deadline)
    base_env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    admin_url = args.pg_admin_url
    role_passwords = json.loads(Path(args.pg_credentials).read_text()) if args.pg_credentials else {}
    if admin_url is None:
        server = PostgresServer.start(workdir / "postgres", settings={"fsync": "off"})
        procs.on_close("PostgreSQL", lambda: server.stop("fast", timeout=30))
        admin_url = server.url_for("postgres")
        role_passwords = server.passwords()
    app_url = prepare_database(procs, admin_url, workdir, base_env, dict(role_passwords))
    ports = {"coordinator": free_port(), "w1": free_port(), "w2": free_port()}
    prom = start_prometheus(procs, prometheus, workdir, {
        "steppe-coordinator": [ports["coordinator"]], "steppe-worker": [ports["w1"], ports["w2"]],
    }, deadline)  # fmt: skip
    admin = redis.Redis(host="127.0.0.1", port=redis_port, username="steppe-check", password=passwords["steppe-check"])
    procs.on_close("redis client", admin.close)
    workload = Workload(
        workdir=workdir,
        redis_port=redis_port,
        passwords=passwords,
        database_url=app_url,
        env=base_env,
        admin=admin,
        metrics_ports=ports,
        deadline=deadline.left,
    )
    procs.on_close("cluster", workload.stop)
    first_sample = time.time()
    notes = workload.run()
    for note in notes:
        print(f"workload: {note}")
    wait_for_scrapes(prom, time.time(), deadline)
    # Subqueries such as `[15m:15s]` need two 15 s-aligned points with data behind them.
    time.sleep(max(0.0, first_sample + HISTORY - time.time()))
    offenders += evaluate(prom, queries)
    offenders += privilege_offenders(admin, [workdir / "cluster.log", workdir / "migrate.log"])
    panels = sum(1 for q in queries if q.source.endswith(".json") and not q.name.startswith("variable"))
    variables = sum(1 for q in queries if q.name.startswith("variable"))
    alerts = sum(1 for q in queries if q.source == "alerts.yml")
    summary = f"{len(queries)} queries ({panels} panel targets, {variables} variables, {alerts} alert rules)"
    if offenders:
        print_table(offenders)
        print(f"\nFAILED: {len(offenders)} problem(s) in {summary}; logs in {workdir}", file=sys.stderr)
        return 1
    print(f"OK: {summary} parse and return series from a live cluster; every rule evaluates; no privilege refused")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prometheus", help="prometheus binary (default: $STEPPE_PROMETHEUS, .steppe-tools, PATH)")
    parser.add_argument("--pg-admin-url", help="superuser URL of a THROWAWAY PostgreSQL cluster (default: start one)")
    parser.add_argument(
        "--pg-credentials", help="JSON role → password of that cluster (a `steppe dev` *.credentials.json)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, configs)")
    args = parser.parse_args(argv)
    prometheus = find_prometheus(args.prometheus)
    if prometheus is None:
        print(INSTALL_HINT, file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    workdir = Path(tempfile.mkdtemp(prefix="steppe-dashboards-", dir="/tmp"))
    workdir.chmod(0o755)  # PostgreSQL runs as the `postgres` user when we are root
    procs = Processes()
    failed = True
    try:
        code = run(args, prometheus, workdir, procs)
        failed = code != 0
        return code
    except (TimeoutError, RuntimeError, subprocess.CalledProcessError, OSError, psycopg.Error, redis.RedisError) as e:
        print(f"FAILED: {type(e).__name__}: {e}; logs in {workdir}", file=sys.stderr)
        for log in ("cluster.log", "prometheus.log", "migrate.log"):
            path = workdir / log
            if path.exists():
                print(
                    f"--- last lines of {log}:\n" + "\n".join(path.read_text(errors="replace").splitlines()[-25:]),
                    file=sys.stderr,
                )
        return 1
    finally:
        procs.close()
        if args.keep or failed:
            for bulky in ("postgres", "tsdb", "home"):  # keep the logs and configs, not the data
                shutil.rmtree(workdir / bulky, ignore_errors=True)
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
