"""PostgreSQL faults (docs/reliability.md 10, 19): restarts under load, and migrations on a populated database.

The schema-level migration checks (every table populated, upgrade → downgrade → upgrade, the
migrated schema equal to tables.py's) live in tests/integration/test_migrations.py; the test here
populates the database by running real workflows, migrates it down and up, and runs again.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from orchestrator.store import db
from tests.faults.harness import FaultEnv, ledger_chain
from tests.faults.invariants import (
    check_applied_once,
    check_dead_letters,
    check_effectively_once,
    check_event_logs,
    check_nothing_stranded,
    report,
    wait_terminal,
)
from tests.helpers import assert_eventually

pytestmark = [pytest.mark.faults, pytest.mark.integration]


def committed_events(env: FaultEnv) -> int:
    with env.store.connection() as conn:
        row = conn.execute("SELECT count(*) AS n FROM workflow_events").fetchone()
    return int(row["n"]) if row else 0


def test_10_postgres_fast_and_immediate_restarts_pools_recover_no_event_gap(
    faults: FaultEnv, postgres_server: Any
) -> None:
    faults.start(workers=2, concurrency=4)
    runs = [faults.submit(ledger_chain("pg", 6, 0.3)) for _ in range(8)]
    figures: dict[str, float] = {}
    for mode, after in (("fast", 8), ("immediate", 24)):
        assert_eventually(lambda after=after: len(faults.witness("effects")) >= after, timeout=30)
        stopped = time.monotonic()
        postgres_server.restart(mode=mode)
        figures[f"{mode}_restart_s"] = time.monotonic() - stopped
        back = time.monotonic()
        before = assert_eventually(lambda: committed_events(faults) or None, timeout=10)
        assert_eventually(lambda before=before: committed_events(faults) > before, timeout=30, message=faults.log_text)
        figures[f"{mode}_commits_resumed_s"] = time.monotonic() - back
    wait_terminal(faults, runs, deadline=45)

    assert {faults.run(r)["status"] for r in runs} == {"succeeded"}
    assert all(p.poll() is None for p in faults.cluster.coordinators + faults.cluster.workers)
    keys = [f"{r}/s{i}" for r in runs for i in range(6)]
    once = check_effectively_once(faults, keys, injected=2 * 8, per_key=1)
    check_applied_once(faults, runs)
    check_event_logs(faults, runs)
    check_nothing_stranded(faults)
    check_dead_letters(faults, [])
    report(
        "10-postgres-restart",
        **figures,
        coordinator_errors=len(faults.log_events("coordinator_infrastructure_error")),
        duplicate_calls=once.duplicates,
    )


def test_19_migrations_down_and_up_on_a_database_populated_by_real_runs(
    faults: FaultEnv, db_url: str, postgres_server: Any
) -> None:
    owner_url = postgres_server.owner_url(db_url.rsplit("/", 1)[1])  # migrations run as the schema owner
    faults.start(workers=1)
    runs = {
        "succeeded": faults.submit(ledger_chain("mig", 3, 0.0)),
        "compensation_failed": faults.submit("""
name: mig-saga
on_failure: compensate
steps:
  - {id: a, handler: test.ledger, compensate: {handler: builtin.fail, with: {retryable: false}}}
  - {id: b, handler: builtin.fail, needs: [a], with: {retryable: false}}
"""),
    }
    docs = wait_terminal(faults, list(runs.values()), deadline=20)
    assert {s: docs[r]["status"] for s, r in runs.items()} == {s: s for s in runs}
    faults.submitter.request(runs["succeeded"], "retry")  # a processed command row
    faults.stop_processes()
    pending = faults.submit(ledger_chain("mig-pending", 2, 0.0), check_handlers=False)  # never started
    with faults.store.connection() as conn:
        counts = {
            t: conn.execute(f"SELECT count(*) AS n FROM {t}").fetchone()["n"]
            for t in ("workflow_runs", "workflow_events", "workflow_steps", "dead_letters", "run_commands")
        }
    assert all(counts.values()), counts

    started = time.monotonic()
    db.downgrade(owner_url, "base")
    assert db.current_revision(db_url) is None
    db.upgrade(owner_url)
    migrated_s = time.monotonic() - started
    assert db.current_revision(db_url) == db.head_revision()

    faults.start(workers=1)  # the same Redis namespace still holds the old runs' streams
    again = faults.submit(ledger_chain("mig-again", 3, 0.0))
    doc = wait_terminal(faults, [again], deadline=20)[again]
    assert doc["status"] == "succeeded"
    assert faults.queries.list_runs() == [faults.queries.list_runs()[0]]  # only the new run
    check_event_logs(faults, [again])
    check_nothing_stranded(faults)
    report("19-migrations-populated", rows_before=counts, down_up_s=migrated_s, old_pending_run=pending[:8])
