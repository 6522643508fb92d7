"""Bad input to the CLI is exit 2 with a one-line message saying what to change, never a traceback."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import Env
from tests.e2e.test_api import HELLO
from tests.e2e.test_breaker_dlq import steppe

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

NUL_VALUE = 'name: nul\nsteps:\n  - id: a\n    handler: builtin.echo\n    with: {text: "a\\0b"}\n'


def refused(done: subprocess.CompletedProcess[str], *words: str) -> list[str]:
    """Exit 2, no traceback, and an error line holding `words`; returns the error lines."""
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("error")]
    assert lines, done.stderr
    assert all(word in lines[0] for word in words), done.stderr
    return lines


def test_nul_in_a_yaml_value_is_exit_2_at_its_position(e2e: Env, tmp_path: Path) -> None:
    path = tmp_path / "nul.yaml"
    path.write_text(NUL_VALUE)
    refused(steppe(e2e, "validate", str(path)), f"{path}:5:18:", "holds a NUL character: remove it")
    refused(steppe(e2e, "submit", str(path), "--no-handler-check"), f"{path}:5:18:", "NUL")


def test_nul_and_deep_inputs_are_exit_2(e2e: Env, tmp_path: Path) -> None:
    flow = tmp_path / "hello.yaml"
    flow.write_text(HELLO)
    submit = ("submit", str(flow), "--no-handler-check")
    [line] = refused(steppe(e2e, *submit, "--input", 'who="a\\u0000b"'), "input who holds a NUL character")
    assert line.startswith("error: inputs of workflow 'api-hello' are not valid")
    deep = "[" * 5000 + "]" * 5000
    refused(steppe(e2e, *submit, "--input", f"who={deep}"), "--input who nests deeper than 100 levels")

    nul_file = tmp_path / "nul.json"
    nul_file.write_text(json.dumps({"who": "x\u0000"}))
    refused(steppe(e2e, *submit, "--inputs-file", str(nul_file)), "NUL character")
    deep_file = tmp_path / "deep.json"
    deep_file.write_text('{"who": ' + "[" * 100_000 + "]" * 100_000 + "}")
    refused(steppe(e2e, *submit, "--inputs-file", str(deep_file)), str(deep_file), "nest too deeply")
    assert e2e.queries.list_runs(limit=10) == []  # nothing was written


def test_unknown_hook_handlers_are_exit_2(e2e: Env, tmp_path: Path) -> None:
    e2e.start_worker()
    e2e.cluster.wait_for_workers(e2e.redis, 1)
    flow = tmp_path / "hooked.yaml"
    flow.write_text(HELLO + "hooks:\n  - on: run.finished\n    handler: ops.nowhere\n")
    refused(steppe(e2e, "submit", str(flow), "--input", "who=x"), "unknown handler(s): ops.nowhere")
