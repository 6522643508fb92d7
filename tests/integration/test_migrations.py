"""Alembic migrations: they build exactly tables.py's schema and survive down/up on a populated database."""

from __future__ import annotations

import datetime as dt
import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.dialects.postgresql import JSONB

from orchestrator.dev import PostgresServer
from orchestrator.store import db
from orchestrator.store.tables import metadata

pytestmark = pytest.mark.integration


@pytest.fixture
def empty_database(postgres_server: PostgresServer) -> Iterator[str]:
    name = f"steppe_mig_{secrets.token_hex(4)}"
    url = postgres_server.create_database(name)
    yield url
    postgres_server.drop_database(name)


def sample_value(column: sa.Column[Any]) -> Any:
    """A valid value for `column`; a foreign key gets the value its referred column would get."""
    if column.foreign_keys:
        return sample_value(next(iter(column.foreign_keys)).column)
    kind = column.type
    if isinstance(kind, JSONB):
        return {"sample": column.name}
    if isinstance(kind, sa.Boolean):
        return True
    if isinstance(kind, sa.Integer):
        return 1
    if isinstance(kind, sa.DateTime):
        return dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    return f"{column.table.name}.{column.name}"


def populate(engine: sa.Engine) -> None:
    """One row in every table, parents first, filling every column without a default."""
    with engine.begin() as conn:
        for table in metadata.sorted_tables:
            row = {
                c.name: sample_value(c)
                for c in table.columns
                if not (c.autoincrement is True or (c.nullable and c.foreign_keys))
            }
            conn.execute(table.insert().values(**row))


def row_counts(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {
            t.name: conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one() for t in metadata.sorted_tables
        }


def schema_snapshot(engine: sa.Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Columns (with defaults), indexes and constraints of the public schema, as PostgreSQL sees them."""
    queries = {
        "columns": """
            SELECT table_name, column_name, data_type, is_nullable, column_default, ordinal_position
            FROM information_schema.columns WHERE table_schema = 'public' AND table_name <> 'alembic_version'
            ORDER BY table_name, column_name""",
        "indexes": """
            SELECT tablename, indexname, indexdef FROM pg_indexes
            WHERE schemaname = 'public' AND tablename <> 'alembic_version' ORDER BY indexname""",
        "constraints": """
            SELECT rel.relname, con.conname, con.contype, pg_get_constraintdef(con.oid)
            FROM pg_constraint con JOIN pg_class rel ON rel.oid = con.conrelid
            JOIN pg_namespace ns ON ns.oid = rel.relnamespace
            WHERE ns.nspname = 'public' AND rel.relname <> 'alembic_version' ORDER BY con.conname""",
    }
    with engine.connect() as conn:
        return {name: [tuple(r) for r in conn.execute(sa.text(q))] for name, q in queries.items()}


def test_upgrade_downgrade_upgrade_on_populated_database(empty_database: str) -> None:
    engine = db.create_engine(empty_database, poolclass=sa.NullPool)
    try:
        db.upgrade(empty_database)
        assert db.current_revision(empty_database) == db.head_revision()
        populate(engine)
        assert set(row_counts(engine).values()) == {1}

        db.downgrade(empty_database, "base")
        assert db.current_revision(empty_database) is None
        assert set(sa.inspect(engine).get_table_names()) <= {"alembic_version"}

        db.upgrade(empty_database)
        assert set(row_counts(engine).values()) == {0}
        populate(engine)
        assert set(row_counts(engine).values()) == {1}
    finally:
        engine.dispose()


def test_migrated_database_matches_metadata(empty_database: str) -> None:
    db.upgrade(empty_database)
    engine = db.create_engine(empty_database, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
            assert compare_metadata(context, metadata) == []
    finally:
        engine.dispose()


def test_migrations_build_the_same_schema_as_create_all(postgres_server: PostgresServer, empty_database: str) -> None:
    db.upgrade(empty_database)
    name = f"steppe_ddl_{secrets.token_hex(4)}"
    reference_url = postgres_server.create_database(name)
    migrated = db.create_engine(empty_database, poolclass=sa.NullPool)
    reference = db.create_engine(reference_url, poolclass=sa.NullPool)
    try:
        metadata.create_all(reference)
        assert schema_snapshot(migrated) == schema_snapshot(reference)
    finally:
        migrated.dispose()
        reference.dispose()
        postgres_server.drop_database(name)


def steppe_db(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEPPE_")}
    env["STEPPE_DATABASE_URL"] = url
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli.main", "--log-level", "WARNING", "db", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_db_commands(empty_database: str) -> None:
    assert "revision none" in steppe_db(empty_database, "current").stdout
    upgraded = steppe_db(empty_database, "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"revision {db.head_revision()}" in steppe_db(empty_database, "current").stdout
    downgraded = steppe_db(empty_database, "downgrade", "base")
    assert downgraded.returncode == 0, downgraded.stderr
    assert db.current_revision(empty_database) is None


def test_unreachable_database_exits_3_with_the_fix() -> None:
    done = steppe_db("postgresql://steppe:hunter2@127.0.0.1:1/steppe", "upgrade")
    assert done.returncode == 3
    message = " ".join(done.stderr.split())
    assert "127.0.0.1:1" in message
    assert "steppe dev up" in message
    assert "STEPPE_DATABASE_URL" in message
    assert "hunter2" not in done.stderr


@pytest.mark.integration
def test_fence_function_rolls_back_a_batch_that_lost_its_run(database_url: str) -> None:
    """A write whose run changed hands must fail as a conflict and leave nothing behind."""
    from orchestrator.errors import ConflictError
    from orchestrator.state import Event, EventType, RunStatus
    from orchestrator.store.queries import RunQueries
    from orchestrator.store.runs import NewRun, RunStore, RunWrite

    store = RunStore(database_url)
    store.open()
    try:
        run_id, _ = store.create_run(
            NewRun(
                run_id=f"r-fence-{uuid.uuid4().hex[:6]}", workflow="w", partition=0, definition={}, inputs={}, plan={}
            )
        )
        with store.connection() as conn:
            conn.execute(
                "INSERT INTO coordinator_leases (partition, owner) VALUES (0, 'me')"
                " ON CONFLICT (partition) DO UPDATE SET owner = 'me'"
            )
        write = RunWrite(
            run_id=run_id,
            expected_version=7,
            status=RunStatus.RUNNING,
            state={},
            last_seq=2,
            events=[Event(seq=2, type=EventType.RUN_STARTED)],
        )
        with pytest.raises(ConflictError):
            store.commit_batch([write], owner="me")
        assert [e["seq"] for e in RunQueries(store).events(run_id)] == [1]
        write.expected_version = 0
        store.commit_batch([write], owner="me")
        assert [e["seq"] for e in RunQueries(store).events(run_id)] == [1, 2]
        with pytest.raises(ConflictError):
            store.commit_batch(
                [
                    RunWrite(
                        run_id=run_id,
                        expected_version=1,
                        status=RunStatus.RUNNING,
                        state={},
                        last_seq=3,
                        events=[Event(seq=3, type=EventType.RUN_CANCEL_REQUESTED)],
                    )
                ],
                owner="someone-else",
            )
    finally:
        store.close()
