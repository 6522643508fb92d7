"""Fixtures of the in-process tier (tests/integration/inprocess.py, tests/integration/test_inprocess.py)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from orchestrator.dev import PostgresServer
from orchestrator.store.db import upgrade
from tests.integration.inprocess import Tier


@pytest.fixture(scope="session")
def inprocess_template(postgres_server: PostgresServer) -> str:
    name = f"steppe_inproc_tpl_{uuid.uuid4().hex[:8]}"
    postgres_server.create_database(name)
    upgrade(postgres_server.owner_url(name))  # migrated by the schema owner
    return name


@pytest.fixture
def inprocess_db_url(postgres_server: PostgresServer, inprocess_template: str) -> Iterator[str]:
    """A private database per test (a coordinator loads every active run of its partitions)."""
    name = f"steppe_inproc_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_server.url_for("postgres"), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{inprocess_template}" OWNER steppe_migrator')
    yield postgres_server.app_url(name)  # the DML-only role, as Steppe's processes connect
    with psycopg.connect(postgres_server.url_for("postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def tier(redis_url: str, inprocess_db_url: str, namespace: str, tmp_path: Path) -> Iterator[Tier]:
    handle = Tier(redis_url=redis_url, db_url=inprocess_db_url, namespace=namespace, home=tmp_path)
    yield handle
    handle.close()
