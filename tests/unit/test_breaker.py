"""Circuit breakers: the pure state machine, its shared Redis state (fakeredis), and the step runner using it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import fakeredis
import pybreaker
import pytest
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from orchestrator.keys import Keys
from orchestrator.wire import StepMessage
from patterns.breaker import (
    STATE_CLOSED,
    STATE_HALF_OPEN,
    STATE_OPEN,
    BreakerConfig,
    BreakerRegistry,
    BreakerState,
    CircuitOpenError,
    Permit,
    PybreakerStorage,
    SharedBreaker,
    decide_acquire,
    decide_outcome,
    decide_release,
    error_type_names,
)
from workers.registry import HandlerRegistry
from workers.runner import Redactor, StepRunner

KEYS = Keys("t")
CONFIG = BreakerConfig(fail_max=3, reset_timeout=10.0, exclude=frozenset({"ValidationError"}))
BOOM = ["RuntimeError"]


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


class ValidationError(ValueError):
    """A business error the breaker is told to ignore."""


# -- the pure state machine ---------------------------------------------------------------------


def test_consecutive_counted_failures_open_the_breaker_and_a_success_resets_the_count() -> None:
    s = BreakerState()
    for _ in range(2):
        s = decide_outcome(s, CONFIG, 1.0, trial=False, error_types=BOOM)
    assert (s.state, s.fail_counter) == (STATE_CLOSED, 2)
    s = decide_outcome(s, CONFIG, 2.0, trial=False, error_types=None)
    assert s == BreakerState()
    for _ in range(3):
        s = decide_outcome(s, CONFIG, 5.0, trial=False, error_types=BOOM)
    assert (s.state, s.opened_at, s.last_error) == (STATE_OPEN, 5.0, "RuntimeError")


def test_excluded_error_types_do_not_count_and_act_as_successes() -> None:
    s = BreakerState(fail_counter=2)
    s = decide_outcome(s, CONFIG, 1.0, trial=False, error_types=["ValidationError", "ValueError"])
    assert s == BreakerState()
    # A base-class name in `exclude` covers subclasses, as pybreaker's exclude does.
    wide = BreakerConfig(fail_max=1, exclude=frozenset({"ValueError"}))
    after = decide_outcome(BreakerState(), wide, 1.0, trial=False, error_types=error_type_names(ValidationError()))
    assert after == BreakerState()
    assert error_type_names(ValidationError()) == ["ValidationError", "ValueError"]
    assert error_type_names(TimeoutError())[0] == "StepTimeoutError"


def test_open_breaker_refuses_calls_until_reset_timeout_then_admits_exactly_one_trial() -> None:
    s = BreakerState(STATE_OPEN, fail_counter=3, opened_at=100.0)
    refused = decide_acquire(s, CONFIG, 104.0, lease=30.0)
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(6.0)
    trial = decide_acquire(s, CONFIG, 110.0, lease=30.0)
    assert (trial.allowed, trial.trial, trial.state.state, trial.state.trial_until) == (
        True,
        True,
        STATE_HALF_OPEN,
        140,
    )
    second = decide_acquire(trial.state, CONFIG, 111.0, lease=30.0)
    assert not second.allowed
    assert second.retry_after == pytest.approx(29.0)
    # The trial's worker died: once its lease has expired the trial is taken over.
    takeover = decide_acquire(trial.state, CONFIG, 141.0, lease=30.0)
    assert (takeover.allowed, takeover.trial, takeover.state.trial_until) == (True, True, 171.0)


def test_the_trial_decides_success_closes_failure_reopens() -> None:
    half = BreakerState(STATE_HALF_OPEN, fail_counter=3, opened_at=100.0, trial_until=140.0)
    assert decide_outcome(half, CONFIG, 120.0, trial=True, error_types=None) == BreakerState()
    reopened = decide_outcome(half, CONFIG, 120.0, trial=True, error_types=["StepTimeoutError"])
    assert (reopened.state, reopened.opened_at, reopened.trial_until) == (STATE_OPEN, 120.0, 0.0)
    # Late outcomes of calls that started before the breaker opened change nothing.
    assert decide_outcome(half, CONFIG, 120.0, trial=False, error_types=None) == half
    assert decide_outcome(half, CONFIG, 120.0, trial=False, error_types=BOOM) == half
    opened = BreakerState(STATE_OPEN, opened_at=100.0)
    assert decide_outcome(opened, CONFIG, 101.0, trial=False, error_types=BOOM) == opened


def test_a_cancelled_trial_hands_the_trial_back() -> None:
    half = BreakerState(STATE_HALF_OPEN, opened_at=100.0, trial_until=140.0)
    released = decide_release(half, trial=True)
    assert released.trial_until == 0.0
    assert decide_acquire(released, CONFIG, 111.0, lease=30.0).allowed
    assert decide_release(half, trial=False) == half


def test_config_from_a_step_message() -> None:
    assert BreakerConfig.from_message(None) == BreakerConfig()
    config = BreakerConfig.from_message({"fail_max": 2, "reset_timeout": 1.5, "exclude": ["A"]})
    assert config == BreakerConfig(fail_max=2, reset_timeout=1.5, exclude=frozenset({"A"}))


# -- shared state in Redis --------------------------------------------------------------------------


def run(coro_fn: Callable[..., Awaitable[Any]]) -> Any:
    """Run an async test body with two workers' clients on one fake Redis server, closed afterwards."""

    async def main() -> Any:
        server = fakeredis.FakeServer()
        a = fakeredis.FakeAsyncRedis(server=server)
        b = fakeredis.FakeAsyncRedis(server=server)
        try:
            return await coro_fn(server, a, b)
        finally:
            await a.aclose()
            await b.aclose()

    return asyncio.run(main())


