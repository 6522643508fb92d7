"""The event log is append-only: the app role may add and read events, never change or delete them."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import errors

from orchestrator.dev import PostgresServer
from orchestrator.store.db import upgrade

pytestmark = pytest.mark.integration


@pytest.fixture
def migrated(postgres_server: PostgresServer) -> Iterator[str]:
    """A database migrated by its owner; yields its name."""
    name = f"steppe_log_{uuid.uuid4().hex[:8]}"
    postgres_server.create_database(name)
    upgrade(postgres_server.owner_url(name))
    yield name
    postgres_server.drop_database(name)


def add_run_with_events(url: str, run_id: str) -> None:
    with psycopg.connect(url) as conn:
        conn.execute(
            "INSERT INTO workflow_runs (run_id, workflow, status, partition, definition) VALUES (%s, 'w', 'running', 0, '{}')",
            (run_id,),
        )
        conn.execute("INSERT INTO workflow_events (run_id, seq, type) VALUES (%s, 1, 'run_submitted')", (run_id,))
        with conn.cursor().copy("COPY workflow_events (run_id, seq, type) FROM STDIN") as copy:
            copy.write_row((run_id, 2, "step_dispatched"))


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE workflow_events SET type = 'forged' WHERE run_id = %s",
        "DELETE FROM workflow_events WHERE run_id = %s",
        "TRUNCATE workflow_events CASCADE",
        "DELETE FROM workflow_runs WHERE run_id = %s",  # its events would cascade
    ],
)
@pytest.mark.parametrize("role", ["app", "owner"])
def test_events_cannot_be_changed_or_deleted(
    postgres_server: PostgresServer, migrated: str, statement: str, role: str
) -> None:
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    app_url = postgres_server.app_url(migrated)
    add_run_with_events(app_url, run_id)  # INSERT and COPY FROM as the app: allowed
    url = app_url if role == "app" else postgres_server.owner_url(migrated)
    with psycopg.connect(url) as conn, pytest.raises(errors.InsufficientPrivilege) as refused:
        conn.execute(statement, (run_id,) if "%s" in statement else None)
    if role == "owner" or statement.startswith("DELETE FROM workflow_runs"):
        assert "append-only" in str(refused.value)  # the trigger: holds even for the owner
    with psycopg.connect(app_url) as conn:
        rows = conn.execute(
            "SELECT seq, type FROM workflow_events WHERE run_id = %s ORDER BY seq", (run_id,)
        ).fetchall()
    assert rows == [(1, "run_submitted"), (2, "step_dispatched")]


def test_app_role_lacks_the_privileges_and_the_owner_can_lift_the_trigger(
    postgres_server: PostgresServer, migrated: str
) -> None:
    with psycopg.connect(postgres_server.app_url(migrated)) as conn:
        granted = {
            p: conn.execute("SELECT has_table_privilege('workflow_events', %s)", (p,)).fetchone()[0]  # type: ignore[index]
            for p in ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE")
        }
        version_write = conn.execute("SELECT has_table_privilege('alembic_version', 'UPDATE')").fetchone()
    assert granted == {"SELECT": True, "INSERT": True, "UPDATE": False, "DELETE": False, "TRUNCATE": False}
    assert version_write == (False,)
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    add_run_with_events(postgres_server.app_url(migrated), run_id)
    # A deliberate purge by the owner: the trigger is disabled inside its transaction only.
    with psycopg.connect(postgres_server.owner_url(migrated)) as conn:
        conn.execute("ALTER TABLE workflow_events DISABLE TRIGGER workflow_events_append_only")
        conn.execute("DELETE FROM workflow_runs WHERE run_id = %s", (run_id,))
        conn.execute("ALTER TABLE workflow_events ENABLE TRIGGER workflow_events_append_only")
    with psycopg.connect(postgres_server.app_url(migrated)) as conn:
        assert conn.execute("SELECT count(*) FROM workflow_events WHERE run_id = %s", (run_id,)).fetchone() == (0,)
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("ALTER TABLE workflow_events DISABLE TRIGGER workflow_events_append_only")
