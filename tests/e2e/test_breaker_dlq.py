"""Circuit breakers, dead letters and secret redaction on a real cluster (coordinator + worker subprocesses)."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from orchestrator.dev.cluster import steppe_argv
from orchestrator.keys import Keys
from tests.e2e.conftest import Env
from tests.helpers import assert_eventually

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

IMPORTS = ["tests.e2e.handlers", "tests.e2e.breaker_handlers"]
TERMINAL = {"succeeded", "failed", "cancelled", "compensated", "compensation_failed"}
SECRET_NAME = "E2E_API_TOKEN"

BREAKER_FLOW = """
name: breaker-flow
inputs:
  n: {type: integer, required: true}
breakers:
  downstream: {fail_max: 3, reset_timeout: 2s}
steps:
  - id: call
    handler: test.downstream
    circuit_breaker: downstream
    retry: {max_attempts: 5, backoff: fixed, initial_delay: 200ms, jitter: false}
    with: {value: "${{ inputs.n }}"}
"""

POISON_FLOW = """
name: poison
steps:
  - id: prepare
    handler: builtin.echo
    with: {ready: true}
  - id: crash
    handler: test.crash_if
    needs: [prepare]
    with: {crash: true, token: "${{ secrets.E2E_API_TOKEN }}"}
"""

LEAKY_FLOW = """
name: leaky
steps:
  - id: fails
    handler: test.leaky
    with: {token: "${{ secrets.E2E_API_TOKEN }}"}
    retry: {max_attempts: 2, backoff: fixed, initial_delay: 100ms, jitter: false}
  - id: echoes
    handler: test.leaky
    with: {token: "${{ secrets.E2E_API_TOKEN }}", fail: false}
