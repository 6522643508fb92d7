"""Prometheus series exported by coordinators and workers (prefix `steppe_`).

Labels are bounded: queue, handler, workflow name, status, breaker name, hook kind.
Run ids and step ids never become label values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from orchestrator.state import Event, EventType, StepRecord

RUNS_SUBMITTED = Counter("steppe_runs_submitted_total", "Runs accepted by the coordinator", ["workflow"])
RUNS_FINISHED = Counter("steppe_runs_finished_total", "Runs that reached a terminal state", ["workflow", "status"])
ACTIVE_RUNS = Gauge("steppe_active_runs", "Runs not yet terminal held by this coordinator")
STEPS = Counter("steppe_steps_total", "Step transitions applied by the coordinator", ["queue", "handler", "status"])
STEP_DURATION = Histogram(
    "steppe_step_duration_seconds",
    "Handler wall-clock time, measured by the worker",
    ["queue", "handler"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300),
)
RETRIES = Counter("steppe_retries_total", "Step retries scheduled", ["queue", "handler"])
RECLAIMS = Counter("steppe_reclaims_total", "Messages reclaimed from dead or stalled consumers", ["queue"])
DUPLICATES = Counter(
    "steppe_duplicates_suppressed_total", "Results ignored by attempt fencing (late or repeated)", ["kind"]
)
QUEUE_DEPTH = Gauge("steppe_queue_depth", "Entries in a queue stream", ["queue"])
QUEUE_LAG = Gauge("steppe_queue_lag", "Entries not yet delivered to any worker", ["queue"])
QUEUE_PENDING = Gauge("steppe_queue_pending", "Entries delivered but not yet acknowledged", ["queue"])
QUEUE_OLDEST_PENDING_AGE = Gauge(
    "steppe_queue_oldest_pending_age_seconds", "Idle time of the oldest unacknowledged entry", ["queue"]
)
DLQ_DEPTH = Gauge("steppe_dlq_depth", "Entries in the dead-letter stream")
DEAD_LETTERS = Counter("steppe_dead_letters_total", "Messages dead-lettered", ["queue", "reason"])
BREAKER_STATE = Gauge("steppe_breaker_state", "Circuit breaker state (0 closed, 1 half-open, 2 open)", ["breaker"])
BREAKER_TRANSITIONS = Counter("steppe_breaker_transitions_total", "Circuit breaker transitions", ["breaker", "to"])
COMPENSATIONS = Counter("steppe_compensations_total", "Compensation steps finished", ["status"])
# Flow control (docs/spec.md §12.2; set by orchestrator/limit_metrics.py). Keys are user data: a key's
# series are removed once nothing holds or waits on it.
STEPS_THROTTLED = Gauge(
    "steppe_steps_throttled", "Attempts (or runs) waiting for a concurrency slot or a rate token", ["kind", "key"]
)
LIMIT_IN_USE = Gauge(
    "steppe_limit_in_use", "Concurrency slots held, or starts within the rate window, per key", ["kind", "key"]
)
LIMIT_CAPACITY = Gauge("steppe_limit_capacity", "The limit of a key as its rows declare it", ["kind", "key"])
# Durable waits (docs/spec.md §12.1; set by orchestrator/wait_metrics.py from what the coordinator tracks).
WAITING_STEPS = Gauge(
    "steppe_waiting_steps", "Steps waiting for a signal, an approval or a timer, of this coordinator's runs", ["kind"]
)
SIGNALS_CONSUMED = Counter(
    "steppe_signals_consumed_total", "Signals and approval decisions that ended a wait (committed)", ["kind"]
)
SIGNAL_LATENCY = Histogram(
    "steppe_signal_latency_seconds",
    "From a signal's acceptance (or its step starting to wait, if later) to the commit of the wait it ended",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
HOOKS = Counter("steppe_hook_executions_total", "Hook executions", ["kind", "status"])
RETENTION_PRUNED = Counter("steppe_retention_pruned_rows_total", "Rows deleted by retention", ["table"])
RETENTION_OLDEST_FINISHED = Gauge(
    "steppe_retention_oldest_finished_run_timestamp_seconds",
    "When the oldest finished top-level run still kept finished (the time of the last look when none is)",
)
LIVE_WORKERS = Gauge("steppe_live_workers", "Workers with a live heartbeat")
WORKER_INFLIGHT = Gauge("steppe_worker_inflight", "Steps executing in this worker")
COORDINATOR_LOOP = Histogram(
    "steppe_coordinator_loop_seconds",
    "Duration of one coordinator loop iteration",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
COORDINATOR_HEARTBEAT = Gauge(
    "steppe_coordinator_last_loop_timestamp_seconds", "Unix time of the coordinator's last completed loop"
)
# Schedules (orchestrator/scheduler.py); the schedule label is an operator-chosen schedule id.
SCHEDULE_LAG = Histogram(
    "steppe_schedule_lag_seconds",
    "Actual start of a scheduled run minus its due time (the tick plus its jitter)",
    ["schedule"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
SCHEDULE_TICKS = Counter("steppe_schedule_ticks_total", "Schedule ticks handled", ["schedule", "outcome"])
SCHEDULE_TICKS_SKIPPED = Counter(
    "steppe_schedule_ticks_skipped_total",
    "Ticks not started: overlap (previous run active) or catchup",
    ["schedule", "reason"],
)
SCHEDULE_NEXT_FIRE = Gauge(
    "steppe_schedule_next_fire_timestamp_seconds",
    "Unix time a schedule's next tick is due (jitter included)",
    ["schedule"],
)


def serve_metrics(port: int | None, host: str = "127.0.0.1") -> None:
    """Expose /metrics on `host`:`port` unless `port` is None (loopback unless told otherwise)."""
    if port is not None:
        start_http_server(port, addr=host)


_COUNTED = {
    EventType.STEP_SUCCEEDED: "succeeded",
    EventType.STEP_FAILED: "failed",
    EventType.STEP_DEAD_LETTERED: "dead_lettered",
    EventType.STEP_SKIPPED: "skipped",
    EventType.STEP_CANCELLED: "cancelled",
    EventType.STEP_RETRY_SCHEDULED: "retry_scheduled",
    EventType.STEP_DISPATCHED: "dispatched",
}


def count_step_events(
    events: Iterable[Event], steps: Mapping[str, StepRecord], labels_of: Callable[[str], tuple[str, str]]
) -> None:
    """Step metrics by queue, handler and status (for_each parents are not counted twice)."""
    counts = StepCounts()
    counts.add(events, steps, labels_of)
    counts.flush()


class StepCounts:
    """The step metrics of one coordinator batch, tallied by series and added once per series (`flush`):
    a batch of 500 results of one queue and handler is one increment, not 500."""

    def __init__(self) -> None:
        self._tally: dict[tuple[Any, tuple[str, ...]], int] = {}

    def add(
        self, events: Iterable[Event], steps: Mapping[str, StepRecord], labels_of: Callable[[str], tuple[str, str]]
    ) -> None:
        """Count one run's events (for_each parents are not counted twice)."""
        tally = self._tally
        for event in events:
            status = _COUNTED.get(event.type)
            if status is None or event.step is None:
                continue
            record = steps.get(event.step)
            if record is not None and record.detail.get("items") is not None:
                continue
            queue, handler = labels_of(event.step)
            key: tuple[Any, tuple[str, ...]] = (STEPS, (queue, handler, status))
            tally[key] = tally.get(key, 0) + 1
            if event.type is EventType.STEP_RETRY_SCHEDULED:
                key = (RETRIES, (queue, handler))
                tally[key] = tally.get(key, 0) + 1
            if event.step.endswith(":compensate") and status in ("succeeded", "failed", "dead_lettered"):
                key = (COMPENSATIONS, (status,))
                tally[key] = tally.get(key, 0) + 1

    def flush(self) -> None:
        for (metric, values), n in self._tally.items():
            child(metric, *values).inc(n)
        self._tally.clear()


_CHILDREN: dict[tuple[int, tuple[str, ...]], Any] = {}


def child(metric: Any, *values: str) -> Any:
    """`metric.labels(*values)`, looked up once per label values (`labels` costs microseconds, and the
    loops ask per step). Only for series never removed: those of bounded labels (see the module
    docstring), which is every per-step series."""
    key = (id(metric), values)
    found = _CHILDREN.get(key)
    if found is None:
        found = _CHILDREN[key] = metric.labels(*values)
    return found
