"""Downstream outage behind a circuit breaker (docs/reliability.md 14)."""

from __future__ import annotations

import time

import pytest

from tests.faults.harness import FaultEnv
from tests.faults.invariants import (
    check_applied_once,
    check_dead_letters,
    check_event_logs,
    check_nothing_stranded,
    report,
    wait_terminal,
)
from tests.helpers import assert_eventually

pytestmark = [pytest.mark.faults, pytest.mark.integration]

IMPORTS = ["tests.e2e.handlers", "tests.e2e.breaker_handlers"]  # test.downstream lives in the latter
# Attempts that really reach the failing service (the burst before the breaker opens, a call
# that raced the open state on a loaded machine, half-open trials) legitimately burn attempts;
# enough are allowed that only deferrals burning attempts could fail a run during the outage.
FAIL_MAX, RESET_S, MAX_ATTEMPTS = 3, 2.0, 6

FLOW = f"""
name: behind-a-breaker
inputs:
  n: {{type: integer, required: true}}
breakers:
  payments-api: {{fail_max: {FAIL_MAX}, reset_timeout: {RESET_S:g}s}}
steps:
  - id: charge
    handler: test.downstream
    circuit_breaker: payments-api
    retry: {{max_attempts: {MAX_ATTEMPTS}, backoff: fixed, initial_delay: 200ms, jitter: false}}
    with: {{value: "${{{{ inputs.n }}}}"}}
"""


def test_14_breaker_opens_stops_calls_defers_and_all_finish_after_recovery(faults: FaultEnv) -> None:
    breaker = faults.keys.breaker("payments-api")
    faults.set_flag("outage", True)
    faults.start(workers=2, imports=IMPORTS)
    started = time.monotonic()
    runs = [faults.submit(FLOW, {"n": n}) for n in range(8)]
    assert_eventually(lambda: faults.redis.hget(breaker, "state") == b"open", timeout=20, message=faults.log_text)
    opened_s = time.monotonic() - started
    calls_at_open = faults.witness("downstream").get("calls", 0)
    outage_s = 3 * RESET_S + 0.5
    time.sleep(outage_s)
    calls_while_open = faults.witness("downstream").get("calls", 0) - calls_at_open
    assert calls_while_open <= outage_s / RESET_S + 1, f"{calls_while_open} calls went through an open breaker"
    assert {faults.queries.run_status(r) for r in runs} == {"running"}, "a deferred step burned its attempts"

    faults.set_flag("outage", False)
    recovered = time.monotonic()
    docs = wait_terminal(faults, runs, deadline=30)
    recovery_s = time.monotonic() - recovered

    assert {d["status"] for d in docs.values()} == {"succeeded"}
    assert faults.redis.hget(breaker, "state") == b"closed"
    calls = faults.witness("downstream")
    steps = [d["steps"]["charge"] for d in docs.values()]
    failures = [s["detail"].get("failures", 0) for s in steps]
    assert max(failures) < MAX_ATTEMPTS
    assert sum(failures) == calls["failed"], "only calls that reached the service may burn an attempt"
    deferrals = sum(
        1
        for r in runs
        for e in faults.queries.events(r)
        if e["type"] == "step.retry_scheduled" and e["data"].get("counts") is False
    )
    assert deferrals >= len(runs)
    for event in ("circuit_opened", "circuit_half_opened", "circuit_closed"):
        assert faults.log_events(event), event
    check_applied_once(faults, runs)
    check_event_logs(faults, runs)
    check_nothing_stranded(faults)
    check_dead_letters(faults, [])
    report(
        "14-circuit-breaker",
        opened_after_s=opened_s,
        calls_before_open=calls_at_open,
        calls_while_open=calls_while_open,
        open_for_s=outage_s,
        deferrals=deferrals,
        max_failures_per_step=max(failures),
        recovery_s=recovery_s,
    )