"""


def start(e2e: Env, *, workers: int, secret: str | None = None) -> None:
    if secret is not None:
        e2e.cluster.env[SECRET_NAME] = secret  # only the workers' environment knows the value
        e2e.cluster.env["STEPPE_SECRETS"] = SECRET_NAME  # and they expose only what they are told to
    e2e.cluster.start_coordinator()
    for _ in range(workers):
        e2e.cluster.start_worker(queues=["default"], imports=IMPORTS)
    e2e.cluster.wait_for_workers(e2e.redis, workers)


def finish(e2e: Env, run_id: str, timeout: float = 30.0) -> dict[str, Any]:
    return assert_eventually(
        lambda: (doc := e2e.run(run_id))["status"] in TERMINAL and doc,
        timeout=timeout,
        message=lambda: f"run {run_id} did not finish; cluster log:\n{e2e.log()}",
    )


def steppe(e2e: Env, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real `steppe` CLI against this test's cluster."""
    return subprocess.run(
        [*steppe_argv(), *args],
        env={**e2e.env, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def steppe_json(e2e: Env, *args: str) -> Any:
    done = steppe(e2e, *args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def assert_secret_nowhere(e2e: Env, secret: str) -> None:
    """The secret is in none of: the cluster log, the event log, step rows, dead letters, the DLQ stream."""
    log = (e2e.home / "cluster.log").read_text(errors="replace")
    assert secret not in log
    with e2e.store.connection() as conn:
        for table in ("workflow_events", "workflow_steps", "workflow_runs", "dead_letters"):
            rows = conn.execute(f"SELECT * FROM {table}").fetchall()
            assert secret not in json.dumps(rows, default=str), table
    entries = e2e.redis.xrange(Keys(e2e.settings.namespace).dlq_stream)
    assert secret.encode() not in repr(entries).encode()


def test_breaker_opens_stops_calls_defers_without_burning_attempts_and_recovers(e2e: Env) -> None:
    ns = e2e.settings.namespace
    outage = f"witness:{ns}:outage"  # `outage_key()` as the workers see it
    breaker_key = Keys(ns).breaker("downstream")
    e2e.redis.set(outage, 1)
    start(e2e, workers=2)
    runs = [e2e.submit(BREAKER_FLOW, {"n": n}) for n in range(6)]

    assert_eventually(
        lambda: e2e.redis.hget(breaker_key, "state") == b"open",
        timeout=20,
        message=lambda: f"the breaker never opened; cluster log:\n{e2e.log()}",
    )
    opened_calls = e2e.witness("downstream")["calls"]
    time.sleep(5)  # the outage goes on; the breaker lets one trial through every reset_timeout (2s)
    during = e2e.witness("downstream")["calls"] - opened_calls
    assert during <= 3, f"{during} calls reached the service while its breaker was open"
    assert all(e2e.run(r)["status"] == "running" for r in runs)

    e2e.redis.delete(outage)
    docs = [finish(e2e, r, timeout=30) for r in runs]
    assert [d["status"] for d in docs] == ["succeeded"] * 6
    assert e2e.redis.hget(breaker_key, "state") == b"closed"

    calls = e2e.witness("downstream")
    steps = [d["steps"]["call"] for d in docs]
    # Only calls that reached the service and failed burn attempts; deferrals do not.
    assert sum(s["detail"].get("failures", 0) for s in steps) == calls["failed"]
    assert max(s["attempts"] for s in steps) > 5, "no step was deferred more often than max_attempts"
    history = e2e.queries.events(runs[0])
    deferrals = [e for e in history if e["type"] == "step.retry_scheduled" and e["data"].get("counts") is False]
    assert deferrals
    assert deferrals[0]["data"]["error"]["type"] == "CircuitOpenError"
    log = (e2e.home / "cluster.log").read_text(errors="replace")
    for event in ("circuit_opened", "circuit_half_opened", "circuit_closed"):
        assert event in log, event


def test_poison_messages_are_dead_lettered_listed_shown_replayed_and_purged(e2e: Env, tmp_path: Path) -> None:
    secret = f"s3cret-{uuid.uuid4().hex}"
    keys = Keys(e2e.settings.namespace)
    start(e2e, workers=1, secret=secret)
    garbage_id = e2e.redis.xadd(keys.queue_stream("default"), {"m": b"\x00not a step message"}).decode()
    run_id = e2e.submit(POISON_FLOW)

    # test.crash_if kills every worker that takes the step; keep one alive until the entry is dead-lettered.
    def dead_lettered() -> bool:
        for proc in list(e2e.cluster.workers):
            if proc.poll() is not None:
                e2e.cluster.workers.remove(proc)
                e2e.cluster.start_worker(queues=["default"], imports=IMPORTS)
        return e2e.run(run_id)["status"] == "failed"

    assert_eventually(dead_lettered, timeout=90, interval=0.2, message=e2e.log)
    doc = e2e.run(run_id)
    assert doc["steps"]["crash"]["status"] == "dead_lettered"
    assert doc["steps"]["crash"]["error"]["type"] == "MaxDeliveriesExceeded"

    listed = steppe_json(e2e, "dlq", "list")
    by_reason = {r["reason"]: r for r in listed}
    assert set(by_reason) == {"UndecodableMessage", "MaxDeliveriesExceeded"}
    garbage, poison = by_reason["UndecodableMessage"], by_reason["MaxDeliveriesExceeded"]
    assert (garbage["run_id"], garbage["stream_id"], garbage["delivery_count"]) == (None, garbage_id, 1)
    assert (poison["run_id"], poison["step_key"], poison["delivery_count"]) == (run_id, "crash", 4)
    assert "delivered 4 times" in poison["error"]
    assert steppe_json(e2e, "dlq", "list", "--run", run_id) == [poison]
    table = steppe(e2e, "dlq", "list", env={"COLUMNS": "250"})
    assert table.returncode == 0
    assert "MaxDeliveriesExceeded" in table.stdout
    assert f"crash #{poison['attempt']}" in table.stdout

    shown = steppe_json(e2e, "dlq", "show", str(poison["dead_letter_id"]))
    assert shown["stream_id"] == poison["stream_id"]
    assert shown["payload"]["handler"] == "test.crash_if"
    assert shown["payload"]["args"] == {"crash": True, "token": "${{ secrets.E2E_API_TOKEN }}"}
    assert steppe_json(e2e, "dlq", "show", str(garbage["dead_letter_id"]))["raw"].startswith("\\x00not a step")
    assert_secret_nowhere(e2e, secret)

    missing = steppe(e2e, "dlq", "show", "987654")
    assert missing.returncode == 2
    assert "steppe dlq list" in missing.stderr
    orphan = steppe(e2e, "dlq", "replay", str(garbage["dead_letter_id"]))
    assert orphan.returncode == 2
    assert "belongs to no run" in orphan.stderr
    not_an_object = tmp_path / "args.json"
    not_an_object.write_text("[1, 2]")
    refused = steppe(e2e, "dlq", "replay", str(poison["dead_letter_id"]), "--payload-file", str(not_an_object))
    assert refused.returncode == 2
    assert "JSON object" in refused.stderr

    replayed = steppe(
        e2e, "dlq", "replay", str(poison["dead_letter_id"]), "--edit", env={"EDITOR": "sed -i -e s/true/false/"}
    )
    assert replayed.returncode == 0, replayed.stderr
    doc = assert_eventually(
        lambda: (d := e2e.run(run_id))["status"] == "succeeded" and d,
        timeout=30,
        message=lambda: f"the replayed run did not succeed; cluster log:\n{e2e.log()}",
    )
    assert doc["steps"]["crash"]["output"] == {"replayed": True, "token_length": len(secret)}
    assert doc["steps"]["prepare"]["attempts"] == 1  # kept from before the replay, not run again
    resets = [e for e in e2e.queries.events(run_id) if e["type"] == "step.reset" and e["step_key"] == "crash"]
    assert resets[0]["data"]["args"] == {"crash": False, "token": "${{ secrets.E2E_API_TOKEN }}"}
    assert steppe_json(e2e, "dlq", "list", "--run", run_id)[0]["status"] == "replayed"

    purged = steppe(e2e, "dlq", "purge", "--older-than", "0s", "--yes")
    assert purged.returncode == 0, purged.stderr
    assert steppe_json(e2e, "dlq", "list") == []
    assert e2e.redis.xlen(keys.dlq_stream) == 0


def test_secrets_from_the_worker_environment_never_leave_the_worker(e2e: Env) -> None:
    secret = f"s3cret-{uuid.uuid4().hex}"
    start(e2e, workers=1, secret=secret)
    run_id = e2e.submit(LEAKY_FLOW)
    doc = finish(e2e, run_id)
    assert doc["status"] == "failed"
    failed = doc["steps"]["fails"]
    assert failed["attempts"] == 2
    assert failed["error"]["message"] == "upstream refused token ***"
    assert "inner failure" not in failed["error"]["traceback"]
    assert "upstream refused token ***" in failed["error"]["traceback"]
    assert doc["steps"]["echoes"]["output"] == {"echo": "***", "header": "Bearer ***"}
    log = (e2e.home / "cluster.log").read_text(errors="replace")
    assert "leaky_called" in log
    assert "leaky_inner_failed" in log
    assert_secret_nowhere(e2e, secret)
