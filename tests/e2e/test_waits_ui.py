"""The web UI's approve / reject / signal forms on a run page (CSRF-checked like cancel and retry),
in a real browser against a real cluster; reuses test_ui.py's module fixtures."""

from __future__ import annotations

from typing import Any

import pytest
from playwright import sync_api as playwright_sync

from tests.e2e.conftest import Env
from tests.e2e.test_api import ApiServer
from tests.e2e.test_ui import browser_context, cluster, csrf_of, finish, open_api, page  # noqa: F401 - fixtures

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

GATED = """
name: ui-gated
steps:
  - id: review
    approval: {approvers: [alice]}
  - id: paid
    needs: [review]
    wait: {signal: payment-webhook}
"""


def test_approve_and_signal_from_the_run_page(cluster: Env, open_api: ApiServer, page: Any) -> None:  # noqa: F811
    run_id = cluster.submit(GATED)
    page.goto(f"{open_api.url}/ui/runs/{run_id}")
    playwright_sync.expect(page.locator('#waits tr[data-step="review"]')).to_contain_text(
        "waits for an approval by alice", timeout=30_000
    )
    page.fill("#by-review", "mallory")
    page.click("#approve-review")
    assert "not an approver" in page.content()  # refused with the reason, nothing stored
    page.goto(f"{open_api.url}/ui/runs/{run_id}")
    page.fill("#by-review", "alice")
    page.fill("#comment-review", "checked")
    page.click("#approve-review")
    assert "Approval accepted" in page.locator(".notice").inner_text()
    playwright_sync.expect(page.locator('#waits tr[data-step="paid"]')).to_contain_text(
        "signal payment-webhook", timeout=30_000
    )
    page.fill("#data-paid", '{"amount": 42}')
    page.click("#signal-paid")
    assert "Signal accepted" in page.locator(".notice").inner_text()
    doc = finish(cluster, run_id)
    assert doc["status"] == "succeeded"
    assert doc["steps"]["paid"]["output"] == {"amount": 42}
    assert doc["steps"]["review"]["output"]["by"] == "alice"


def test_reject_needs_its_csrf_token(cluster: Env, open_api: ApiServer, page: Any) -> None:  # noqa: F811
    run_id = cluster.submit(GATED)
    page.goto(f"{open_api.url}/ui/runs/{run_id}")
    playwright_sync.expect(page.locator("#reject-review")).to_be_visible(timeout=30_000)
    url = f"{open_api.url}/ui/runs/{run_id}/steps/review/decide"
    forged = page.request.post(
        url, form={"decision": "reject", "by": "alice"}, headers={"Origin": open_api.url}, max_redirects=0
    )
    assert forged.status == 403
    rejected = page.request.post(
        url,
        form={"csrf": csrf_of(page), "decision": "reject", "by": "alice", "comment": "no"},
        headers={"Origin": open_api.url},
        max_redirects=0,
    )
    assert rejected.status == 303
    doc = finish(cluster, run_id)
    assert doc["status"] == "failed"
    assert doc["steps"]["review"]["error"]["type"] == "ApprovalRejected"
