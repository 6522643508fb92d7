"""examples/approval.yaml and examples/webhook.yaml run as docs/waits.md shows: `steppe run FILE` in one
process (its own coordinator and workers, on this test's Redis and PostgreSQL) waits, and `steppe approve`,
`steppe reject` or `steppe signal` in another decides; the side effects are files the handlers write."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Env
from tests.e2e.test_execution import assert_projection_matches_log
from tests.e2e.test_waits import cli, wait_for_step
from tests.helpers import assert_eventually

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
APPROVAL = ROOT / "examples" / "approval.yaml"
WEBHOOK = ROOT / "examples" / "webhook.yaml"


class SteppeRun:
    """`steppe run FILE --import examples.wait_handlers ARGS…` started from the repository root (terminal 1)."""

    def __init__(self, e2e: Env, file: Path, *args: str) -> None:
        self.e2e = e2e
        argv = [sys.executable, "-m", "orchestrator.cli.main", "run", str(file), "--import", "examples.wait_handlers"]
        self.proc = subprocess.Popen(
            [*argv, "--workers", "1", "--timeout", "120", *args],
            cwd=ROOT,
            env={**e2e.env, "COLUMNS": "200"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.output = ""

    def run_id(self) -> str:
        """The run it submitted (the only run of this test's database)."""

        def submitted() -> str:
            assert self.proc.poll() is None, f"steppe run exited early:\n{self.finish()}"
            with self.e2e.store.connection() as conn:
                rows = conn.execute("SELECT run_id FROM workflow_runs").fetchall()
            assert len(rows) <= 1, rows
            return str(rows[0]["run_id"]) if rows else ""

        return assert_eventually(submitted, timeout=60, interval=0.2, message=self.e2e.log)

    def finish(self) -> str:
        """Its whole output once it exits (after it printed the result)."""
        if self.proc.returncode is None:
            self.output, _ = self.proc.communicate(timeout=150)
        return self.output

    def stop(self) -> None:
        """Ctrl-C, as in a terminal: `steppe run` then stops the coordinator and workers it started
        (SIGTERM would kill it without that, leaving them running)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.communicate(timeout=10)


Start = Callable[..., SteppeRun]


@pytest.fixture
def steppe_run(e2e: Env) -> Iterator[Start]:
    started: list[SteppeRun] = []

    def start(file: Path, *args: str) -> SteppeRun:
        started.append(SteppeRun(e2e, file, *args))
        return started[-1]

    yield start
    for run in started:
        run.stop()


def with_timeout(tmp_path: Path, example: Path, old: str, new: str) -> Path:
    """A copy of `example` with a short timeout, as docs/waits.md shows with `sed`."""
    text = example.read_text()
    assert text.count(old) == 1, f"{example.name} no longer has exactly one {old!r}"
    copy = tmp_path / example.name.replace(".yaml", "-short.yaml")
    copy.write_text(text.replace(old, new))
    return copy


def dirs(tmp_path: Path) -> tuple[Path, Path, list[str]]:
    drafts, published = tmp_path / "drafts", tmp_path / "published"
    return drafts, published, ["--input", f"drafts_dir={drafts}", "--input", f"published_dir={published}"]


def test_both_examples_validate_and_plan() -> None:
    for example, waits in ((APPROVAL, "review ⏸ approval"), (WEBHOOK, "payment ⏸ signal")):
        for command in ("validate", "plan"):
            done = subprocess.run(
                [sys.executable, "-m", "orchestrator.cli.main", command, str(example)],
                env={**os.environ, "COLUMNS": "200"},
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert done.returncode == 0, done.stdout + done.stderr
            if command == "plan":
                assert waits in done.stdout, done.stdout


def test_approved_draft_is_published(e2e: Env, steppe_run: Start, tmp_path: Path) -> None:
    drafts, published, inputs = dirs(tmp_path)
    run = steppe_run(APPROVAL, "--input", "topic=dark mode", *inputs)
    run_id = run.run_id()
    wait_for_step(e2e, run_id, "review", timeout=60)
    draft = drafts / f"{run_id}.md"
    assert draft.read_text().startswith("# Dark mode: what changes for every team\n")
    refused = cli(e2e, "approve", run_id, "review", "--by", "mallory")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    approved = cli(e2e, "approve", run_id, "review", "--by", "alice", "--comment", "ship it")
    assert approved.returncode == 0, approved.stdout + approved.stderr
    assert f"approval of step review of {run_id} accepted" in approved.stdout
    output = run.finish()
    assert run.proc.returncode == 0, output
    assert f"run {run_id} finished: succeeded" in output
    doc = e2e.run(run_id)
    assert doc["steps"]["review"]["output"]["by"] == "alice"
    assert doc["steps"]["publish"]["output"] == {"published": str(published / f"{run_id}.md"), "approved_by": "alice"}
    assert not draft.exists()
    assert (published / f"{run_id}.md").read_text().endswith("_Approved by alice._\n")
    assert_projection_matches_log(e2e, run_id)


def test_rejected_draft_is_deleted_by_the_compensation(e2e: Env, steppe_run: Start, tmp_path: Path) -> None:
    drafts, published, inputs = dirs(tmp_path)
    run = steppe_run(APPROVAL, *inputs)
    run_id = run.run_id()
    wait_for_step(e2e, run_id, "review", timeout=60)
    draft = drafts / f"{run_id}.md"
    assert draft.exists()
    rejected = cli(e2e, "reject", run_id, "review", "--by", "bob", "--comment", "too vague")
    assert rejected.returncode == 0, rejected.stdout + rejected.stderr
    output = run.finish()
    assert run.proc.returncode == 1, output
    assert f"run {run_id} finished: compensated" in output
    assert "ApprovalRejected: rejected by bob: too vague" in output
    doc = e2e.run(run_id)
    assert doc["status"] == "compensated"
    assert doc["steps"]["draft:compensate"]["output"] == {"deleted": str(draft), "existed": True}
    assert doc["steps"]["publish"]["status"] == "cancelled"
    assert not draft.exists()
    assert not published.exists()
    assert_projection_matches_log(e2e, run_id)


def test_an_approval_nobody_gives_times_out_and_the_draft_is_deleted(
    e2e: Env, steppe_run: Start, tmp_path: Path
) -> None:
    drafts, _, inputs = dirs(tmp_path)
    run = steppe_run(with_timeout(tmp_path, APPROVAL, "timeout: 24h", "timeout: 3s"), *inputs)
    run_id = run.run_id()
    wait_for_step(e2e, run_id, "review", timeout=60)
    assert (drafts / f"{run_id}.md").exists()
    output = run.finish()
    assert run.proc.returncode == 1, output
    doc = e2e.run(run_id)
    assert doc["status"] == "compensated", doc
    assert doc["steps"]["review"]["error"]["type"] == "ApprovalTimeout"
    assert doc["steps"]["draft:compensate"]["output"]["existed"] is True
    assert not (drafts / f"{run_id}.md").exists()


def test_the_payment_signal_ships_the_order(e2e: Env, steppe_run: Start) -> None:
    run = steppe_run(WEBHOOK, "--input", "order=A-2001")
    run_id = run.run_id()
    wait_for_step(e2e, run_id, "payment", timeout=60)
    payload = '{"amount": 49.5, "reference": "PSP-9902"}'
    for _ in range(2):  # a webhook delivered twice: the idempotency key accepts it once
        sent = cli(e2e, "signal", run_id, "payment-webhook", "--data", payload, "--idempotency-key", "PSP-9902")
        assert sent.returncode in (0, 1), sent.stdout + sent.stderr  # 1 once the run has finished
    output = run.finish()
    assert run.proc.returncode == 0, output
    assert f"run {run_id} finished: succeeded" in output
    doc = e2e.run(run_id)
    assert doc["steps"]["payment"]["output"] == {"amount": 49.5, "reference": "PSP-9902"}
    assert doc["steps"]["ship"]["output"] == {
        "order": "A-2001",
        "paid": 49.5,
        "reference": "PSP-9902",
        "shipment": "SHIP-A-2001",
    }
    assert_projection_matches_log(e2e, run_id)


def test_no_payment_signal_times_out_and_releases_the_stock(e2e: Env, steppe_run: Start, tmp_path: Path) -> None:
    run = steppe_run(with_timeout(tmp_path, WEBHOOK, "timeout: 10m", "timeout: 3s"), "--input", "order=A-2002")
    run_id = run.run_id()
    wait_for_step(e2e, run_id, "payment", timeout=60)
    output = run.finish()
    assert run.proc.returncode == 1, output
    assert "WaitTimeout: no signal 'payment-webhook' within 3s" in output
    doc = e2e.run(run_id)
    assert doc["status"] == "compensated", doc
    assert doc["steps"]["payment"]["error"] == {
        "type": "WaitTimeout",
        "message": "no signal 'payment-webhook' within 3s",
        "retryable": False,
    }
    assert doc["steps"]["reserve:compensate"]["output"] == {"released": "RES-A-2002"}
    assert doc["steps"]["ship"]["status"] == "cancelled"
    late = cli(e2e, "signal", run_id, "payment-webhook", "--data", '{"amount": 49.5, "reference": "PSP-LATE"}')
    assert late.returncode == 1, late.stdout + late.stderr  # the run is finished
    assert_projection_matches_log(e2e, run_id)
