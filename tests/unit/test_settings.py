"""Where commands find Redis and PostgreSQL: environment first, then `steppe dev up`'s servers.json."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from orchestrator.errors import ConfigError, InfrastructureError
from orchestrator.settings import Settings, normalise_database_url, sqlalchemy_url

REDIS = "redis://127.0.0.1:6390/0"
PG = "postgresql://steppe@127.0.0.1:5490/steppe"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("STEPPE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("STEPPE_HOME", str(tmp_path))


def write_state(home: Path, *, redis_url: str | None, database_url: str | None) -> None:
    state = {
        "redis": {"url": redis_url, "pid": 1 if redis_url else None, "port": 6390},
        "postgres": {"url": database_url, "pid": 2 if database_url else None, "port": 5490},
    }
    (home / "servers.json").write_text(json.dumps(state))


def test_urls_come_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEPPE_REDIS_URL", "redis://cache:6379/2")
    monkeypatch.setenv("STEPPE_DATABASE_URL", "postgresql+psycopg://app:pw@db:5432/steppe")
    settings = Settings()
    assert settings.resolved_redis_url() == "redis://cache:6379/2"
    assert settings.resolved_database_url() == "postgresql://app:pw@db:5432/steppe"


def test_urls_come_from_dev_servers_file(tmp_path: Path) -> None:
    write_state(tmp_path, redis_url=REDIS, database_url=PG)
    settings = Settings()
    assert settings.dev_state_path == tmp_path / "servers.json"
    assert settings.resolved_redis_url() == REDIS
    assert settings.resolved_database_url() == PG


def test_environment_wins_over_dev_servers_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_state(tmp_path, redis_url=REDIS, database_url=PG)
    monkeypatch.setenv("STEPPE_REDIS_URL", "redis://elsewhere:6379/0")
    settings = Settings()
    assert settings.resolved_redis_url() == "redis://elsewhere:6379/0"
    assert settings.resolved_database_url() == PG


@pytest.mark.parametrize("stopped", [False, True], ids=["never-started", "after-dev-down"])
def test_missing_urls_say_how_to_fix(tmp_path: Path, stopped: bool) -> None:
    if stopped:
        write_state(tmp_path, redis_url=None, database_url=None)
    settings = Settings()
    with pytest.raises(InfrastructureError, match=r"STEPPE_REDIS_URL.*steppe dev up") as redis_error:
        settings.resolved_redis_url()
    with pytest.raises(InfrastructureError, match=r"STEPPE_DATABASE_URL.*steppe dev up") as pg_error:
        settings.resolved_database_url()
    assert str(tmp_path) in str(redis_error.value)
    assert redis_error.value.exit_code == pg_error.value.exit_code == 3


def test_corrupt_dev_servers_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "servers.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"servers\.json is unreadable"):
        Settings().resolved_redis_url()


def test_nested_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEPPE_REDIS__SERVER_PATH", "/opt/redis/bin/redis-server")
    monkeypatch.setenv("STEPPE_WORKER__CONCURRENCY", "3")
    settings = Settings()
    assert settings.redis.server_path == "/opt/redis/bin/redis-server"
    assert settings.worker.concurrency == 3


def test_database_url_forms() -> None:
    assert normalise_database_url("postgres://u@h/d") == "postgresql://u@h/d"
    assert normalise_database_url("postgresql+psycopg2://u@h/d") == "postgresql://u@h/d"
    assert sqlalchemy_url("postgresql://u@h:5/d?sslmode=require") == "postgresql+psycopg://u@h:5/d?sslmode=require"
