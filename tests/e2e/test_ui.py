"""The web UI end to end: a real `steppe api` process in front of a real cluster (a coordinator and
workers), driven in Debian's headless Chromium through Playwright (no browser download).

`STEPPE_UI_SCREENSHOTS=1` writes docs/img/ui-runs.png, ui-run.png and ui-dead-letters.png.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from orchestrator.dev.cluster import steppe_argv
from tests.e2e.conftest import Env, make_env
from tests.e2e.test_api import TOKEN, ApiServer, free_port
from tests.helpers import assert_eventually

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

playwright_sync = pytest.importorskip("playwright.sync_api")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "img"
TERMINAL = {"succeeded", "failed", "cancelled", "compensated", "compensation_failed"}
IMPORTS = ["tests.e2e.handlers"]

SHOWCASE = """
name: order-fulfilment
inputs:
  order: {type: string, required: true}
steps:
  - id: validate
    handler: builtin.echo
    with: {order: "${{ inputs.order }}"}
  - id: reserve_stock
    handler: builtin.echo
    needs: [validate]
    with: {reserved: true}
  - id: price
    handler: builtin.echo
    needs: [validate]
    with: {total: 42}
  - id: pack_items
    handler: builtin.echo
    needs: [reserve_stock]
    for_each: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
    with: {item: "${{ item }}"}
  - id: charge_card
    handler: builtin.fail
    needs: [price]
    with: {message: "card declined: insufficient funds", retryable: false}
  - id: ship
    handler: builtin.echo
    needs: [pack_items, charge_card]
    with: {carrier: post}
  - id: notify
    handler: builtin.echo
    needs: [ship]
    with: {sent: true}
"""

QUICK = """
name: ui-quick
steps:
  - id: wait_a_bit
    handler: builtin.sleep
    with: {seconds: 2}
  - id: done
    handler: builtin.echo
    needs: [wait_a_bit]
    with: {ok: true}
"""

SLEEPY = """
name: ui-sleepy
steps:
  - id: nap
    handler: builtin.sleep
    with: {seconds: 60}
"""

FLAKY = """
name: ui-flaky
steps:
  - id: flaky
    handler: builtin.fail
    with: {message: "fails on its first attempt", times: 1}
    retry: {max_attempts: 1}
"""

POISON = """
name: ui-poison
steps:
  - id: prepare
    handler: builtin.echo
    with: {ready: true}
  - id: deliver
    handler: builtin.echo
    queue: poison
    needs: [prepare]
    with: {value: original}
"""

XSS = "<script>window.__steppe_xss = 1</script><img src=x onerror=window.__steppe_xss=2>"  # no quotes: JSON keeps it
HOSTILE = """
name: ui-hostile
inputs:
  payload: {type: string, required: true}
steps:
  - id: show
    handler: builtin.echo
    with: {html: "${{ inputs.payload }}"}
  - id: explode
    handler: builtin.fail
    with: {message: "${{ inputs.payload }}", retryable: false}
