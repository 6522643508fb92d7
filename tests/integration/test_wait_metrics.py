"""The waits' series (orchestrator/wait_metrics.py, docs/spec.md §12.1) from a real in-process coordinator.

A waiting step shows in `steppe_waiting_steps{kind}` and leaves it once its signal, decision or
timer ends the wait; `steppe_signal_latency_seconds{kind}` counts one observation per signal or
decision consumed (an early one included, a duplicate not); a coordinator that loses its partition
stops counting the waits of its runs, and the new owner counts them.
"""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from orchestrator.coordinator import Coordinator
from orchestrator.signals import Signaller
from tests.integration.inprocess import Tier

pytestmark = pytest.mark.integration

# No handler: the coordinator alone drives it. `later` is signalled before `then` waits for it.
WAITS = """
name: waits-metrics
steps:
  - {id: go, wait: {signal: go}}
  - {id: review, approval: {approvers: [alice]}}
  - {id: nap, sleep: 1h}
  - {id: then, needs: [go], wait: {signal: later}}
"""


def waiting(kind: str) -> float | None:
    return REGISTRY.get_sample_value("steppe_waiting_steps", {"kind": kind})


def observed(kind: str) -> float:
    return REGISTRY.get_sample_value("steppe_signal_latency_seconds_count", {"kind": kind}) or 0.0


def consumed(kind: str) -> float:
    return REGISTRY.get_sample_value("steppe_signals_consumed_total", {"kind": kind}) or 0.0


def exported(coord: Coordinator) -> dict[str, float | None]:
    return {kind: waiting(kind) for kind in ("signal", "approval", "sleep")}


def signaller(tier: Tier) -> Signaller:
    return Signaller(settings=tier.settings, store=tier.store, client=tier.redis)


def test_waiting_steps_are_counted_until_their_signal_decision_or_timer_and_each_signal_observed_once(
    tier: Tier,
) -> None:
    coord = tier.coordinator("c-waits")
    run_id = tier.submit(WAITS)
    tier.drive(coord, lambda: exported(coord) == {"signal": 1, "approval": 1, "sleep": 1})
    assert coord.wait_metrics.waiting() == {"signal": 1, "approval": 1, "sleep": 1}
    signals, approvals = observed("signal"), observed("approval")
    consumed_signals = consumed("signal")

    send = signaller(tier)
    send.signal(run_id, "later", {"n": 2})  # early: kept until `then` waits
    tier.drive(coord, lambda: True, steps=3)
    assert observed("signal") == signals  # kept, not consumed: nothing observed yet
    assert waiting("signal") == 1

    send.signal(run_id, "go", {"n": 1}, idempotency_key="go-1")
    assert send.signal(run_id, "go", {"n": 1}, idempotency_key="go-1").duplicate
    # `go` ends its wait; `then` starts waiting and consumes the early `later` at once
    tier.drive(coord, lambda: tier.steps(run_id)["then"][0] == "succeeded")
    assert tier.steps(run_id)["go"][0] == "succeeded"
    assert waiting("signal") == 0
    assert observed("signal") == signals + 2  # one per consumed signal; the duplicate was stored once
    assert consumed("signal") == consumed_signals + 2
    latency = REGISTRY.get_sample_value("steppe_signal_latency_seconds_sum", {"kind": "signal"})
    assert latency is not None
    assert latency >= 0

    send.decide(run_id, "review", approve=True, by="alice")
    tier.drive(coord, lambda: waiting("approval") == 0)
    assert tier.steps(run_id)["review"][0] == "succeeded"
    assert observed("approval") == approvals + 1
    assert waiting("sleep") == 1

    tier.clock.advance(3601)  # the sleep's timer is due
    tier.drive(coord, lambda: tier.status(run_id) == "succeeded")
    assert exported(coord) == {"signal": 0, "approval": 0, "sleep": 0}
    assert coord.wait_metrics.waiting() == {"signal": 0, "approval": 0, "sleep": 0}
    assert observed("signal") == signals + 2  # a timer is no signal
    assert observed("approval") == approvals + 1


def test_a_coordinator_that_loses_its_partition_stops_counting_its_waits_and_the_new_owner_counts_them(
    tier: Tier,
) -> None:
    old = tier.coordinator("c-old")
    run_id = tier.submit(WAITS)
    tier.drive(old, lambda: old.wait_metrics.waiting()["sleep"] == 1)
    assert old.wait_metrics.waiting() == {"signal": 1, "approval": 1, "sleep": 1}

    tier.expire_leases()  # the old one stalled past its TTL; a new one takes the partition over
    new = tier.coordinator("c-new")
    tier.drive(new, lambda: new.wait_metrics.waiting() == {"signal": 1, "approval": 1, "sleep": 1})
    assert exported(new) == {"signal": 1, "approval": 1, "sleep": 1}

    tier.clock.advance(tier.settings.coordinator.lease_ttl)  # the old one's next lease renewal is due
    old.step(block_ms=20)  # it finds the partition taken
    assert old.partitions == []
    assert old.runs == {}
    assert old.wait_metrics.waiting() == {"signal": 0, "approval": 0, "sleep": 0}

    signaller(tier).signal(run_id, "go")
    tier.drive(new, lambda: tier.steps(run_id)["go"][0] == "succeeded")
    assert new.wait_metrics.waiting() == {"signal": 1, "approval": 1, "sleep": 1}  # `then` waits now
