"""Deployed workflows and schedules on a real cluster, through the CLI and the HTTP API: deploy, submit
NAME@V, a `--every 2s` schedule producing runs, pause/resume, trigger, overlap skip while a run sleeps."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.store.schedules import ScheduleStore
from tests.e2e.conftest import Env
from tests.helpers import assert_eventually

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

REPORT = """\
name: {name}
inputs:
  day: {{type: string, default: today}}
steps:
  - id: report
    handler: builtin.echo
    with: {{day: "${{{{ inputs.day }}}}", v: {v}}}
"""
SLEEPER = """\
name: sleeper
steps:
  - id: nap
    handler: builtin.sleep
    with: {seconds: 5}
"""


def steppe(env: Env, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli.main", "--log-json", *args],
        env={**env.env, "COLUMNS": "200"},  # tables unfolded
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def schedule_runs(env: Env, schedule_id: str) -> list[dict[str, Any]]:
    return sorted(ScheduleStore(env.store).recent_runs(schedule_id, limit=100), key=lambda r: r["created_at"])


def wait_past(moment: float) -> None:
    """Let time pass to observe that nothing happens (a schedule paused): the one wait here without a condition."""
    assert_eventually(lambda: time.time() >= moment, timeout=moment - time.time() + 5, interval=0.1)


def test_deploy_submit_by_version_and_an_every_2s_schedule(e2e: Env, tmp_path: Path) -> None:
    e2e.start(workers=1)
    doc = tmp_path / "report.yaml"
    doc.write_text(REPORT.format(name="report", v=1))
    assert "deployed report@1" in steppe(e2e, "workflows", "deploy", str(doc)).stdout
    assert "already deployed as report@1" in steppe(e2e, "workflows", "deploy", str(doc)).stdout
    doc.write_text(REPORT.format(name="report", v=2))
    assert json.loads(steppe(e2e, "workflows", "deploy", str(doc), "--json").stdout)[0]["version"] == 2
    listed = json.loads(steppe(e2e, "workflows", "list", "--json").stdout)
    assert [(w["name"], w["version"], w["versions"]) for w in listed] == [("report", 2, 2)]
    assert "v: 1" in steppe(e2e, "workflows", "show", "report@1").stdout

    submitted = steppe(e2e, "submit", "report@1", "--input", "day=mon", "--wait")
    assert "(report@1)" in submitted.stdout
    runs = json.loads(steppe(e2e, "runs", "--workflow", "report@1", "--json").stdout)
    assert len(runs) == 1
    assert e2e.run(runs[0]["run_id"])["steps"]["report"]["output"] == {"day": "mon", "v": 1}
    missing = steppe(e2e, "submit", "report@7", check=False)
    assert missing.returncode == 2
    assert "has no version 7: its versions are 1..2" in missing.stderr

    steppe(e2e, "schedules", "add", "tick", "--workflow", "report", "--every", "2s", "--input", "day=tick")
    added_at = time.time()
    assert_eventually(lambda: len(schedule_runs(e2e, "tick")) >= 5, timeout=20, message="5 ticks in ~10 s")
    ticks = schedule_runs(e2e, "tick")[:5]
    keys = [dt.datetime.fromisoformat(r["idempotency_key"].split(":", 2)[2]) for r in ticks]
    assert keys[0].timestamp() <= added_at + 2  # the first tick after adding, then one every 2 s: 5 in 10 s
    assert [(b - a).total_seconds() for a, b in itertools.pairwise(keys)] == [2.0] * 4
    lags = [r["created_at"].timestamp() - k.timestamp() for r, k in zip(ticks, keys, strict=True)]
    assert max(lags) < 1.0, lags  # each run was created within a second of its tick
    assert_eventually(lambda: e2e.run(ticks[0]["run_id"])["status"] == "succeeded", timeout=20)
    assert e2e.run(ticks[0]["run_id"])["steps"]["report"]["output"] == {"day": "tick", "v": 2}  # the newest

    listing = json.loads(steppe(e2e, "schedules", "list", "--json").stdout)
    assert listing[0]["schedule_id"] == "tick"
    assert listing[0]["next_fire_at"] is not None
    table = steppe(e2e, "schedules", "list").stdout
    assert "tick" in table
    assert "every 2s" in table

    steppe(e2e, "schedules", "pause", "tick")
    paused_count = len(schedule_runs(e2e, "tick"))
    wait_past(time.time() + 5)  # two ticks' worth while paused
    assert len(schedule_runs(e2e, "tick")) <= paused_count + 1  # at most a pass already under way
    paused_count = len(schedule_runs(e2e, "tick"))
    steppe(e2e, "schedules", "resume", "tick")
    assert_eventually(lambda: len(schedule_runs(e2e, "tick")) >= paused_count + 1, timeout=10, message="resumed")

    triggered = json.loads(steppe(e2e, "schedules", "trigger", "tick", "--json").stdout)
    assert triggered["version"] == 2
    assert_eventually(lambda: e2e.run(triggered["run_id"])["status"] == "succeeded", timeout=20)
    show = json.loads(steppe(e2e, "schedules", "show", "tick", "--json").stdout)
    assert triggered["run_id"] in [r["run_id"] for r in show["recent_runs"]]
    steppe(e2e, "schedules", "remove", "tick")
    gone = steppe(e2e, "schedules", "show", "tick", check=False)
    assert gone.returncode == 2
    assert "no schedule 'tick'" in gone.stderr
    e2e.rebuild_check()


def test_overlap_skip_does_not_start_a_tick_while_the_previous_run_sleeps(e2e: Env, tmp_path: Path) -> None:
    e2e.start(workers=1)
    doc = tmp_path / "sleeper.yaml"
    doc.write_text(SLEEPER)
    steppe(e2e, "workflows", "deploy", str(doc))
    steppe(e2e, "schedules", "add", "naps", "--workflow", "sleeper@1", "--every", "2s")
    assert_eventually(lambda: len(schedule_runs(e2e, "naps")) >= 2, timeout=30, message="a second run")
    first, second = schedule_runs(e2e, "naps")[:2]
    finished = e2e.run(first["run_id"])["finished_at"]
    assert finished is not None
    assert dt.datetime.fromisoformat(finished) <= second["created_at"]  # never two at once
    row = ScheduleStore(e2e.store).get("naps")
    assert row["skipped_count"] >= 2  # the ticks during the 5 s sleep


def test_the_http_api_deploys_schedules_and_submits_by_reference(e2e: Env) -> None:
    from tests.e2e.test_api import ApiServer

    e2e.start(workers=1)
    api = ApiServer(e2e.env, e2e.home)
    try:
        with api.client() as http:
            _exercise_api(e2e, http)
    finally:
        api.stop()


def _exercise_api(e2e: Env, http: httpx.Client) -> None:
    if True:
        deployed = http.post("/v1/workflows", content=REPORT.format(name="api-report", v=1))
        assert deployed.status_code == 201, deployed.text
        assert deployed.json()["version"] == 1
        assert http.get("/v1/workflows").json()[0]["name"] == "api-report"
        assert http.get("/v1/workflows/api-report@1").json()["definition"]["name"] == "api-report"
        assert http.get("/v1/workflows/api-report@4").status_code == 404
        run = http.post("/v1/runs", json={"workflow_ref": "api-report@1", "inputs": {"day": "api"}})
        assert run.status_code == 201, run.text
        assert_eventually(lambda: e2e.run(run.json()["run_id"])["status"] == "succeeded", timeout=20)
        both = http.post("/v1/runs", json={"workflow_ref": "api-report", "workflow": "name: x"})
        assert both.status_code == 422

        created = http.post(
            "/v1/schedules",
            json={"schedule_id": "nightly", "workflow": "api-report", "cron": "0 2 * * *", "timezone": "Europe/Berlin"},
        )
        assert created.status_code == 201, created.text
        assert created.json()["next_fire_at"].endswith(("T02:00:00+01:00", "T02:00:00+02:00"))
        bad = http.post("/v1/schedules", json={"schedule_id": "x", "workflow": "api-report", "cron": "99 * * * *"})
        assert bad.status_code == 422
        assert "invalid cron expression" in bad.text
        assert [s["schedule_id"] for s in http.get("/v1/schedules").json()["schedules"]] == ["nightly"]
        assert http.post("/v1/schedules/nightly/pause").json()["paused"] is True
        assert http.post("/v1/schedules/nightly/resume").json()["paused"] is False
        triggered = http.post("/v1/schedules/nightly/trigger")
        assert triggered.status_code == 201
        assert_eventually(lambda: e2e.run(triggered.json()["run_id"])["status"] == "succeeded", timeout=20)
        assert http.delete("/v1/schedules/nightly").status_code == 204
        assert http.get("/v1/schedules/nightly").status_code == 404
        schema = http.get("/openapi.json").json()
        assert {"/v1/workflows", "/v1/schedules", "/v1/schedules/{schedule_id}/trigger"} <= set(schema["paths"])