"""


@pytest.fixture(scope="module")
def cluster(
    redis_url: str, postgres_server: Any, template_database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Env]:
    name = f"steppe_ui_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_server.url_for("postgres"), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    env = make_env(redis_url, postgres_server.url_for(name), f"t{uuid.uuid4().hex[:12]}", tmp_path_factory.mktemp("ui"))
    try:
        env.cluster.start_coordinator()
        for _ in range(2):
            env.cluster.start_worker(queues=["default"], imports=IMPORTS)
        env.cluster.wait_for_workers(env.redis, 2)
        yield env
    finally:
        env.close()
        with psycopg.connect(postgres_server.url_for("postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def open_api(cluster: Env) -> Iterator[ApiServer]:
    """`steppe api` without STEPPE_API_TOKEN: the UI needs no login."""
    api = ApiServer(cluster.env, cluster.home, STEPPE_API_TOKEN="")
    yield api
    api.stop()


@pytest.fixture(scope="module")
def locked_api(cluster: Env) -> Iterator[ApiServer]:
    """`steppe api` with STEPPE_API_TOKEN: the UI asks for it."""
    api = ApiServer(cluster.env, cluster.home)
    yield api
    api.stop()


@pytest.fixture(scope="module")
def browser_context() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: `make install` installs Debian's chromium")
    with tempfile.TemporaryDirectory(prefix="steppe-chromium-") as profile, playwright_sync.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1360, "height": 900},
        )
        context.set_default_timeout(30_000)
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(browser_context: Any) -> Iterator[Any]:
    browser_context.clear_cookies()  # both API processes listen on 127.0.0.1: cookies are per host
    tab = browser_context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda e: errors.append(str(e)))
    yield tab
    tab.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def finish(env: Env, run_id: str, timeout: float = 60) -> dict[str, Any]:
    return assert_eventually(
        lambda: (doc := env.run(run_id))["status"] in TERMINAL and doc,
        timeout=timeout,
        interval=0.1,
        message=lambda: f"run {run_id} did not finish; cluster log:\n{env.log()}",
    )


def screenshot(page: Any, name: str, *, height: int = 900) -> None:
    """The top `height` pixels of the page, into docs/img/ when STEPPE_UI_SCREENSHOTS is set."""
    if os.environ.get("STEPPE_UI_SCREENSHOTS"):
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        clip = {"x": 0, "y": 0, "width": page.viewport_size["width"], "height": height}
        page.screenshot(path=str(SCREENSHOTS / name), full_page=True, clip=clip)


def status_of(page: Any, selector: str) -> str:
    return str(page.locator(selector).first.get_attribute("data-status"))


def test_the_runs_page_lists_a_fresh_run_and_refreshes_it_live(cluster: Env, open_api: ApiServer, page: Any) -> None:
    finish(cluster, cluster.submit(SHOWCASE, {"order": "A-1001"}))
    run_id = cluster.submit(QUICK)
    page.goto(f"{open_api.url}/ui/runs")
    row = page.locator(f'tr[data-run="{run_id}"]')
    assert row.count() == 1
    assert row.locator(".badge").inner_text() in {"pending", "running"}
    # No reload: the page's few lines of JavaScript swap in the new state.
    playwright_sync.expect(row.locator(".badge")).to_have_text("succeeded", timeout=30_000)
    assert page.locator("#live-toggle").is_checked()

    page.select_option("select[name=status]", "failed")
    page.click("form.filters button")
    assert "status=failed" in page.url
    assert page.locator(f'tr[data-run="{run_id}"]').count() == 0
    assert page.locator("tr[data-run]").count() >= 1  # the showcase run failed
    page.goto(f"{open_api.url}/ui/runs?workflow=ui-quick&since=1h")
    assert page.locator("tr[data-run]").count() == 1
    page.goto(f"{open_api.url}/ui/runs?since=bogus")
    assert "invalid duration" in page.locator("#problem").inner_text()

    # Without JavaScript the pages read the same; a meta refresh stands in for live updates.
    body = httpx.get(f"{open_api.url}/ui/runs?refresh=5", timeout=10).text
    assert '<meta http-equiv="refresh" content="5">' in body
    assert run_id in body


def test_the_run_page_draws_every_step_with_its_state_and_a_failed_steps_traceback(
    cluster: Env, open_api: ApiServer, page: Any
) -> None:
    run_id = cluster.submit(SHOWCASE, {"order": "A-1002"})
    doc = finish(cluster, run_id)
    assert doc["status"] == "failed"
    page.goto(f"{open_api.url}/ui/runs/{run_id}")
    expected = {
        "validate": "succeeded",
        "reserve_stock": "succeeded",
        "price": "succeeded",
        "pack_items": doc["steps"]["pack_items"]["status"],
        "charge_card": "failed",
        "ship": doc["steps"].get("ship", {}).get("status", "pending"),
        "notify": doc["steps"].get("notify", {}).get("status", "pending"),
    }
    assert page.locator("svg g.node").count() == len(expected)  # 12 items are one box
    for step, status in expected.items():
        assert status_of(page, f'svg g.node[data-step="{step}"]') == status, step
        assert status_of(page, f'tbody[data-step="{step}"]') == status, step
    assert page.locator('svg g.node[data-step="pack_items"] text').text_content() == "pack_items \u00d712"
    assert page.locator('svg g.node[data-step="pack_items"] rect.seg.st-succeeded').count() == 1
    assert page.locator('#items-pack_items tr[data-step^="pack_items["]').count() == 12

    failed = page.locator('tbody[data-step="charge_card"]')
    assert "NonRetryableStepError: card declined: insufficient funds" in failed.locator("pre.error").inner_text()
    traceback = failed.locator("details.traceback pre")
    assert traceback.is_visible()  # open by default for a failed step
    assert "Traceback (most recent call last)" in traceback.inner_text()
    assert "card declined" in page.locator("#run-error").inner_text()
    events = page.locator("#events tbody tr")
    assert events.count() == len(cluster.queries.events(run_id))
    assert "run.failed" in events.last.inner_text()
    screenshot(page, "ui-run.png", height=1250)
    # The same page reads without JavaScript: graph, states and traceback are in the HTML itself.
    raw = httpx.get(f"{open_api.url}/ui/runs/{run_id}", timeout=10).text
    assert '<g class="node st-failed" data-step="charge_card" data-status="failed">' in raw
    assert "Traceback (most recent call last)" in raw


def test_cancel_and_retry_from_the_ui_change_the_run(cluster: Env, open_api: ApiServer, page: Any) -> None:
    sleepy = cluster.submit(SLEEPY)
    page.goto(f"{open_api.url}/ui/runs/{sleepy}")
    playwright_sync.expect(page.locator('svg g.node[data-step="nap"]')).to_have_attribute(
        "data-status", "running", timeout=30_000
    )
    page.click("#cancel")
    assert "Cancel requested" in page.locator(".notice").inner_text()
    assert finish(cluster, sleepy)["status"] == "cancelled"
    playwright_sync.expect(page.locator("h1 .badge")).to_have_text("cancelled", timeout=30_000)
    assert page.locator("#cancel").count() == 0

    flaky = cluster.submit(FLAKY)
    assert finish(cluster, flaky)["status"] == "failed"
    page.goto(f"{open_api.url}/ui/runs/{flaky}")
    assert page.locator("#cancel").count() == 0
    csrf = csrf_of(page)
    page.click("#retry")
    assert "Retry requested" in page.locator(".notice").inner_text()
    doc = assert_eventually(
        lambda: (d := cluster.run(flaky))["status"] == "succeeded" and d, timeout=60, message=cluster.log
    )
    assert doc["steps"]["flaky"]["attempts"] == 2
    playwright_sync.expect(page.locator("h1 .badge")).to_have_text("succeeded", timeout=30_000)
    # Retrying what succeeded is refused with a reason, as by the API.
    response = page.request.post(
        f"{open_api.url}/ui/runs/{flaky}/retry",
        form={"csrf": csrf},
        headers={"Origin": open_api.url},
        max_redirects=0,
    )
    assert response.status == 409
    assert "only failed or cancelled runs can be retried" in response.text()


def csrf_of(page: Any) -> str:
    return str(page.locator("input[name=csrf]").first.get_attribute("value"))


def test_the_dead_letter_page_replays_one_with_edited_arguments(cluster: Env, open_api: ApiServer, page: Any) -> None:
    # A worker that dead-letters every message of the `poison` queue on its first delivery.
    cluster.cluster.env["STEPPE_WORKER__MAX_DELIVERIES"] = "0"
    try:
        poisoner = cluster.cluster.start_worker(queues=["poison"], imports=IMPORTS)
    finally:
        cluster.cluster.env["STEPPE_WORKER__MAX_DELIVERIES"] = "3"
    run_id = cluster.submit(POISON)
    doc = finish(cluster, run_id)
    assert doc["steps"]["deliver"]["status"] == "dead_lettered"
    poisoner.terminate()
    poisoner.wait(timeout=30)
    cluster.cluster.workers.remove(poisoner)
    cluster.cluster.start_worker(queues=["poison"], imports=IMPORTS)

    page.goto(f"{open_api.url}/ui/dead-letters")
    row = page.locator("#dead-letters tbody tr", has_text=run_id)
    assert row.count() == 1
    assert "MaxDeliveriesExceeded" in row.inner_text()
    assert row.locator(".badge").inner_text() == "dead"
    screenshot(page, "ui-dead-letters.png")

    row.locator("td a").first.click()
    assert re.search(r"/ui/dead-letters/\d+$", page.url)
    args = page.locator("textarea#args")
    assert '"value": "original"' in args.input_value()
    args.fill('{"value": "not json')
    page.click("#replay-edited")
    assert "is not valid JSON" in page.locator("#problem").inner_text()
    assert page.locator("textarea#args").input_value() == '{"value": "not json'  # kept for fixing
    assert cluster.run(run_id)["status"] == "failed"  # nothing was replayed

    page.locator("textarea#args").fill('{"value": "edited in the UI"}')
    page.click("#replay-edited")
    assert page.url.startswith(f"{open_api.url}/ui/runs/{run_id}")
    assert "Replay requested" in page.locator(".notice").inner_text()
    doc = assert_eventually(
        lambda: (d := cluster.run(run_id))["status"] == "succeeded" and d, timeout=60, message=cluster.log
    )
    assert doc["steps"]["deliver"]["output"] == {"value": "edited in the UI"}
    page.goto(f"{open_api.url}/ui/dead-letters?status=replayed")
    assert page.locator("#dead-letters tbody tr", has_text=run_id).locator(".badge").inner_text() == "replayed"
    # A replayed dead letter offers no second replay.
    page.locator("#dead-letters tbody tr", has_text=run_id).locator("td a").first.click()
    assert page.locator("#replay").count() == 0

    # Purge: refused without the confirmation, then everything older than 0s is gone.
    page.goto(f"{open_api.url}/ui/dead-letters")
    page.click("details.purge summary")
    page.fill("input[name=older_than]", "0s")
    unconfirmed = page.request.post(
        f"{open_api.url}/ui/dead-letters/purge",
        form={"csrf": csrf_of(page), "older_than": "0s"},
        headers={"Origin": open_api.url},
        max_redirects=0,
    )
    assert unconfirmed.status == 422
    assert "nothing was deleted" in unconfirmed.text()
    assert page.locator("#dead-letters tbody tr[data-dead-letter]").count() >= 1
    page.check("input[name=confirm]")
    page.click("details.purge button")
    assert "Old dead letters purged" in page.locator(".notice").inner_text()
    assert page.locator("#dead-letters tbody tr[data-dead-letter]").count() == 0


def test_a_token_requires_a_login_and_every_post_its_csrf_token(cluster: Env, locked_api: ApiServer, page: Any) -> None:
    run_id = cluster.submit(SLEEPY)
    page.goto(f"{locked_api.url}/ui/runs/{run_id}")
    assert page.url.startswith(f"{locked_api.url}/ui/login?next=")
    assert page.locator("#steps").count() == 0
    assert "ui-sleepy" not in page.content()  # nothing of the run before the login
    page.fill("input[name=token]", "wrong-" + TOKEN)
    page.click("button[type=submit]")
    assert "wrong token" in page.locator("#problem").inner_text()
    page.fill("input[name=token]", TOKEN)
    page.click("button[type=submit]")
    assert page.url == f"{locked_api.url}/ui/runs/{run_id}"  # back where the login started
    assert page.locator("h1 .mono").inner_text() == run_id
    cookie = next(c for c in page.context.cookies() if c["name"] == "steppe_ui")
    assert (cookie["httpOnly"], cookie["sameSite"], cookie["path"]) == (True, "Strict", "/ui")
    assert TOKEN not in cookie["value"]

    cancel = f"{locked_api.url}/ui/runs/{run_id}/cancel"
    origin = {"Origin": locked_api.url}
    for form, headers in (
        ({}, origin),  # no CSRF field
        ({"csrf": "x" * 32}, origin),  # a wrong one
        ({"csrf": csrf_of(page)}, {"Origin": "http://evil.example"}),  # the right one, from another site
    ):
        refused = page.request.post(cancel, form=form, headers=headers, max_redirects=0)
        assert refused.status == 403, (form, headers, refused.text())
    # Without the session cookie (another client), even the right field is refused.
    anonymous = httpx.post(cancel, data={"csrf": csrf_of(page)}, headers=origin, timeout=10)
    assert anonymous.status_code == 403
    assert httpx.get(f"{locked_api.url}/ui/runs/{run_id}", timeout=10).status_code == 303
    assert cluster.run(run_id)["status"] in {"pending", "running"}
    assert not [e for e in cluster.queries.events(run_id) if e["type"] == "run.cancel_requested"]

    page.click("#cancel")  # the page's own form carries the token
    assert finish(cluster, run_id)["status"] == "cancelled"
    page.click("form[action='/ui/logout'] button")
    assert page.url.startswith(f"{locked_api.url}/ui/login")
    page.goto(f"{locked_api.url}/ui/workers")
    assert "/ui/login" in page.url


def test_a_step_output_holding_a_script_is_shown_as_text(cluster: Env, open_api: ApiServer, page: Any) -> None:
    run_id = cluster.submit(HOSTILE, {"payload": XSS})
    finish(cluster, run_id)
    page.goto(f"{open_api.url}/ui/runs/{run_id}")
    output = page.locator('tbody[data-step="show"] pre.output').inner_text()
    assert XSS in output
    assert XSS in page.locator('tbody[data-step="explode"] pre.error').inner_text()
    assert page.evaluate("window.__steppe_xss") is None
    assert page.locator("main img").count() == 0
    assert page.locator("main script").count() == 0
    page.goto(f"{open_api.url}/ui/runs?workflow=ui-hostile")
    assert page.evaluate("window.__steppe_xss") is None


def test_the_workers_page_lists_live_workers_and_coordinators(cluster: Env, open_api: ApiServer, page: Any) -> None:
    page.goto(f"{open_api.url}/ui/workers")
    assert page.locator("#workers tbody tr").count() >= 2
    assert "builtin.echo" in page.locator("#workers").inner_text()
    assert page.locator("#coordinators tbody tr").count() == 1


def test_steppe_ui_serves_the_ui_and_opens_a_browser_tab_on_it(cluster: Env, tmp_path: Path) -> None:
    opened = tmp_path / "opened.txt"
    browser = tmp_path / "browser.sh"
    browser.write_text(f'#!/bin/sh\necho "$1" > {opened}\n')
    browser.chmod(0o755)
    port = free_port()
    log = (tmp_path / "ui.log").open("wb")
    env = {**cluster.env, "BROWSER": f"{browser} %s", "STEPPE_API_TOKEN": ""}
    proc = subprocess.Popen([*steppe_argv(), "ui", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/ui/runs"
        assert_eventually(
            lambda: opened.exists() and opened.read_text().strip() == url,
            timeout=60,
            message=lambda: (tmp_path / "ui.log").read_text(errors="replace"),
        )
        page = httpx.get(url, timeout=10)
        assert page.status_code == 200
        assert "<h1>Runs</h1>" in page.text
        assert f"Steppe UI on {url}" in (tmp_path / "ui.log").read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


WIDE = 200


def test_a_200_step_run_renders_quickly(cluster: Env, open_api: ApiServer, page: Any) -> None:
    """200 steps in 20 waves of 10 (each needs two of the wave before), then a 200-item for_each:
    the page draws every step, and renders on the server in well under a second."""
    lines = ["name: ui-wide", "steps:"]
    for wave in range(20):
        for i in range(10):
            needs = f", needs: [s{wave - 1}_{i}, s{wave - 1}_{(i + 1) % 10}]" if wave else ""
            lines.append(f"  - {{id: s{wave}_{i}, handler: builtin.noop{needs}}}")
    run_id = cluster.submit("\n".join(lines) + "\n")
    fan_id = cluster.submit(
        "name: ui-fan\nsteps:\n  - id: fan\n    handler: builtin.echo\n"
        f"    for_each: {list(range(WIDE))}\n    with: {{n: '${{{{ item }}}}'}}\n"
    )
    assert finish(cluster, run_id, timeout=120)["status"] == "succeeded"
    assert finish(cluster, fan_id, timeout=120)["status"] == "succeeded"

    page.goto(f"{open_api.url}/ui/runs/{run_id}")
    assert page.locator("svg g.node").count() == WIDE
    assert page.locator('svg g.node[data-status="succeeded"]').count() == WIDE
    timings = {}
    with httpx.Client(base_url=open_api.url, timeout=30) as http:
        for name, rid in (("200 steps", run_id), ("for_each of 200", fan_id)):
            http.get(f"/ui/runs/{rid}").raise_for_status()  # warm: templates compiled, pool connected
            samples = []
            for _ in range(20):
                start = time.perf_counter()
                http.get(f"/ui/runs/{rid}").raise_for_status()
                samples.append(time.perf_counter() - start)
            timings[name] = statistics.median(samples)
    page.goto(f"{open_api.url}/ui/runs")  # by now, runs of every test of this module
    assert page.locator(f'tr[data-run="{fan_id}"]').count() == 1
    screenshot(page, "ui-runs.png")
    print(f"run page render, median of 20 GETs: {', '.join(f'{k}: {v * 1000:.1f} ms' for k, v in timings.items())}")
    assert all(v < 1.0 for v in timings.values()), timings
