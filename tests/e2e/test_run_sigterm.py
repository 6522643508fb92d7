"""`steppe run` stopped with SIGTERM (a supervisor, `timeout`, `kill`) stops the coordinator and workers it
started, as Ctrl-C does; before, Python's default SIGTERM action killed it and left them running."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import Env
from tests.e2e.test_wait_examples import WEBHOOK, SteppeRun
from tests.e2e.test_waits import wait_for_step
from tests.helpers import assert_eventually

pytestmark = pytest.mark.e2e


def test_sigterm_stops_the_processes_steppe_run_started(e2e: Env) -> None:
    run = SteppeRun(e2e, WEBHOOK)  # waits 10 minutes for a payment signal nobody sends
    try:
        wait_for_step(e2e, run.run_id(), "payment", timeout=60)
        children = subprocess.run(["pgrep", "-P", str(run.proc.pid)], capture_output=True, text=True, check=False)
        pids = children.stdout.split()
        assert len(pids) == 2, children  # its coordinator and its worker
        run.proc.send_signal(signal.SIGTERM)
        run.proc.communicate(timeout=60)
        assert run.proc.returncode == 128 + signal.SIGTERM
        assert_eventually(
            lambda: not [pid for pid in pids if Path(f"/proc/{pid}").exists() and not zombie(pid)],
            timeout=30,
            message=lambda: f"still running after SIGTERM of steppe run: {pids}",
        )
    finally:
        run.stop()


def zombie(pid: str) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except (OSError, IndexError):
        return True