def breakers(a: Any, b: Any, clock: Clock, config: BreakerConfig = CONFIG) -> tuple[SharedBreaker, SharedBreaker]:
    return tuple(  # type: ignore[return-value]
        SharedBreaker(name="pay", config=config, client=c, keys=KEYS, clock=clock) for c in (a, b)
    )


def transitions(to: str) -> float:
    return REGISTRY.get_sample_value("steppe_breaker_transitions_total", {"breaker": "pay", "to": to}) or 0.0


def test_failures_on_different_workers_add_up_and_every_worker_then_defers() -> None:
    async def body(server: Any, a: Any, b: Any) -> None:
        clock = Clock()
        wa, wb = breakers(a, b, clock)
        opened_before = transitions(STATE_OPEN)
        with capture_logs() as logs:
            await wa.record(await wa.acquire(lease=5), RuntimeError("down"))
            await wb.record(await wb.acquire(lease=5), RuntimeError("down"))
            await wa.record(await wa.acquire(lease=5), TimeoutError())
        state = await wb.state()
        assert (state.state, state.fail_counter, state.last_error) == (STATE_OPEN, 3, "StepTimeoutError")
        assert [e["event"] for e in logs] == ["circuit_opened"]
        assert logs[0]["breaker"] == "pay"
        assert transitions(STATE_OPEN) == opened_before + 1
        assert REGISTRY.get_sample_value("steppe_breaker_state", {"breaker": "pay"}) == 2
        with pytest.raises(CircuitOpenError) as refused:
            await wb.acquire(lease=5)
        assert isinstance(refused.value, pybreaker.CircuitBreakerError)
        assert refused.value.retry_after == pytest.approx(10.0)
        raw = await a.hgetall(KEYS.breaker("pay"))
        assert raw[b"state"] == b"open"

    run(body)


