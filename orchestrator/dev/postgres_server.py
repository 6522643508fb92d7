"""A private PostgreSQL cluster on loopback: initdb once, start with pg_ctl, stop by signal.

Every connection authenticates with a password (SCRAM, `pg_hba.conf` rewritten on every
start); the passwords are generated into `<data_dir>.credentials.json` (0600). Three roles:
the superuser `steppe` (`url_for`: creating databases, tests), `steppe_migrator`, which owns
each database and its schema (`owner_url`: migrations), and `steppe_app`, which may only
read and write rows (`app_url`, `url`: what Steppe's processes use). The roles and grants are
those of `deploy/postgres/roles.sql`, applied to every database `create_database` makes.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import psycopg
import structlog
from psycopg import sql

from orchestrator.dev.credentials import credentials_path, load_or_create
from orchestrator.dev.process import (
    LOOPBACK,
    as_server_user,
    ensure_traversable,
    hand_over,
    launch_on_free_port,
    log_tail,
    pid_alive,
    run_command,
    signal_and_wait,
    wait_until,
)
from orchestrator.errors import LauncherError

log = structlog.get_logger(__name__)

SUPERUSER = "steppe"
OWNER_ROLE = "steppe_migrator"  # owns the schema: `steppe db upgrade`
APP_ROLE = "steppe_app"  # rows only: coordinators, workers, the CLI and the API
DATABASE = "steppe"
LOG_FILE = "postgres.log"
CONF_FILE = "steppe.conf"  # rewritten on every start; included from postgresql.conf
HBA_FILE = "pg_hba.conf"  # rewritten on every start: passwords for every connection
ROLES_SQL = Path(__file__).resolve().parents[2] / "deploy" / "postgres" / "roles.sql"
_HBA = """# Written by `steppe dev` on every start: every connection authenticates with a password.
local all all scram-sha-256
host  all all 127.0.0.1/32 scram-sha-256
"""
StopMode = Literal["smart", "fast", "immediate"]
_STOP_SIGNALS: dict[str, signal.Signals] = {
    "smart": signal.SIGTERM,
    "fast": signal.SIGINT,
    "immediate": signal.SIGQUIT,
}
_SOCKET_PATH_MAX = 100  # sun_path is 108 bytes, including "/.s.PGSQL.<port>"
_INSTALL_HINT = "install PostgreSQL (`make install`, or `apt-get install postgresql`)"


def find_postgres_bindir() -> Path:
    """The directory holding initdb, pg_ctl and postgres: from PATH, else Debian's layout."""
    on_path = shutil.which("pg_ctl")
    candidates = [Path(on_path).resolve().parent] if on_path else []

    def version_key(path: Path) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", path.parent.name)) or (0,)

    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version_key, reverse=True)
    for bindir in candidates:
        if all((bindir / name).is_file() for name in ("initdb", "pg_ctl", "postgres")):
            return bindir
    raise LauncherError(f"PostgreSQL server binaries (initdb, pg_ctl, postgres) not found; {_INSTALL_HINT}")


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class PostgresServer:
    """A PostgreSQL postmaster on loopback whose cluster lives in `data_dir` (PGDATA)."""

    def __init__(self, *, bindir: Path, data_dir: Path, port: int, pid: int, settings: Mapping[str, str] | None = None):
        self.bindir = bindir
        self.data_dir = data_dir
        self.port = port
        self.pid = pid
        self.settings = dict(settings or {})
        self._passwords: dict[str, str] | None = None
        self._new_passwords = False

    def __repr__(self) -> str:
        return f"PostgresServer(port={self.port}, pid={self.pid}, data_dir={str(self.data_dir)!r})"

    def passwords(self) -> dict[str, str]:
        """Role → password (generated on first use, then read from the credentials file)."""
        if self._passwords is None:
            path = credentials_path(self.data_dir)
            self._passwords, self._new_passwords = load_or_create(path, (SUPERUSER, OWNER_ROLE, APP_ROLE))
        return self._passwords

    def url_as(self, role: str, database: str) -> str:
        return f"postgresql://{role}:{self.passwords()[role]}@{LOOPBACK}:{self.port}/{database}"

    @property
    def url(self) -> str:
        """libpq URL of the `steppe` database for the application role."""
        return self.app_url(DATABASE)

    @property
    def migration_url(self) -> str:
        """libpq URL of the `steppe` database for the role that owns its schema."""
        return self.owner_url(DATABASE)

    def url_for(self, database: str) -> str:
        """The superuser's URL: creating and dropping databases, administration, tests."""
        return self.url_as(SUPERUSER, database)

    def owner_url(self, database: str) -> str:
        return self.url_as(OWNER_ROLE, database)

    def app_url(self, database: str) -> str:
        return self.url_as(APP_ROLE, database)

    @property
    def log_file(self) -> Path:
        return self.data_dir / LOG_FILE

    @property
    def version(self) -> str:
        try:
            return (self.data_dir / "PG_VERSION").read_text().strip()
        except OSError:
            return "unknown"

    @classmethod
    def start(
        cls,
        data_dir: str | Path,
        *,
        port: int | None = None,
        bindir: str | Path | None = None,
        settings: Mapping[str, str] | None = None,
        timeout: float = 60.0,
    ) -> PostgresServer:
        """Initialise `data_dir` if it holds no cluster yet, start it and create database `steppe`.

        `settings` are extra postgresql.conf parameters for this start (tests pass
        `{"fsync": "off"}`); the cluster listens on 127.0.0.1 only, with its Unix socket
        inside the data directory.
        """
        data = Path(data_dir).resolve()
        server = cls(
            bindir=Path(bindir) if bindir else find_postgres_bindir(),
            data_dir=data,
            port=port or 0,
            pid=0,
            settings=settings or {},
        )
        running = cls.running_in(data, bindir=server.bindir)
        if running is not None:
            raise LauncherError(
                f"a PostgreSQL server (pid {running.pid}) already uses {data}; "
                f"run `steppe dev down` or `kill -INT {running.pid}` first"
            )
        if not (data / "PG_VERSION").exists():
            server._initdb()

        def launch(chosen: int) -> None:
            server.port = chosen
            server._launch(timeout=timeout)

        launch_on_free_port(launch, port=port, log_file=server.log_file, busy_marker="could not bind", what="postgres")
        server.create_database(DATABASE)
        return server

    @classmethod
    def running_in(cls, data_dir: str | Path, *, bindir: Path | None = None) -> PostgresServer | None:
        """The live postmaster of the cluster in `data_dir`, read from its postmaster.pid."""
        data = Path(data_dir).resolve()
        try:
            lines = (data / "postmaster.pid").read_text().splitlines()
            pid, port = int(lines[0]), int(lines[3])
        except (OSError, ValueError, IndexError):
            return None
        if not pid_alive(pid):
            return None
        return cls(bindir=bindir or find_postgres_bindir(), data_dir=data, port=port, pid=pid)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> PostgresServer:
        """Rebuild a handle from `record()` output (as stored in servers.json)."""
        return cls(
            bindir=Path(record["bindir"]),
            data_dir=Path(record["data_dir"]),
            port=int(record["port"]),
            pid=int(record.get("pid") or 0),
        )

    def record(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "migration_url": self.migration_url,
            "pid": self.pid,
            "port": self.port,
            "data_dir": str(self.data_dir),
            "log_file": str(self.log_file),
            "bindir": str(self.bindir),
            "version": self.version,
        }

    def _initdb(self) -> None:
        if self.data_dir.exists() and any(self.data_dir.iterdir()):
            raise LauncherError(
                f"{self.data_dir} is not empty but holds no PostgreSQL cluster; "
                "move it away or point STEPPE_HOME at another directory"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.data_dir.chmod(0o700)
        ensure_traversable(self.data_dir)
        hand_over(self.data_dir)
        # The superuser's password reaches initdb in a file only the server user can read.
        pwdir = Path(tempfile.mkdtemp(prefix="steppe-initdb-"))
        try:
            (pwdir / "pw").write_text(self.passwords()[SUPERUSER] + "\n")
            hand_over(pwdir)
            argv = [
                str(self.bindir / "initdb"),
                "-D", str(self.data_dir),
                "-U", SUPERUSER,
                "--pwfile", str(pwdir / "pw"),
                "--auth=scram-sha-256",
                "-E", "UTF8",
                "--no-locale",
                "--no-sync",
                "--no-instructions",
            ]  # fmt: skip
            run_command(as_server_user(argv), what="initdb")
        finally:
            shutil.rmtree(pwdir, ignore_errors=True)
        self._new_passwords = False  # the new cluster has them
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write(f"\n# Added by `steppe dev`:\ninclude_if_exists = '{CONF_FILE}'\n")
        log.info("postgres_initialised", data_dir=str(self.data_dir), bindir=str(self.bindir))

    def _write_conf(self) -> None:
        socket_dir = str(self.data_dir)
        if len(socket_dir) > _SOCKET_PATH_MAX - len("/.s.PGSQL.65535"):
            socket_dir = ""  # path too long for a Unix socket: TCP only
        params = {
            "listen_addresses": LOOPBACK,
            "port": str(self.port),
            "unix_socket_directories": socket_dir,
            "max_connections": "200",
            "password_encryption": "scram-sha-256",
            **self.settings,
        }
        path = self.data_dir / CONF_FILE
        lines = [f"{key} = {_quote(value)}" for key, value in params.items()]
        path.write_text("# Written by `steppe dev` on every start.\n" + "\n".join(lines) + "\n")
        hand_over(path)

    def _write_hba(self) -> None:
        path = self.data_dir / HBA_FILE
        path.write_text(_HBA)
        hand_over(path)

    def _launch(self, *, timeout: float) -> None:
        ensure_traversable(self.data_dir)
        self._write_conf()
        self.passwords()
        if not self._new_passwords:
            self._write_hba()
        # else: a cluster from before passwords (trust): started once as it was, then `_secure`.
        argv = [
            str(self.bindir / "pg_ctl"),
            "-D", str(self.data_dir),
            "-l", str(self.log_file),
            "-w", "-t", str(int(timeout)),
            "start",
        ]  # fmt: skip
        run_command(
            as_server_user(argv),
            what="starting PostgreSQL",
            timeout=timeout + 10,
            hint=f"last lines of {self.log_file}:\n{log_tail(self.log_file)}",
        )
        running = self.running_in(self.data_dir, bindir=self.bindir)
        if running is None:
            raise LauncherError(f"PostgreSQL exited right after starting; see {self.log_file}")
        self.pid = running.pid
        if not wait_until(self.answers, timeout=timeout, interval=0.1):
            raise LauncherError(f"PostgreSQL (pid {self.pid}) does not accept connections; see {self.log_file}")
        self.secure()
        log.info("postgres_started", port=self.port, pid=self.pid, version=self.version, data_dir=str(self.data_dir))

    def secure(self) -> None:
        """Give every role its password from the credentials file, create the owner and app roles,
        and require passwords on every connection (pg_hba.conf, reloaded). Idempotent."""
        passwords = self.passwords()
        with psycopg.connect(self.url_for("postgres"), autocommit=True) as conn:
            for role in (OWNER_ROLE, APP_ROLE):
                if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
                    conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
            for role in (SUPERUSER, OWNER_ROLE, APP_ROLE):
                limits = "" if role == SUPERUSER else " NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"
                statement = sql.SQL("ALTER ROLE {} LOGIN" + limits + " PASSWORD {}")
                conn.execute(statement.format(sql.Identifier(role), sql.Literal(passwords[role])))
            # `steppe bench` checkpoints between measurements as the owner (PostgreSQL 15+).
            if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'pg_checkpoint'").fetchone():
                conn.execute(sql.SQL("GRANT pg_checkpoint TO {}").format(sql.Identifier(OWNER_ROLE)))
            self._write_hba()
            conn.execute("SELECT pg_reload_conf()")
        self._new_passwords = False

    def answers(self, *, timeout: float = 2.0) -> bool:
        """Whether `SELECT 1` succeeds on the `postgres` maintenance database."""
        try:
            with psycopg.connect(self.url_for("postgres"), connect_timeout=max(1, int(timeout))) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error:
            return False
        return True

    def create_database(self, name: str) -> str:
        """Create database `name` unless it exists, owned by the owner role with the app role's
        grants (deploy/postgres/roles.sql, applied again each time); returns the superuser's URL."""
        with psycopg.connect(self.url_for("postgres"), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                log.info("database_created", database=name, port=self.port)
        try:
            roles_sql = ROLES_SQL.read_text()
        except OSError as e:
            raise LauncherError(
                f"{ROLES_SQL} is missing ({e}); run Steppe from its source tree (`pip install -e .`)"
            ) from e
        with psycopg.connect(self.url_for(name), autocommit=True) as conn:
            conn.execute(roles_sql.encode())
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.url_for("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def is_running(self) -> bool:
        """Whether the recorded pid is still the postmaster of this data directory."""
        running = self.running_in(self.data_dir, bindir=self.bindir)
        return running is not None and running.pid == self.pid

    def stop(self, mode: StopMode = "fast", *, timeout: float = 60.0) -> None:
        """Signal the postmaster (smart=SIGTERM, fast=SIGINT, immediate=SIGQUIT) and wait."""
        if self.is_running():
            os.kill(self.pid, signal.SIGCONT)  # in case a fault test paused it
            signal_and_wait(self.pid, _STOP_SIGNALS[mode], timeout=timeout, what="PostgreSQL")
            log.info("postgres_stopped", pid=self.pid, port=self.port, mode=mode)

    def kill(self) -> None:
        """SIGKILL the postmaster; its backends notice and exit, and the next start recovers."""
        if self.is_running():
            signal_and_wait(self.pid, signal.SIGKILL, timeout=10, what="PostgreSQL")
            log.info("postgres_killed", pid=self.pid, port=self.port)

    def restart(self, mode: StopMode = "fast", *, timeout: float = 60.0) -> None:
        """Stop with `mode`, then start again on the same port (data is kept; crash recovery runs)."""
        self.stop(mode, timeout=timeout)
        self.relaunch(timeout=timeout)

    def relaunch(self, *, timeout: float = 60.0) -> None:
        """Start a stopped or killed server again on the same port."""
        # After a SIGKILL, orphaned backends hold the shared memory until they notice: retry briefly.
        for attempt in range(1, 6):
            try:
                self._launch(timeout=timeout)
            except LauncherError:
                if attempt == 5:
                    raise
                time.sleep(0.5)
            else:
                return
