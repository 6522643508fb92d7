"""STEPPE_DURABILITY on a real PostgreSQL: what the engine's own sessions commit with (issue 21)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import psycopg
import pytest

from orchestrator.settings import Settings
from orchestrator.store.runs import NewRun, RunStore

pytestmark = pytest.mark.integration


@contextmanager
def engine_store(url: str) -> Iterator[RunStore]:
    """A store built as `steppe coordinator` and the API build theirs: from the environment's Settings."""
    settings = Settings()
    store = RunStore(url, pool_size=2, durability=settings.durability)
    store.open()
    try:
        yield store
    finally:
        store.close()


def session_settings(store: RunStore, *names: str) -> list[dict[str, str]]:
    """SHOW `names` on every connection of the pool, each held at once (so none is reused)."""
    with ExitStack() as stack:
        conns = [stack.enter_context(store.connection()) for _ in range(2)]
        return [{name: conn.execute(f"SHOW {name}").fetchone()[name] for name in names} for conn in conns]  # type: ignore[index]


def server_setting(url: str, name: str) -> str:
    with psycopg.connect(url) as conn:
        row = conn.execute(f"SHOW {name}").fetchone()
    assert row is not None
    return str(row[0])


def test_strict_is_the_default_and_leaves_the_servers_setting(
    monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    monkeypatch.delenv("STEPPE_DURABILITY", raising=False)
    assert server_setting(database_url, "synchronous_commit") == "on"  # the fixture's server: the default
    with engine_store(database_url) as store:
        assert store.durability == "strict"
        assert session_settings(store, "synchronous_commit") == [{"synchronous_commit": "on"}] * 2


def test_balanced_turns_synchronous_commit_off_for_the_engines_sessions_only(
    monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    monkeypatch.setenv("STEPPE_DURABILITY", "balanced")
    with engine_store(database_url) as store:
        assert store.durability == "balanced"
        assert session_settings(store, "synchronous_commit") == [{"synchronous_commit": "off"}] * 2
        # A submission commits as usual: another session sees the run at once.
        run = NewRun(run_id=f"r-d-{uuid.uuid4().hex[:8]}", workflow="w", partition=0, definition={}, inputs={}, plan={})
        assert store.create_run(run) == (run.run_id, True)
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT status FROM workflow_runs WHERE run_id = %s", (run.run_id,)).fetchone()
    assert row == ("pending",)
    # Another session (a migration, psql, another program) keeps the server's setting.
    assert server_setting(database_url, "synchronous_commit") == "on"


def test_balanced_keeps_options_the_url_already_sets(monkeypatch: pytest.MonkeyPatch, database_url: str) -> None:
    monkeypatch.setenv("STEPPE_DURABILITY", "balanced")
    url = database_url + ("&" if "?" in database_url else "?") + "options=-c%20statement_timeout%3D4321"
    with engine_store(url) as store:
        assert (
            session_settings(store, "synchronous_commit", "statement_timeout")
            == [{"synchronous_commit": "off", "statement_timeout": "4321ms"}] * 2
        )
