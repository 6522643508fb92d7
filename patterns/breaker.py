"""Circuit breakers shared by every worker: pybreaker's state model in one Redis hash, changed atomically.

A step with `circuit_breaker: NAME` is guarded by the breaker NAME. `fail_max` consecutive
counted failures open it; while it is open the worker does not call the handler and reports
the attempt as *deferred* (the coordinator offers it again later without burning a retry);
`reset_timeout` after opening it half-opens and lets exactly one trial call through; the
trial's success closes it, its failure opens it again. While open or half-open only the
trial's outcome changes the state. Timeouts count as failures. An error whose type (or a
base class) is named in `exclude` does not count: as with pybreaker's excluded exceptions,
it proves that the service answered, so it counts as a success.

Why not `pybreaker.CircuitBreaker` with `CircuitRedisStorage` as they are: that storage is
synchronous (each decision would block the worker's event loop or hold a thread for the
length of the call), spreads a breaker over several keys, decides read-then-write (two
workers can both trip it, or both take the half-open trial), lets every caller through while
half-open and compares the clocks of different hosts. Here the state is pybreaker's model
(its `STATE_*` names, `fail_counter`, `opened_at`) in one hash; each transition is decided by
a pure function below and written under WATCH/MULTI, so exactly one worker makes it (and logs
and counts it); the clock is Redis's `TIME` (in a Redis Cluster, that of the node serving the
breaker's slot; the hash is one key, so its transaction stays in one slot). `PybreakerStorage`
exposes the same hash to a plain `pybreaker.CircuitBreaker` for synchronous code that wants to
share a breaker with the workers.

Layout of `Keys.breaker(name)` (hash)::

    state         closed | open | half-open
    fail_counter  consecutive counted failures (reset by a success while closed)
    opened_at     Redis time (unix seconds) of the last opening
    trial_until   while half-open: lease of the one trial call, taken over once it expires
    last_error    error type of the failure that last opened it
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import pybreaker
import redis
import structlog
from pybreaker import STATE_CLOSED, STATE_HALF_OPEN, STATE_OPEN

from orchestrator import metrics
from orchestrator.errors import SteppeError
from orchestrator.keys import Keys
from orchestrator.redis_clients import is_cluster

log = structlog.get_logger(__name__)

STATE_VALUES = {STATE_CLOSED: 0, STATE_HALF_OPEN: 1, STATE_OPEN: 2}  # the steppe_breaker_state gauge
TRANSITION_EVENTS = {
    STATE_OPEN: "circuit_opened",
    STATE_HALF_OPEN: "circuit_half_opened",
    STATE_CLOSED: "circuit_closed",
}
REDIS_ERRORS = (redis.RedisError, OSError)
MAX_CONFLICTS = 32  # optimistic transactions lost to other workers before giving up on one decision


class CircuitOpenError(SteppeError, pybreaker.CircuitBreakerError):
    """The breaker is open (or its half-open trial is taken): the step is deferred, not failed.

    Also a `pybreaker.CircuitBreakerError`, so code written against pybreaker catches it.
    """

    def __init__(self, name: str, state: str, retry_after: float) -> None:
        self.name = name
        self.state = state
        self.retry_after = max(retry_after, 0.0)
        what = "open" if state == STATE_OPEN else "half-open with its trial call in progress"
        super().__init__(
            f"circuit breaker {name!r} is {what}; the step is deferred and offered again "
            f"(the breaker may let a trial through in {self.retry_after:.1f}s)"
        )


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """Settings of a named breaker, as carried by each step message (`StepMessage.breaker_config`)."""

    fail_max: int = 5
    reset_timeout: float = 30.0
    exclude: frozenset[str] = frozenset()

    @classmethod
    def from_message(cls, raw: Mapping[str, Any] | None) -> BreakerConfig:
        raw = raw or {}
        return cls(
            fail_max=max(int(raw.get("fail_max", 5)), 1),
            reset_timeout=max(float(raw.get("reset_timeout", 30.0)), 0.0),
            exclude=frozenset(raw.get("exclude") or ()),
        )

    def counts(self, error_types: Iterable[str]) -> bool:
        """Whether an error with these type names (its class and base classes) counts as a failure."""
        return self.exclude.isdisjoint(error_types)


def error_type_names(error: BaseException) -> list[str]:
    """The names `exclude` is matched against: the error's class and its base classes."""
    names = [c.__name__ for c in type(error).__mro__ if c not in (object, BaseException, Exception)]
    if isinstance(error, TimeoutError):
        names.insert(0, "StepTimeoutError")  # what the step error of a timeout is called
    return names


