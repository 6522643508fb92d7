"""Retention end to end: real runs (one with a child workflow) finished by a real cluster, then
`steppe admin export | prune | import` as subprocesses, and the coordinator's own pruning loop.

Finished runs are made old by moving their `finished_at` back (as the app role may); a run still
executing and a recently finished one must come through every prune untouched, their folds
still equal to their stored state (`steppe admin rebuild --all --check`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Env
from tests.helpers import assert_eventually

pytestmark = pytest.mark.e2e

PARENT = """
name: ret-parent
steps:
  - {id: first, handler: builtin.echo, with: {n: 1}}
  - {id: kid, workflow: ret-kid, with: {n: 2}, needs: [first]}
workflows:
  ret-kid:
    name: ret-kid
    inputs: {n: {type: integer, required: true}}
    steps:
      - {id: inner, handler: builtin.echo, with: {n: "${{ inputs.n }}"}}
"""

SLOW = """
name: ret-slow
steps:
  - {id: wait, handler: test.witness, with: {seconds: 300}}
"""


def steppe(e2e: Env, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli.main", "--log-level", "WARNING", "admin", *args],
        env=e2e.env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def finished(e2e: Env, run_ids: list[str]) -> bool:
    return all(e2e.run(r)["status"] == "succeeded" for r in run_ids)


def step_running(e2e: Env, run_id: str) -> bool:
    """The slow run's step has started (nothing more happens to it during the test)."""
    return [s["status"] for s in snapshot(e2e, run_id)["steps"]] == ["running"]


def make_old(e2e: Env, run_ids: list[str]) -> None:
    """Move the runs (and their child runs) 40 days into the past."""
    with e2e.store.connection() as conn, conn.transaction():
        conn.execute(
            "UPDATE workflow_runs SET finished_at = finished_at - interval '40 days'"
            " WHERE run_id = ANY(%(ids)s) OR parent_run_id = ANY(%(ids)s)",
            {"ids": run_ids},
        )


def snapshot(e2e: Env, run_id: str) -> dict[str, Any]:
    """What a run is: its row's status and state, its steps and its event log."""
    run = e2e.run(run_id)
    events = [(e["seq"], e["type"], e["step_key"], e["data"]) for e in e2e.queries.events(run_id)]
    with e2e.store.connection() as conn:
        steps = conn.execute(
            "SELECT step_key, status, attempt, output FROM workflow_steps WHERE run_id = %s ORDER BY step_key",
            (run_id,),
        ).fetchall()
    return {"status": run["status"], "state": run.get("state"), "steps": steps, "events": events}


def count(e2e: Env, table: str, run_ids: list[str]) -> int:
    with e2e.store.connection() as conn:
        row = conn.execute(f"SELECT count(*) AS n FROM {table} WHERE run_id = ANY(%s)", (run_ids,)).fetchone()
    assert row is not None
    return int(row["n"])


def test_export_prune_import_round_trip_keeps_active_and_recent_runs(e2e: Env, tmp_path: Path) -> None:
    e2e.start(workers=1)
    old = [e2e.submit(PARENT, check_handlers=False) for _ in range(3)]
    recent = e2e.submit(PARENT, check_handlers=False)
    slow = e2e.submit(SLOW, check_handlers=False)
    assert_eventually(lambda: finished(e2e, [*old, recent]), timeout=60, message=e2e.log)
    assert_eventually(lambda: step_running(e2e, slow), timeout=30, message=e2e.log)
    make_old(e2e, old)
    children = [f"{r}.kid.1" for r in old]
    assert count(e2e, "workflow_runs", children) == 3
    before = {r: snapshot(e2e, r) for r in [*old, *children]}
    kept_before = {r: snapshot(e2e, r) for r in [recent, slow]}

    exported = ok(steppe(e2e, "export", "--older-than", "30d"))
    lines = [json.loads(line) for line in exported.splitlines()]
    assert sorted(d["run"]["run_id"] for d in lines) == sorted([*old, *children])
    archive = tmp_path / "runs.jsonl"
    archive.write_text(exported)

    planned = json.loads(ok(steppe(e2e, "prune", "--older-than", "30d", "--dry-run", "--json")))
    assert planned["runs"] == 6
    assert planned["events"] == sum(len(b["events"]) for b in before.values()) > 0
    assert count(e2e, "workflow_runs", old) == 3  # a dry run deletes nothing

    done = json.loads(ok(steppe(e2e, "prune", "--older-than", "30d", "--json")))
    assert {k: done[k] for k in ("runs", "steps", "events")} == {k: planned[k] for k in ("runs", "steps", "events")}
    ids = [*old, *children]
    assert [count(e2e, t, ids) for t in ("workflow_runs", "workflow_steps", "workflow_events")] == [0, 0, 0]
    assert {r: snapshot(e2e, r) for r in [recent, slow]} == kept_before  # the kept runs: untouched
    assert "0 projection(s) differ" in e2e.rebuild_check()  # and their folds are their state

    imported = ok(steppe(e2e, "import", str(archive)))
    assert "imported 6 run(s)" in imported
    assert {r: snapshot(e2e, r) for r in ids} == before
    assert "0 projection(s) differ" in e2e.rebuild_check()

    again = steppe(e2e, "import", str(archive))
    assert again.returncode == 1, again.stdout + again.stderr
    assert "6 of the 6 run(s)" in again.stderr
    assert "stored already" in again.stderr
    assert "nothing was imported" in again.stderr


def test_cli_refusals_say_what_to_do(e2e: Env, tmp_path: Path) -> None:
    e2e.env["STEPPE_RETENTION__FINISHED_RUNS"] = "0"
    off = steppe(e2e, "prune")
    assert off.returncode == 2
    assert "give --older-than" in off.stderr
    del e2e.env["STEPPE_RETENTION__FINISHED_RUNS"]
    nothing = steppe(e2e, "export")
    assert nothing.returncode == 2
    assert "give run ids, or --older-than" in nothing.stderr
    unknown = steppe(e2e, "export", "no-such-run")
    assert unknown.returncode == 2
    assert "no run no-such-run" in unknown.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"format": "steppe.run/1", "run": {"run_id": "x"}}\nnot json\n')
    refused = steppe(e2e, "import", str(bad))
    assert refused.returncode == 2
    assert f"{bad}:2: not JSON" in refused.stderr


def test_the_coordinator_prunes_old_finished_runs_by_itself(e2e: Env) -> None:
    e2e.cluster.env.update({"STEPPE_RETENTION__FINISHED_RUNS": "1h", "STEPPE_RETENTION__INTERVAL": "0.5"})
    e2e.start(workers=1)
    old = [e2e.submit(PARENT, check_handlers=False) for _ in range(2)]
    recent = e2e.submit(PARENT, check_handlers=False)
    slow = e2e.submit(SLOW, check_handlers=False)
    assert_eventually(lambda: finished(e2e, [*old, recent]), timeout=60, message=e2e.log)
    kept_before = {r: snapshot(e2e, r) for r in [recent]}
    make_old(e2e, old)
    ids = [*old, *(f"{r}.kid.1" for r in old)]
    assert_eventually(lambda: count(e2e, "workflow_runs", ids) == 0, timeout=30, message=e2e.log)
    assert count(e2e, "workflow_events", ids) == 0
    assert {r: snapshot(e2e, r) for r in [recent]} == kept_before
    assert e2e.run(slow)["status"] == "running"
    assert "0 projection(s) differ" in e2e.rebuild_check()
