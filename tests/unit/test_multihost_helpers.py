"""Pure helpers of the many-hosts lab: abandoned-lab detection, the wide workflow, log and status parsing."""

from __future__ import annotations

import json
import os
import subprocess

from orchestrator.dev.multihost_demo import HANDLER, applied_hosts, reclaimed_steps, wide_workflow
from orchestrator.dev.netns import PREFIX, stale_labels
from orchestrator.spec import load_workflow


def test_only_labs_whose_owner_is_gone_are_stale() -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    mine = f"{PREFIX}{os.getpid()}-abc123"
    dead = f"{PREFIX}{gone.pid}-def456"
    names = [f"{mine}-sw", f"{mine}-core", f"{dead}-sw", f"{dead}-host1", "other-netns", f"{PREFIX}x-1-sw"]
    assert stale_labels(names) == {dead}


def test_the_wide_workflow_is_valid_and_has_independent_steps() -> None:
    spec = load_workflow(wide_workflow(5, 0.25))
    assert [s.id for s in spec.steps] == ["s0000", "s0001", "s0002", "s0003", "s0004"]
    assert all(s.handler == HANDLER and not s.needs for s in spec.steps)


def test_reclaimed_steps_are_read_from_json_log_lines_of_that_run() -> None:
    lines = [
        json.dumps({"event": "step_reclaimed", "run_id": "r-1", "step": "s0001"}),
        json.dumps({"event": "step_reclaimed", "run_id": "r-2", "step": "s0002"}),
        json.dumps({"event": "step_succeeded", "run_id": "r-1", "step": "s0003"}),
        'not json "step_reclaimed"',
    ]
    assert reclaimed_steps("\n".join(lines), "r-1") == ["s0001"]


def test_applied_hosts_come_from_step_outputs() -> None:
    doc = {"steps": {"a": {"output": {"host": "host1"}}, "b": {"output": {"host": "host2"}}, "c": {"output": None}}}
    assert applied_hosts(doc) == {"a": "host1", "b": "host2", "c": "None"}