# -- the pure state machine -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BreakerState:
    """One breaker's shared state (the hash), as plain data."""

    state: str = STATE_CLOSED
    fail_counter: int = 0
    opened_at: float = 0.0
    trial_until: float = 0.0
    last_error: str = ""

    @classmethod
    def from_hash(cls, raw: Mapping[bytes | str, bytes | str]) -> BreakerState:
        values = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in raw.items()
        }
        state = values.get("state", STATE_CLOSED)
        return cls(
            state=state if state in STATE_VALUES else STATE_CLOSED,
            fail_counter=int(values.get("fail_counter") or 0),
            opened_at=float(values.get("opened_at") or 0.0),
            trial_until=float(values.get("trial_until") or 0.0),
            last_error=values.get("last_error", ""),
        )

    def to_hash(self) -> dict[str, str | int | float]:
        return {
            "state": self.state,
            "fail_counter": self.fail_counter,
            "opened_at": self.opened_at,
            "trial_until": self.trial_until,
            "last_error": self.last_error,
        }


@dataclass(frozen=True, slots=True)
class Decision:
    """The state to store after an acquisition, and whether the call may go ahead."""

    state: BreakerState
    allowed: bool = True
    trial: bool = False
    retry_after: float = 0.0


def decide_acquire(s: BreakerState, config: BreakerConfig, now: float, lease: float) -> Decision:
    """May a call go ahead now? Taking the half-open trial holds it for `lease` seconds."""
    if s.state == STATE_OPEN:
        trial_at = s.opened_at + config.reset_timeout
        if now < trial_at:
            return Decision(s, allowed=False, retry_after=trial_at - now)
        return Decision(replace(s, state=STATE_HALF_OPEN, trial_until=now + lease), trial=True)
    if s.state == STATE_HALF_OPEN:
        if now < s.trial_until:
            return Decision(s, allowed=False, retry_after=s.trial_until - now)
        # The trial's worker died or hung past its lease: take the trial over.
        return Decision(replace(s, trial_until=now + lease), trial=True)
    return Decision(s)


def decide_outcome(
    s: BreakerState, config: BreakerConfig, now: float, *, trial: bool, error_types: list[str] | None
) -> BreakerState:
    """The state after a guarded call finished; `error_types` is None for a success."""
    failed = error_types is not None and config.counts(error_types)
    if s.state != STATE_CLOSED:
        if not trial:
            return s  # a call that started before the breaker opened: only the trial decides now
        if failed:
            assert error_types is not None
            return replace(s, state=STATE_OPEN, opened_at=now, trial_until=0.0, last_error=error_types[0])
        return BreakerState()
    if not failed:
        return replace(s, fail_counter=0) if s.fail_counter else s
    assert error_types is not None
    count = s.fail_counter + 1
    if count >= config.fail_max:
        return BreakerState(STATE_OPEN, fail_counter=count, opened_at=now, last_error=error_types[0])
    return replace(s, fail_counter=count)


def decide_release(s: BreakerState, *, trial: bool) -> BreakerState:
    """A guarded call ended without an outcome (cancelled): hand its trial back at once."""
    if trial and s.state == STATE_HALF_OPEN:
        return replace(s, trial_until=0.0)
    return s


