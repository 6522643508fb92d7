"""`steppe dev up|down|status`: the embedded Redis and PostgreSQL recorded in $STEPPE_HOME/servers.json.

The state file is the contract with `Settings.resolved_redis_url()` / `resolved_database_url()`:

    {"redis":    {"url": "redis://default:PASSWORD@127.0.0.1:PORT/0" | null, "pid", "port",
                  "data_dir", "log_file", "binary", "version", "appendonly"},
     "postgres": {"url": "postgresql://steppe_app:PASSWORD@127.0.0.1:PORT/steppe" | null,
                  "migration_url": "postgresql://steppe_migrator:PASSWORD@…/steppe" | null,
                  "pid", "port", "data_dir", "log_file", "bindir", "version"},
     "updated_at": ISO-8601}

The URLs carry the servers' generated passwords, so the file is written mode 0600 (as are
`redis.credentials.json` and `postgres.credentials.json` beside it). `url` is the DML-only
application role; `steppe db upgrade` uses `migration_url`, the owner of the schema.

`url` and `pid` are null while a server is down, so that commands say "run `steppe dev up`"
instead of trying a dead port. Data directories are `$STEPPE_HOME/redis` and
`$STEPPE_HOME/postgres` and survive `down`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import structlog

from orchestrator.dev.credentials import write_private
from orchestrator.dev.postgres_server import DATABASE, PostgresServer
from orchestrator.dev.process import pid_alive, port_is_free, wait_until
from orchestrator.dev.redis_server import RedisBinary, RedisServer, find_redis_server, ping
from orchestrator.errors import ConfigError, LauncherError
from orchestrator.settings import Settings

log = structlog.get_logger(__name__)

ServerName = Literal["redis", "postgres"]
Action = Literal["started", "reused", "stopped", "not_running", "running", "not_answering"]


@dataclass(frozen=True)
class ServerReport:
    """What `up`, `down` or `status` found or did for one server (also the `--json` shape)."""

    server: ServerName
    action: Action
    url: str | None
    pid: int | None
    port: int | None
    answering: bool
    data_dir: str
    version: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class DevServers:
    """Starts, stops and inspects the embedded servers of one STEPPE_HOME."""

    def __init__(self, *, settings: Settings) -> None:
        self.settings = settings
        self.home = settings.home.resolve()
        self.state_path = self.home / settings.dev_state_path.name
        self.redis_dir = self.home / "redis"
        self.postgres_dir = self.home / "postgres"

    # -- state file ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        """Serialise concurrent `dev` commands; yields the state and writes it back."""
        self.home.mkdir(parents=True, exist_ok=True)
        with (self.home / ".servers.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = self.read_state()
            try:
                yield state
            finally:  # a server started before a later failure must still be recorded
                state["updated_at"] = datetime.now(UTC).isoformat()
                write_private(self.state_path, json.dumps(state, indent=2) + "\n")

    def read_state(self) -> dict[str, Any]:
        if not self.state_path.exists():
            return {}
        try:
            data = json.loads(self.state_path.read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"{self.state_path} is unreadable ({e}); delete it and run `steppe dev up`") from e
        return data if isinstance(data, dict) else {}

    # -- commands -----------------------------------------------------------------------------

    def up(self) -> list[ServerReport]:
        """Start whatever is not running (reusing data directories); reuse what already answers."""
        with self._locked() as state:
            redis_report = self._redis_up(state)
            postgres_report = self._postgres_up(state)
        return [redis_report, postgres_report]

    def down(self) -> list[ServerReport]:
        """Stop the recorded servers (Redis: SIGTERM, PostgreSQL: SIGINT fast shutdown); keep data."""
        with self._locked() as state:
            try:
                redis_report = self._redis_down(state)
            finally:  # stop PostgreSQL even if Redis would not stop
                postgres_report = self._postgres_down(state)
        return [redis_report, postgres_report]

    def status(self) -> list[ServerReport]:
        """Whether each recorded server is running and answering; changes nothing."""
        state = self.read_state()
        reports = []
        redis = self._redis_running(state)
        if redis is None:
            reports.append(self._stopped_report("redis", state))
        else:
            answering = redis.ping()
            action: Action = "running" if answering else "not_answering"
            reports.append(self._report("redis", action, redis, answering))
        postgres = self._postgres_running(state)
        if postgres is None:
            reports.append(self._stopped_report("postgres", state))
        else:
            answering = postgres.answers()
            action = "running" if answering else "not_answering"
            reports.append(self._report("postgres", action, postgres, answering))
        return reports

    # -- Redis --------------------------------------------------------------------------------

    def _redis_running(self, state: dict[str, Any]) -> RedisServer | None:
        record = state.get("redis") or {}
        binary = None
        if record.get("binary"):
            binary = RedisBinary(path=Path(record["binary"]), version=str(record.get("version")))
        return RedisServer.running_in(self.redis_dir, binary=binary)

    def _redis_up(self, state: dict[str, Any]) -> ServerReport:
        running = self._redis_running(state)
        if running is not None and running.secured and ping(running.port):
            # Answers without a password (started by a Steppe from before passwords; its default
            # user takes any password): restart it with its users, data kept.
            log.warning("redis_restarted_to_secure", pid=running.pid, port=running.port, reason="no_password")
            running.stop()
            running = None
        if running is not None:
            # A server replaying a large AOF answers LOADING for a while: give it a moment.
            if not wait_until(running.ping, timeout=10, interval=0.1):
                raise LauncherError(
                    f"redis-server (pid {running.pid}) is running on port {running.port} but does not "
                    f"answer PING; see {running.log_file}, then `steppe dev down` and `steppe dev up`"
                )
            state["redis"] = running.record()
            log.info("redis_reused", port=running.port, pid=running.pid)
            return self._report("redis", "reused", running, True)
        record = state.get("redis") or {}
        binary = self._redis_binary(record)
        server = RedisServer.start(self.redis_dir, binary=binary, port=self._previous_port(record))
        state["redis"] = server.record()
        return self._report("redis", "started", server, True)

    def _redis_binary(self, record: dict[str, Any]) -> RedisBinary:
        configured = self.settings.redis.server_path
        if configured:
            return RedisBinary.probe(configured)
        # Keep the binary that wrote the AOF (Redis 7's AOF layout is not readable by 6.2).
        previous = record.get("binary")
        if previous and Path(previous).is_file():
            return RedisBinary.probe(previous)
        return find_redis_server()

    def _redis_down(self, state: dict[str, Any]) -> ServerReport:
        record = state.get("redis") or {}
        running = self._redis_running(state)
        if running is None:
            if record:
                state["redis"] = {**record, "url": None, "pid": None}
            return self._stopped_report("redis", state)
        if record.get("pid") not in (None, running.pid):
            log.warning("redis_pid_mismatch", recorded=record.get("pid"), found=running.pid)
        running.stop()
        state["redis"] = {**running.record(), "url": None, "pid": None}
        return self._report("redis", "stopped", running, False)

    # -- PostgreSQL ---------------------------------------------------------------------------

    def _postgres_running(self, state: dict[str, Any]) -> PostgresServer | None:
        record = state.get("postgres") or {}
        bindir = Path(record["bindir"]) if record.get("bindir") else None
        return PostgresServer.running_in(self.postgres_dir, bindir=bindir)

    def _postgres_up(self, state: dict[str, Any]) -> ServerReport:
        running = self._postgres_running(state)
        if running is not None:
            if not wait_until(running.answers, timeout=30, interval=0.2):
                raise LauncherError(
                    f"PostgreSQL (pid {running.pid}) is running on port {running.port} but refuses "
                    f"connections; see {running.log_file}, then `steppe dev down` and `steppe dev up`"
                )
            running.secure()  # also a cluster from before passwords: every role gets its password now
            running.create_database(DATABASE)
            state["postgres"] = running.record()
            log.info("postgres_reused", port=running.port, pid=running.pid)
            return self._report("postgres", "reused", running, True)
        record = state.get("postgres") or {}
        bindir = Path(record["bindir"]) if record.get("bindir") and Path(record["bindir"]).is_dir() else None
        server = PostgresServer.start(self.postgres_dir, bindir=bindir, port=self._previous_port(record))
        state["postgres"] = server.record()
        return self._report("postgres", "started", server, True)

    def _postgres_down(self, state: dict[str, Any]) -> ServerReport:
        record = state.get("postgres") or {}
        running = self._postgres_running(state)
        if running is None:
            if record:
                state["postgres"] = {**record, "url": None, "pid": None}
            return self._stopped_report("postgres", state)
        if record.get("pid") not in (None, running.pid):
            log.warning("postgres_pid_mismatch", recorded=record.get("pid"), found=running.pid)
        running.stop("fast")
        state["postgres"] = {**running.record(), "url": None, "pid": None}
        return self._report("postgres", "stopped", running, False)

    # -- helpers ------------------------------------------------------------------------------

    @staticmethod
    def _previous_port(record: dict[str, Any]) -> int | None:
        """The port used last time if it is still free, so that URLs usually survive a restart."""
        port = record.get("port")
        return int(port) if isinstance(port, int) and port_is_free(port) else None

    def _report(
        self, name: ServerName, action: Action, server: RedisServer | PostgresServer, answering: bool
    ) -> ServerReport:
        version = server.binary.version if isinstance(server, RedisServer) else server.version
        stopped = action == "stopped"
        return ServerReport(
            server=name,
            action=action,
            url=None if stopped else server.url,
            pid=None if stopped else server.pid,
            port=server.port,
            answering=answering,
            data_dir=str(server.data_dir),
            version=version,
        )

    def _stopped_report(self, name: ServerName, state: dict[str, Any]) -> ServerReport:
        record = state.get(name) or {}
        data_dir = self.redis_dir if name == "redis" else self.postgres_dir
        stale_pid = record.get("pid")
        if stale_pid and not pid_alive(stale_pid):
            log.info("stale_pid_ignored", server=name, pid=stale_pid)
        return ServerReport(
            server=name,
            action="not_running",
            url=None,
            pid=None,
            port=record.get("port"),
            answering=False,
            data_dir=str(data_dir),
            version=record.get("version"),
        )
