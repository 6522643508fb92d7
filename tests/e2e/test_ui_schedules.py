"""The web UI's schedules page in a real headless Chromium: next fire times, deployed workflows, and the
pause, resume and trigger buttons (CSRF-checked forms) changing the schedule."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from orchestrator import deployed, schedule_ops
from orchestrator.store.schedules import ScheduleStore
from tests.e2e.conftest import Env
from tests.e2e.test_api import ApiServer
from tests.e2e.test_ui import browser_context, cluster, csrf_of, finish, open_api, page, screenshot  # noqa: F401

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

NIGHTLY = """\
name: ui-nightly
description: The nightly report
steps:
  - id: report
    handler: builtin.echo
    with: {ok: true}
"""


def test_the_schedules_page_pauses_resumes_and_triggers(cluster: Env, open_api: ApiServer, page: Any) -> None:  # noqa: F811
    deployed.deploy(cluster.submitter, NIGHTLY, filename="n.yaml", base_dir=None)
    request = schedule_ops.ScheduleRequest(
        schedule_id="ui-nightly", workflow="ui-nightly", cron="0 2 * * *", timezone="Europe/Berlin"
    )
    schedule_ops.add(cluster.submitter, request, now=dt.datetime.now(dt.UTC))
    page.goto(f"{open_api.url}/ui/schedules")
    row = page.locator('tr[data-schedule="ui-nightly"]')
    assert "0 2 * * *" in row.inner_text()
    assert row.locator(".next-fire").inner_text().endswith(("T02:00:00+01:00", "T02:00:00+02:00"))
    assert "The nightly report" in page.locator("#workflows").inner_text()
    screenshot(page, "ui-schedules.png", height=500)

    row.locator("text=Pause").click()
    assert "Schedule paused" in page.locator(".notice").inner_text()
    assert ScheduleStore(cluster.store).get("ui-nightly")["paused"] is True
    assert page.locator('tr[data-schedule="ui-nightly"] .next-fire').inner_text() == "-"
    page.locator('tr[data-schedule="ui-nightly"]').locator("text=Resume").click()
    assert "Schedule resumed" in page.locator(".notice").inner_text()
    assert ScheduleStore(cluster.store).get("ui-nightly")["paused"] is False

    page.locator('tr[data-schedule="ui-nightly"]').locator("text=Trigger now").click()
    assert "Run started" in page.locator(".notice").inner_text()
    run_id = page.url.split("/ui/runs/", 1)[1].split("?", 1)[0]
    assert finish(cluster, run_id)["status"] == "succeeded"

    # Without the page's CSRF token the action is refused and nothing changes.
    refused = page.request.post(
        f"{open_api.url}/ui/schedules/ui-nightly/pause",
        form={"csrf": "x" * 32},
        headers={"Origin": open_api.url},
        max_redirects=0,
    )
    assert refused.status == 403
    assert ScheduleStore(cluster.store).get("ui-nightly")["paused"] is False
    page.goto(f"{open_api.url}/ui/schedules")
    assert csrf_of(page)
