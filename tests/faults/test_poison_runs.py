"""Poison runs (issue 14): whatever one run holds, the coordinator stays up and serves every other run.

One test per poison class, each with innocent runs submitted alongside (I1 to I5 checked for
them) and the poisoned run ending `failed` with a reason a user can act on:

- a retry delay PostgreSQL cannot store, written past validation (a stored definition from
  before the bound): the run is failed because its definition no longer loads;
- NUL, or an unpaired surrogate, in a handler's error message: escaped on the wire, so the
  retry and the failure are stored and readable;
- an output PostgreSQL/the JSON encoder refuses (an integer beyond 64 bits, nesting deeper
  than 254 levels): the batch is split, the innocent runs commit, the run is failed
  (the second line of defence, orchestrator/quarantine.py).
"""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.errors import SpecValidationError
from tests.faults.harness import FaultEnv, ledger_chain
from tests.faults.invariants import (
    check_applied_once,
    check_dead_letters,
    check_effectively_once,
    check_event_logs,
    check_nothing_stranded,
    report,
    wait_terminal,
)

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.slow]

INNOCENT = ledger_chain("innocent", 3, 0.1)
HUGE = "99999999999d"


def poison_yaml(kind: str, *, delay: str = "100ms") -> str:
    return f"""
name: poison-{kind}
steps:
  - {{id: before, handler: test.ledger}}
  - id: bad
    handler: test.unstorable
    with: {{kind: {kind}}}
    needs: [before]
    retry: {{max_attempts: 2, initial_delay: {delay}, max_delay: {delay}, jitter: false}}
  - {{id: after, handler: test.ledger, needs: [bad]}}
"""


def run_beside_innocents(faults: FaultEnv, submit_poison: Any) -> dict[str, Any]:
    """Start a cluster, submit innocent runs around the poisoned one, check I1 to I5 for all of them
    and that the one coordinator never exited; returns the poisoned run's status document."""
    faults.start(workers=1, concurrency=4)
    coordinator = faults.cluster.coordinators[0]
    innocent = [faults.submit(INNOCENT)]
    poison = submit_poison()
    innocent.append(faults.submit(INNOCENT))
    docs = wait_terminal(faults, [poison, *innocent], deadline=60)
    innocent.append(faults.submit(INNOCENT))  # still serving after the poisoned run ended
    docs |= wait_terminal(faults, innocent[-1:], deadline=30)

    assert coordinator.poll() is None, f"the coordinator exited; log tail:\n{faults.log_text()[-4000:]}"
    assert len(faults.cluster.coordinators) == 1
    assert {docs[r]["status"] for r in innocent} == {"succeeded"}, {r: docs[r]["status"] for r in innocent}
    doc = docs[poison]
    assert doc["status"] == "failed", doc
    ran_before = doc["steps"].get("before", {}).get("status") == "succeeded"
    keys = [f"{r}/s{i}" for r in innocent for i in range(3)] + ([f"{poison}/before"] if ran_before else [])
    check_effectively_once(faults, keys, injected=0)
    check_applied_once(faults, [poison, *innocent])
    check_event_logs(faults, [poison, *innocent])
    check_nothing_stranded(faults)
    check_dead_letters(faults, [])
    return doc


def quarantined(faults: FaultEnv, run_id: str) -> list[dict[str, Any]]:
    return [e for e in faults.log_events("run_quarantined") if e.get("run_id") == run_id]


def test_a_retry_delay_postgres_cannot_store_fails_only_its_run(
    faults: FaultEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Refused where it enters: submit, `steppe validate` and the API share this validation.
    with pytest.raises(SpecValidationError, match=rf"retry.initial_delay: {HUGE} is longer than the maximum"):
        faults.submit(poison_yaml("nul_error", delay=HUGE))

    # Written past validation, as by a release without the bound: the coordinator must not die on it.
    submit_definition = faults.submitter.definition

    def unbounded(*args: Any, **kwargs: Any) -> dict[str, Any]:
        definition = submit_definition(*args, **kwargs)
        for step in definition["steps"]:
            if step["id"] == "bad":  # the innocent runs are submitted as they are
                step["retry"] = {
                    **step["retry"],
                    "initial_delay": 99999999999 * 86400.0,
                    "max_delay": 99999999999 * 86400.0,
                }
        return definition

    monkeypatch.setattr(faults.submitter, "definition", unbounded)
    doc = run_beside_innocents(
        faults, lambda: faults.submit(poison_yaml("nul_error", delay="1s"), check_handlers=False)
    )
    error = doc["error"]
    assert error["type"] == "DefinitionError", error
    assert "cannot load this run's stored definition" in error["message"]
    assert "retry.initial_delay" in error["message"]
    assert "is longer than the maximum of 100 years (36500d): use a shorter delay" in error["message"]
    assert [e["type"] for e in faults.queries.events(doc["run_id"])] == ["run.submitted", "run.failed"]
    assert len(quarantined(faults, doc["run_id"])) == 1
    report("poison-huge-delay", status=doc["status"], error_type=error["type"])


@pytest.mark.parametrize(
    ("kind", "stored"),
    [("nul_error", "bad\\u0000byte"), ("surrogate_error", "lone \\ud800 surrogate")],
)
def test_unstorable_text_in_a_handler_error_is_escaped_and_stored(faults: FaultEnv, kind: str, stored: str) -> None:
    doc = run_beside_innocents(faults, lambda: faults.submit(poison_yaml(kind)))
    bad = doc["steps"]["bad"]
    assert bad["status"] == "failed"
    assert bad["attempts"] == 2  # the retry was scheduled and stored with the same error
    assert bad["error"]["type"] == "RuntimeError"
    assert bad["error"]["message"] == stored
    assert stored in bad["error"]["traceback"]
    assert doc["error"]["message"] == stored
    assert doc["steps"]["after"]["status"] == "cancelled"
    assert faults.witness("calls")[f"{doc['run_id']}/bad"] == 2
    assert not faults.log_events("batch_refused")  # the first line sufficed
    report(f"poison-{kind}", status=doc["status"], attempts=bad["attempts"])


@pytest.mark.parametrize(
    ("kind", "hint"), [("big_int", "an integer beyond 64 bits"), ("deep", "nesting deeper than 254 levels")]
)
def test_an_output_postgres_cannot_store_fails_its_run_and_the_batch_commits(
    faults: FaultEnv, kind: str, hint: str
) -> None:
    doc = run_beside_innocents(faults, lambda: faults.submit(poison_yaml(kind)))
    error = doc["error"]
    assert error["type"] == "RunDataError", error
    assert error["cause"] == "JSONEncodeError"
    assert "could not store this run's changes (steps: bad)" in error["message"]
    assert hint in error["message"]
    assert error["retryable"] is False
    events = faults.queries.events(doc["run_id"])
    assert events[-1]["type"] == "run.failed"
    assert events[-1]["data"]["error"] == error
    # Failed once, never retried in a loop: one call, one quarantine.
    assert faults.witness("calls")[f"{doc['run_id']}/bad"] == 1
    assert len(quarantined(faults, doc["run_id"])) == 1
    assert doc["steps"]["bad"]["status"] == "cancelled"  # not left in flight; the run says why
    report(f"poison-{kind}", status=doc["status"], batches_refused=len(faults.log_events("batch_refused")))