def test_concurrent_failures_open_the_breaker_once() -> None:
    async def body(server: Any, a: Any, b: Any) -> None:
        clock = Clock()
        wa, wb = breakers(a, b, clock, BreakerConfig(fail_max=2, reset_timeout=10))
        before = transitions(STATE_OPEN)
        permits = [await w.acquire(lease=5) for w in (wa, wb) * 5]
        with capture_logs() as logs:
            await asyncio.gather(*(w.record(p, RuntimeError("x")) for w, p in zip((wa, wb) * 5, permits, strict=True)))
        assert [e["event"] for e in logs] == ["circuit_opened"]
        assert transitions(STATE_OPEN) == before + 1

    run(body)


def test_after_reset_timeout_only_one_worker_gets_the_trial_and_its_success_closes() -> None:
    async def body(server: Any, a: Any, b: Any) -> None:
        clock = Clock()
        wa, wb = breakers(a, b, clock)
        for _ in range(3):
            await wa.record(await wa.acquire(lease=5), RuntimeError("down"))
        clock.now += 10.5
        with capture_logs() as logs:
            outcomes = await asyncio.gather(*(w.acquire(lease=5) for w in (wa, wb) * 4), return_exceptions=True)
            permits = [o for o in outcomes if isinstance(o, Permit)]
            assert len(permits) == 1
            assert permits[0].trial
            assert all(isinstance(o, CircuitOpenError) for o in outcomes if o is not permits[0])
            await wb.record(permits[0], None)
        assert [e["event"] for e in logs] == ["circuit_half_opened", "circuit_closed"]
        assert (await wa.state()) == BreakerState()
        assert await wa.acquire(lease=5) == Permit()

    run(body)


def test_a_failed_trial_opens_the_breaker_for_another_reset_timeout() -> None:
    async def body(server: Any, a: Any, b: Any) -> None:
        clock = Clock()
        wa, _ = breakers(a, b, clock)
        for _ in range(3):
            await wa.record(await wa.acquire(lease=5), RuntimeError("down"))
        clock.now += 11
        trial = await wa.acquire(lease=5)
        await wa.record(trial, RuntimeError("still down"))
        state = await wa.state()
        assert (state.state, state.opened_at) == (STATE_OPEN, clock.now)
        clock.now += 9
        with pytest.raises(CircuitOpenError):
            await wa.acquire(lease=5)

    run(body)


def test_redis_unavailable_lets_calls_through_and_says_so() -> None:
    async def body(server: Any, a: Any, b: Any) -> None:
        wa, _ = breakers(a, b, Clock())
        server.connected = False
        with capture_logs() as logs:
            assert await wa.acquire(lease=5) == Permit()
            await wa.record(Permit(), RuntimeError("down"))
        assert [e["event"] for e in logs] == ["breaker_unavailable", "breaker_unavailable"]
        server.connected = True

    run(body)


def test_without_an_injected_clock_redis_time_is_used() -> None:
    async def body(server: Any, a: Any, b: Any) -> None:
        breaker = SharedBreaker(name="pay", config=BreakerConfig(fail_max=1), client=a, keys=KEYS)
        await breaker.record(Permit(), RuntimeError("down"))
        seconds, _ = await a.time()
        assert abs((await breaker.state()).opened_at - seconds) < 5

    run(body)


def test_pybreaker_with_the_shared_storage_sees_and_makes_the_same_state() -> None:
    async def body(server: Any, a: Any, b: Any) -> None:
        sync = fakeredis.FakeRedis(server=server)
        try:
            cb = pybreaker.CircuitBreaker(
                fail_max=2, reset_timeout=60, state_storage=PybreakerStorage(sync, KEYS, "pay")
            )
            worker, _ = breakers(a, b, Clock(), BreakerConfig(fail_max=2, reset_timeout=60))

            def boom() -> None:
                raise RuntimeError("down")

            for _ in range(2):
                with pytest.raises((RuntimeError, pybreaker.CircuitBreakerError)):
                    cb.call(boom)
            assert cb.current_state == STATE_OPEN
            with pytest.raises(CircuitOpenError):  # pybreaker opened it; the workers defer
                await worker.acquire(lease=5)
        finally:
            sync.close()

    run(body)


