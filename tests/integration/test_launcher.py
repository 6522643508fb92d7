"""`steppe dev up | down | status` as a user runs it: real processes, a private STEPPE_HOME."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from orchestrator.dev import RedisServer, find_redis_server
from orchestrator.dev.process import pid_alive
from orchestrator.errors import InfrastructureError, LauncherError
from orchestrator.settings import Settings
from tests.conftest import private_dir, redis_binary_for_tests

pytestmark = pytest.mark.integration


def steppe(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEPPE_")}
    env["STEPPE_HOME"] = str(home)
    if binary := redis_binary_for_tests():
        env["STEPPE_REDIS__SERVER_PATH"] = binary
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli.main", "--log-level", "WARNING", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if check:
        assert done.returncode == 0, f"steppe {' '.join(args)} exited {done.returncode}:\n{done.stderr}"
    return done


def state(home: Path) -> dict[str, Any]:
    return json.loads((home / "servers.json").read_text())


def status(home: Path) -> dict[str, Any]:
    return json.loads(steppe(home, "dev", "status", "--json", check=False).stdout)


@pytest.fixture(scope="module")
def home() -> Iterator[Path]:
    path = private_dir("steppe-home-")
    try:
        yield path
    finally:
        steppe(path, "dev", "down", check=False)
        shutil.rmtree(path, ignore_errors=True)


def test_up_is_idempotent_and_recorded(home: Path) -> None:
    first = steppe(home, "dev", "up")
    recorded = state(home)
    pids = (recorded["redis"]["pid"], recorded["postgres"]["pid"])
    assert all(pid_alive(pid) for pid in pids)

    second = steppe(home, "dev", "up")
    assert "reused" in second.stdout, second.stdout
    assert (state(home)["redis"]["pid"], state(home)["postgres"]["pid"]) == pids
    assert "started" in first.stdout or "reused" in first.stdout

    report = status(home)
    assert report["redis"]["answering"]
    assert report["postgres"]["answering"]
    settings = Settings(home=home)
    assert settings.resolved_redis_url() == report["redis"]["url"] == recorded["redis"]["url"]
    assert settings.resolved_database_url() == report["postgres"]["url"]
    # Passwords in every URL; the app connects as the DML-only role, migrations as the owner.
    assert report["redis"]["url"].startswith("redis://default:")
    assert report["postgres"]["url"].startswith("postgresql://steppe_app:")
    assert report["postgres"]["url"].endswith("@127.0.0.1:" + str(report["postgres"]["port"]) + "/steppe")
    assert settings.resolved_migration_url() == recorded["postgres"]["migration_url"]
    assert recorded["postgres"]["migration_url"].startswith("postgresql://steppe_migrator:")
    for secret in ("servers.json", "redis.credentials.json", "postgres.credentials.json"):
        assert oct((home / secret).stat().st_mode & 0o777) == oct(0o600), secret
    shown = steppe(home, "dev", "status").stdout
    assert "default:***@" in shown
    assert "steppe_app:***@" in shown
    assert recorded["redis"]["url"].split("@")[0].split(":")[-1] not in shown  # the password itself


def test_restart_keeps_data(home: Path) -> None:
    steppe(home, "dev", "up")
    settings = Settings(home=home)
    with redis.Redis.from_url(settings.resolved_redis_url()) as r:
        r.set("steppe-test:kept", "yes")
    with psycopg.connect(settings.resolved_migration_url(), autocommit=True) as conn:  # DDL: the owner
        conn.execute("CREATE TABLE IF NOT EXISTS kept (v text)")
        conn.execute("INSERT INTO kept VALUES ('yes')")

    steppe(home, "dev", "down")
    report = status(home)
    assert not report["redis"]["answering"]
    assert not report["postgres"]["answering"]
    assert steppe(home, "dev", "status", check=False).returncode == 3
    with pytest.raises(InfrastructureError, match="steppe dev up"):
        Settings(home=home).resolved_redis_url()

    steppe(home, "dev", "up")
    settings = Settings(home=home)
    with redis.Redis.from_url(settings.resolved_redis_url()) as r:
        assert r.get("steppe-test:kept") == b"yes"
    with psycopg.connect(settings.resolved_migration_url()) as conn:
        assert conn.execute("SELECT v FROM kept").fetchall() == [("yes",)]


def test_down_stops_exactly_the_recorded_pids(home: Path) -> None:
    steppe(home, "dev", "up")
    recorded = state(home)
    ours = [recorded["redis"]["pid"], recorded["postgres"]["pid"]]
    bystander_dir = private_dir("steppe-bystander-")
    bystander = RedisServer.start(bystander_dir / "redis", binary=redis_binary_for_tests())
    try:
        steppe(home, "dev", "down")
        assert not any(pid_alive(pid) for pid in ours)
        assert bystander.is_running()
        assert bystander.ping()
        after = state(home)
        assert after["redis"]["url"] is None
        assert after["postgres"]["url"] is None
        assert "not running" in steppe(home, "dev", "down").stdout  # a second down is harmless
    finally:
        bystander.stop()
        shutil.rmtree(bystander_dir, ignore_errors=True)


def test_configured_redis_binary_must_exist(tmp_path: Path) -> None:
    with pytest.raises(LauncherError, match="STEPPE_REDIS__SERVER_PATH"):
        find_redis_server(tmp_path / "no-such-redis-server")
    found = find_redis_server(redis_binary_for_tests())
    assert found.version_info >= (6, 2)