# -- the shared breaker -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Permit:
    """Permission for one guarded call; `trial` when it is the half-open breaker's one trial."""

    trial: bool = False


class SharedBreaker:
    """One named breaker with its state in Redis; each change is one optimistic transaction."""

    def __init__(
        self,
        *,
        name: str,
        config: BreakerConfig,
        client: Any,
        keys: Keys,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self.client = client  # redis.asyncio.Redis
        self.key = keys.breaker(name)
        self.clock = clock  # None: Redis's TIME, the one clock every worker host shares

    async def acquire(self, *, lease: float) -> Permit:
        """Permission to call, or CircuitOpenError. If Redis fails, calls go ahead (like pybreaker)."""
        try:
            decision = await self._change(lambda s, now: decide_acquire(s, self.config, now, lease))
        except REDIS_ERRORS as e:
            log.warning("breaker_unavailable", breaker=self.name, error=str(e))
            return Permit()
        if not decision.allowed:
            raise CircuitOpenError(self.name, decision.state.state, decision.retry_after)
        return Permit(trial=decision.trial)

    async def record(self, permit: Permit, error: BaseException | None) -> None:
        """Count the outcome of a guarded call (`error` None for a success)."""
        types = None if error is None else error_type_names(error)
        await self._best_effort(
            lambda s, now: Decision(decide_outcome(s, self.config, now, trial=permit.trial, error_types=types))
        )

    async def release(self, permit: Permit) -> None:
        """The guarded call was cancelled: neither success nor failure, but give the trial back."""
        if permit.trial:
            await self._best_effort(lambda s, _now: Decision(decide_release(s, trial=True)))

    async def state(self) -> BreakerState:
        current, _ = await self._read()
        self._observe(current, current)
        return current

    async def _best_effort(self, decide: Callable[[BreakerState, float], Decision]) -> None:
        try:
            await self._change(decide)
        except REDIS_ERRORS as e:
            log.warning("breaker_unavailable", breaker=self.name, error=str(e))

    async def _read(self) -> tuple[BreakerState, float]:
        if self.clock is None and is_cluster(self.client):
            raw = await self.client.hgetall(self.key)
            return BreakerState.from_hash(raw), self._time(await self._cluster_time())
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(self.key)
        if self.clock is None:
            pipe.time()
        replies = await pipe.execute()
        return BreakerState.from_hash(replies[0]), self._time(replies[1] if self.clock is None else None)

    async def _change(self, decide: Callable[[BreakerState, float], Decision]) -> Decision:
        current, now = await self._read()
        decision = decide(current, now)
        if decision.state == current:  # the common case (closed, nothing to count) costs one round trip
            self._observe(current, current)
            return decision
        for _ in range(MAX_CONFLICTS):
            async with self.client.pipeline(transaction=True) as pipe:
                await pipe.watch(self.key)
                current = BreakerState.from_hash(await pipe.hgetall(self.key))
                now = self._time(await self._server_time(pipe) if self.clock is None else None)
                decision = decide(current, now)
                if decision.state != current:
                    pipe.multi()
                    pipe.hset(self.key, mapping=decision.state.to_hash())
                    try:
                        await pipe.execute()
                    except redis.WatchError:
                        continue  # another worker changed the breaker first: decide again on its state
            self._observe(current, decision.state)
            return decision
        raise redis.WatchError(f"breaker {self.name!r}: {MAX_CONFLICTS} conflicting updates in a row")

    async def _server_time(self, pipe: Any) -> Any:
        return await (self._cluster_time() if is_cluster(self.client) else pipe.time())

    async def _cluster_time(self) -> Any:
        # A cluster pipeline refuses keyless commands; TIME goes to the node serving this
        # breaker's slot, so that every worker still reads one clock for this breaker.
        await self.client.initialize()
        return await self.client.time(target_nodes=self.client.get_node_from_key(self.key))

    def _time(self, reply: Any) -> float:
        if self.clock is not None:
            return self.clock()
        seconds, micros = reply
        return int(seconds) + int(micros) / 1_000_000

    def _observe(self, old: BreakerState, new: BreakerState) -> None:
        metrics.BREAKER_STATE.labels(breaker=self.name).set(STATE_VALUES[new.state])
        if old.state == new.state:
            return
        metrics.BREAKER_TRANSITIONS.labels(breaker=self.name, to=new.state).inc()
        event = TRANSITION_EVENTS[new.state]
        if new.state == STATE_OPEN:
            log.warning(
                event,
                breaker=self.name,
                previous=old.state,
                failures=new.fail_counter,
                fail_max=self.config.fail_max,
                reset_timeout=self.config.reset_timeout,
                error=new.last_error,
            )
        else:
            log.info(event, breaker=self.name, previous=old.state)


@dataclass
class BreakerRegistry:
    """The breakers one worker process uses, made on first use from each message's settings."""

    client: Any  # redis.asyncio.Redis
    keys: Keys
    clock: Callable[[], float] | None = None
    _breakers: dict[tuple[str, BreakerConfig], SharedBreaker] = field(default_factory=dict)

    def get(self, name: str, config: Mapping[str, Any] | None) -> SharedBreaker:
        settings = BreakerConfig.from_message(config)
        breaker = self._breakers.get((name, settings))
        if breaker is None:
            breaker = SharedBreaker(name=name, config=settings, client=self.client, keys=self.keys, clock=self.clock)
            self._breakers[(name, settings)] = breaker
        return breaker

    async def refresh_metrics(self) -> None:
        """Re-read every breaker this process has used, so that its state gauge does not go stale."""
        seen: set[str] = set()
        for breaker in list(self._breakers.values()):
            if breaker.name not in seen:
                seen.add(breaker.name)
                try:
                    await breaker.state()
                except REDIS_ERRORS as e:
                    log.warning("breaker_unavailable", breaker=breaker.name, error=str(e))


# -- pybreaker interoperability ---------------------------------------------------------------------


class PybreakerStorage(pybreaker.CircuitBreakerStorage):
    """The shared hash as a pybreaker storage (synchronous client), for code outside the worker.

    `pybreaker.CircuitBreaker(fail_max=…, reset_timeout=…, state_storage=PybreakerStorage(client, keys, name))`
    sees the breaker the workers open and close, and its own transitions are seen by them.
    """

    def __init__(self, client: redis.Redis, keys: Keys, name: str) -> None:
        super().__init__(name)
        self._redis = client
        self._key = keys.breaker(name)

    def _get(self, name: str) -> str | None:
        value = self._redis.hget(self._key, name)
        return value.decode() if isinstance(value, bytes) else value

    @property
    def state(self) -> str:
        value = self._get("state")
        return value if value in STATE_VALUES else STATE_CLOSED

    @state.setter
    def state(self, state: str) -> None:
        self._redis.hset(self._key, mapping={"state": state, "trial_until": 0})

    def increment_counter(self) -> None:
        self._redis.hincrby(self._key, "fail_counter", 1)

    def reset_counter(self) -> None:
        self._redis.hset(self._key, "fail_counter", 0)

    def increment_success_counter(self) -> None:
        self._redis.hincrby(self._key, "success_counter", 1)

    def reset_success_counter(self) -> None:
        self._redis.hset(self._key, "success_counter", 0)

    @property
    def counter(self) -> int:
        return int(self._get("fail_counter") or 0)

    @property
    def success_counter(self) -> int:
        return int(self._get("success_counter") or 0)

    @property
    def opened_at(self) -> dt.datetime | None:
        value = float(self._get("opened_at") or 0.0)
        return dt.datetime.fromtimestamp(value, dt.UTC) if value else None

    @opened_at.setter
    def opened_at(self, when: dt.datetime) -> None:
        self._redis.hset(self._key, "opened_at", when.timestamp())