# -- the step runner -------------------------------------------------------------------------------


class Downstream:
    """A fake service the handlers call: fails while `down`, counts calls."""

    def __init__(self) -> None:
        self.down = True
        self.calls = 0
        self.error: type[Exception] = RuntimeError

    async def call(self, ctx: Any) -> dict[str, Any]:
        self.calls += 1
        if self.down:
            raise self.error("service unavailable")
        return {"ok": True}

    async def slow(self, ctx: Any) -> dict[str, Any]:
        self.calls += 1
        await asyncio.sleep(1)
        return {}


def message(handler: str = "svc.call", attempt: int = 1, **config: Any) -> StepMessage:
    return StepMessage(
        run="r1",
        step="charge",
        attempt=attempt,
        handler=handler,
        partition=0,
        timeout=0.05,
        breaker="pay",
        breaker_config={"fail_max": 2, "reset_timeout": 10, "exclude": ["ValidationError"], **config},
    )


def run_steps(body: Callable[[StepRunner, Downstream, Clock], Awaitable[None]]) -> None:
    async def main(server: Any, a: Any, b: Any) -> None:
        service = Downstream()
        registry = HandlerRegistry()
        registry.register("svc.call", service.call)
        registry.register("svc.slow", service.slow)
        clock = Clock()
        with ThreadPoolExecutor(max_workers=2) as executor:
            runner = StepRunner(
                registry=registry,
                executor=executor,
                worker_id="w1",
                payload_limit=1 << 20,
                redactor=Redactor(),
                breakers=BreakerRegistry(client=a, keys=KEYS, clock=clock),
            )
            await body(runner, service, clock)

    run(main)


async def attempt(runner: StepRunner, msg: StepMessage) -> Any:
    return await runner.run(msg, on_heartbeat=lambda: None, cancelled=asyncio.Event())


def test_runner_defers_without_calling_the_handler_while_open_and_recovers_after_a_trial() -> None:
    async def body(runner: StepRunner, service: Downstream, clock: Clock) -> None:
        assert (await attempt(runner, message())).status == "failed"
        assert (await attempt(runner, message(attempt=2))).status == "failed"
        assert service.calls == 2
        for n in range(5):
            deferred = await attempt(runner, message(attempt=3 + n))
            assert deferred.status == "deferred"
            assert deferred.error.type == "CircuitOpenError"
            assert "circuit breaker 'pay' is open" in deferred.error.message
        assert service.calls == 2  # calls stop while the breaker is open
        service.down = False
        clock.now += 10
        assert (await attempt(runner, message(attempt=9))).status == "succeeded"
        assert service.calls == 3
        assert (await runner.breakers.get("pay", None).state()).state == STATE_CLOSED  # type: ignore[union-attr]

    run_steps(body)


def test_runner_counts_timeouts_but_not_excluded_errors() -> None:
    async def body(runner: StepRunner, service: Downstream, clock: Clock) -> None:
        service.error = ValidationError
        for n in range(4):
            result = await attempt(runner, message(attempt=n + 1))
            assert (result.status, result.error.type) == ("failed", "ValidationError")
        for n in range(2):
            result = await attempt(runner, message("svc.slow", attempt=10 + n))
            assert (result.status, result.error.type) == ("failed", "StepTimeoutError")
        assert (await attempt(runner, message(attempt=20))).status == "deferred"

    run_steps(body)


def test_steps_without_a_breaker_and_workers_without_breakers_are_not_guarded() -> None:
    async def body(runner: StepRunner, service: Downstream, clock: Clock) -> None:
        unguarded = StepMessage(run="r1", step="s", attempt=1, handler="svc.call", partition=0, timeout=1)
        for n in range(5):
            assert (await attempt(runner, message(attempt=n + 1) if n < 2 else unguarded)).status == "failed"
        runner.breakers = None
        assert (await attempt(runner, message(attempt=9))).status == "failed"
        assert service.calls == 6

    run_steps(body)
