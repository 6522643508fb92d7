"""Steppe's dashboards as data: rows of panels and their PromQL (rendered by generate.py).

Every query reads only series of orchestrator/metrics.py (checked by the unit tests) and is
evaluated against a live cluster by deploy/check_dashboards.py. Unlabelled series that every
process exports (prometheus-client creates them at import) are read from the process that owns
them through the scrape job, so that a worker's idle copy of, say, `steppe_live_workers` never
mixes in: keep the job names of deploy/prometheus/prometheus.yml.
"""

from __future__ import annotations

from dataclasses import dataclass, field

COORD = 'job="steppe-coordinator"'
WORKER = 'job="steppe-worker"'
QUEUE = 'queue=~"$queue"'
RATE = "$__rate_interval"


@dataclass(frozen=True)
class Q:
    """One PromQL target: the expression and its legend."""

    expr: str
    legend: str = ""


@dataclass(frozen=True)
class P:
    """One panel: kind is `ts` (time series), `stat` or `state` (state timeline)."""

    title: str
    queries: tuple[Q, ...]
    unit: str = "short"
    kind: str = "ts"
    width: int = 8
    description: str = ""
    thresholds: tuple[tuple[float, str], ...] = ()
    mappings: dict[str, tuple[str, str]] = field(default_factory=dict)
    stack: bool = False


def quantiles(series: str, selector: str) -> tuple[Q, ...]:
    """p50/p95/p99 of a histogram, aggregated over every label but `le`."""
    return tuple(
        Q(f"histogram_quantile({q / 100}, sum by (le) (rate({series}_bucket{{{selector}}}[{RATE}])))", f"p{q}")
        for q in (50, 95, 99)
    )


OVERVIEW: dict[str, list[P]] = {
    "Runs": [
        P(
            "Active runs",
            (Q(f"sum(steppe_active_runs{{{COORD}}})", "active"),),
            kind="stat",
            width=6,
            description="Runs not yet terminal, summed over coordinators",
        ),
        P(
            "Runs submitted",
            (Q("sum(increase(steppe_runs_submitted_total[$__range]))", "submitted"),),
            kind="stat",
            width=6,
            description="Runs admitted in the selected time range",
        ),
        P(
            "Runs succeeded",
            (Q('sum(increase(steppe_runs_finished_total{status="succeeded"}[$__range]))', "succeeded"),),
            kind="stat",
            width=6,
            thresholds=((0, "green"),),
        ),
        P(
            "Runs failed",
            (Q('sum(increase(steppe_runs_finished_total{status=~"failed|compensation_failed"}[$__range]))', "failed"),),
            kind="stat",
            width=6,
            thresholds=((0, "green"), (1, "red")),
            description="Runs that ended failed or whose compensation failed",
        ),
        P(
            "Runs submitted by workflow",
            (Q(f"sum by (workflow) (rate(steppe_runs_submitted_total[{RATE}]))", "{{workflow}}"),),
            unit="ops",
            width=12,
        ),
        P(
            "Runs finished by status",
            (Q(f"sum by (status) (rate(steppe_runs_finished_total[{RATE}]))", "{{status}}"),),
            unit="ops",
            width=12,
            stack=True,
        ),
        P("Active runs per coordinator", (Q(f"steppe_active_runs{{{COORD}}}", "{{instance}}"),), width=24),
    ],
    "Steps": [
        P(
            "Step transitions by status",
            (Q(f"sum by (status) (rate(steppe_steps_total{{{QUEUE}}}[{RATE}]))", "{{status}}"),),
            unit="ops",
            width=12,
            stack=True,
            description="Step state changes applied by coordinators",
        ),
        P(
            "Handler executions by queue",
            (Q(f"sum by (queue) (rate(steppe_step_duration_seconds_count{{{QUEUE}}}[{RATE}]))", "{{queue}}"),),
            unit="ops",
            width=12,
            description="Attempts finished by workers, per second",
        ),
        P(
            "Step duration",
            quantiles("steppe_step_duration_seconds", QUEUE),
            unit="s",
            width=12,
            description="Handler wall-clock time measured by the worker",
        ),
        P(
            "Step duration p95 by handler",
            (
                Q(
                    f"histogram_quantile(0.95, sum by (le, handler) "
                    f"(rate(steppe_step_duration_seconds_bucket{{{QUEUE}}}[{RATE}])))",
                    "{{handler}}",
                ),
            ),
            unit="s",
            width=12,
        ),
    ],
    "Coordinator": [
        P("Coordinator loop latency", quantiles("steppe_coordinator_loop_seconds", COORD), unit="s", width=8),
        P(
            "Coordinator loops",
            (Q(f"sum by (instance) (rate(steppe_coordinator_loop_seconds_count{{{COORD}}}[{RATE}]))", "{{instance}}"),),
            unit="ops",
            width=8,
        ),
        P(
            "Time since last coordinator loop",
            (Q(f"time() - steppe_coordinator_last_loop_timestamp_seconds{{{COORD}}}", "{{instance}}"),),
            unit="s",
            width=8,
            thresholds=((0, "green"), (30, "orange"), (60, "red")),
            description="Alert SteppeCoordinatorStalled fires above 60 s",
        ),
    ],
    "Retention": [
        P(
            "Rows pruned by table",
            (Q(f"sum by (table) (rate(steppe_retention_pruned_rows_total{{{COORD}}}[{RATE}]))", "{{table}}"),),
            unit="rowsps",
            width=12,
            description="Rows of finished runs deleted by retention (STEPPE_RETENTION__FINISHED_RUNS)",
        ),
        P(
            "Age of the oldest finished run kept",
            (Q(f"time() - min(steppe_retention_oldest_finished_run_timestamp_seconds{{{COORD}}})", "oldest"),),
            unit="s",
            width=12,
            description="Stays near STEPPE_RETENTION__FINISHED_RUNS while pruning keeps up",
        ),
    ],
    "Flow control": [
        P(
            "Slots in use per key",
            (
                Q(f"max by (kind, key) (steppe_limit_in_use{{{COORD}}})", "{{kind}} {{key}} in use"),
                Q(f"max by (kind, key) (steppe_limit_capacity{{{COORD}}})", "{{kind}} {{key}} limit"),
            ),
            width=12,
            description="Concurrency slots held (rate: starts in the window) against the limit, per key; "
            "max over coordinators, each reports what its last admission of the key counted",
        ),
        P(
            "Throttled",
            (Q(f"max by (kind, key) (steppe_steps_throttled{{{COORD}}})", "{{kind}} {{key}}"),),
            width=12,
            description="Steps (kind concurrency/rate) and runs (kind run) waiting for a slot or a rate token; "
            "they hold no worker slot. `steppe limits` names holders and waiters",
        ),
    ],
    "Durable waits": [
        P(
            "Waiting steps by kind",
            (Q(f"sum by (kind) (steppe_waiting_steps{{{COORD}}})", "{{kind}}"),),
            width=8,
            stack=True,
            description="Steps waiting for a signal, an approval or a sleep's timer (`steppe runs --status "
            "waiting`), summed over coordinators: each counts the runs of the partitions it owns. "
            "They hold no worker slot",
        ),
        P(
            "Signal latency",
            tuple(
                Q(
                    f"histogram_quantile({q / 100}, sum by (le, kind) "
                    f"(rate(steppe_signal_latency_seconds_bucket{{{COORD}}}[{RATE}])))",
                    f"p{q} {{{{kind}}}}",
                )
                for q in (50, 99)
            ),
            unit="s",
            width=8,
            description="From a signal's or decision's acceptance in PostgreSQL (or its step starting to wait, "
            "for one sent early) to the commit of the event that ended the wait",
        ),
        P(
            "Signals and decisions consumed",
            (Q(f"sum by (kind) (rate(steppe_signals_consumed_total{{{COORD}}}[{RATE}]))", "{{kind}}"),),
            unit="ops",
            width=8,
            description="Signals (kind signal) and approval decisions (approve, reject) that ended a wait",
        ),
    ],
    "Schedules": [
        P(
            "Schedule lag",
            quantiles("steppe_schedule_lag_seconds", COORD),
            unit="s",
            width=8,
            description="Start of a scheduled run minus its due time (tick + jitter), over every schedule",
        ),
        P(
            "Ticks started and skipped",
            (
                Q(f"sum by (outcome) (rate(steppe_schedule_ticks_total{{{COORD}}}[{RATE}]))", "{{outcome}}"),
                Q(
                    f"sum by (reason) (rate(steppe_schedule_ticks_skipped_total{{{COORD}}}[{RATE}]))",
                    "skipped: {{reason}}",
                ),
            ),
            unit="ops",
            width=8,
            description="skipped: overlap = the previous run was still active (--overlap skip); catchup = "
            "missed while no coordinator ran and dropped by --catchup/--catchup-window",
        ),
        P(
            "How late each schedule is",
            (
                Q(
                    "max by (schedule) (clamp_min(time() - "
                    f"steppe_schedule_next_fire_timestamp_seconds{{{COORD}}}, 0))",
                    "{{schedule}}",
                ),
            ),
            unit="s",
            width=8,
            thresholds=((0, "green"), (60, "red")),
            description="Now minus the next fire time; alert SteppeScheduleLate fires above a minute",
        ),
    ],
}

QUEUES_WORKERS: dict[str, list[P]] = {
    "Queues": [
        P(
            "Queue depth",
            (Q(f"max by (queue) (steppe_queue_depth{{{QUEUE}}})", "{{queue}}"),),
            width=12,
            description="Entries in the queue's streams (all priorities)",
        ),
        P(
            "Queue lag",
            (Q(f"max by (queue) (steppe_queue_lag{{{QUEUE}}})", "{{queue}}"),),
            width=12,
            description="Entries not yet delivered to any worker",
        ),
        P(
            "Pending entries",
            (Q(f"max by (queue) (steppe_queue_pending{{{QUEUE}}})", "{{queue}}"),),
            width=12,
            description="Delivered to a worker but not yet acknowledged",
        ),
        P(
            "Oldest pending age",
            (Q(f"max by (queue) (steppe_queue_oldest_pending_age_seconds{{{QUEUE}}})", "{{queue}}"),),
            unit="s",
            width=12,
            thresholds=((0, "green"), (300, "red")),
            description="Alert SteppeQueueOldestPendingHigh fires above 300 s",
        ),
    ],
    "Workers": [
        P(
            "Live workers",
            (Q(f"max(steppe_live_workers{{{COORD}}})", "workers"),),
            kind="stat",
            width=6,
            thresholds=((0, "red"), (1, "green")),
        ),
        P("Steps in flight", (Q(f"sum(steppe_worker_inflight{{{WORKER}}})", "in flight"),), kind="stat", width=6),
        P(
            "Reclaimed messages",
            (Q(f"sum(increase(steppe_reclaims_total{{{QUEUE}}}[$__range]))", "reclaimed"),),
            kind="stat",
            width=6,
            thresholds=((0, "green"), (1, "orange")),
            description="Messages taken over from dead or stalled workers in the time range",
        ),
        P(
            "Executions",
            (Q(f"sum(rate(steppe_step_duration_seconds_count{{{QUEUE}}}[{RATE}]))", "steps/s"),),
            unit="ops",
            kind="stat",
            width=6,
        ),
        P("In flight per worker", (Q(f"steppe_worker_inflight{{{WORKER}}}", "{{instance}}"),), width=12, stack=True),
        P(
            "Executions per worker",
            (Q(f"sum by (instance) (rate(steppe_step_duration_seconds_count{{{QUEUE}}}[{RATE}]))", "{{instance}}"),),
            unit="ops",
            width=12,
            stack=True,
        ),
        P(
            "Reclaims by queue",
            (Q(f"sum by (queue) (rate(steppe_reclaims_total{{{QUEUE}}}[{RATE}]))", "{{queue}}"),),
            unit="ops",
            width=24,
        ),
    ],
}

FAILURES: dict[str, list[P]] = {
    "Failures and dead letters": [
        P(
            "DLQ depth",
            (Q(f"max(steppe_dlq_depth{{{COORD}}})", "dead letters"),),
            kind="stat",
            width=6,
            thresholds=((0, "green"), (1, "orange")),
        ),
        P(
            "Dead-lettered",
            (Q("sum(increase(steppe_dead_letters_total[$__range]))", "dead-lettered"),),
            kind="stat",
            width=6,
            thresholds=((0, "green"), (1, "red")),
        ),
        P("Retries scheduled", (Q("sum(increase(steppe_retries_total[$__range]))", "retries"),), kind="stat", width=6),
        P(
            "Duplicates suppressed",
            (Q("sum(increase(steppe_duplicates_suppressed_total[$__range]))", "duplicates"),),
            kind="stat",
            width=6,
            description="Late or repeated results ignored by attempt fencing",
        ),
        P(
            "Failed and dead-lettered steps",
            (
                Q(
                    "sum by (queue, handler, status) "
                    f'(rate(steppe_steps_total{{status=~"failed|dead_lettered"}}[{RATE}]))',
                    "{{handler}} {{status}} ({{queue}})",
                ),
            ),
            unit="ops",
            width=12,
        ),
        P(
            "Dead letters by reason",
            (Q(f"sum by (queue, reason) (rate(steppe_dead_letters_total[{RATE}]))", "{{reason}} ({{queue}})"),),
            unit="ops",
            width=12,
        ),
        P(
            "DLQ depth over time",
            (Q(f"max(steppe_dlq_depth{{{COORD}}})", "dead letters"),),
            width=8,
            description="Alert SteppeDeadLettersGrowing fires when it grew in the last 15 minutes",
        ),
        P(
            "Retries by handler",
            (Q(f"sum by (queue, handler) (rate(steppe_retries_total[{RATE}]))", "{{handler}} ({{queue}})"),),
            unit="ops",
            width=8,
        ),
        P(
            "Duplicates suppressed by kind",
            (Q(f"sum by (kind) (rate(steppe_duplicates_suppressed_total[{RATE}]))", "{{kind}}"),),
            unit="ops",
            width=8,
        ),
    ],
    "Circuit breakers": [
        P(
            "Breaker state",
            (Q("max by (breaker) (steppe_breaker_state)", "{{breaker}}"),),
            kind="state",
            width=12,
            mappings={"0": ("closed", "green"), "1": ("half-open", "orange"), "2": ("open", "red")},
            description="Shared state as seen by the processes that use the breaker",
        ),
        P(
            "Breaker transitions",
            (Q(f"sum by (breaker, to) (increase(steppe_breaker_transitions_total[{RATE}]))", "{{breaker}} → {{to}}"),),
            width=12,
        ),
    ],
    "Sagas and hooks": [
        P(
            "Compensations by status",
            (Q(f"sum by (status) (rate(steppe_compensations_total[{RATE}]))", "{{status}}"),),
            unit="ops",
            width=12,
        ),
        P(
            "Hook executions",
            (Q(f"sum by (kind, status) (rate(steppe_hook_executions_total[{RATE}]))", "{{kind}} {{status}}"),),
            unit="ops",
            width=12,
        ),
    ],
}

DASHBOARDS = {
    "overview": (
        "steppe-overview",
        "Steppe / Overview",
        OVERVIEW,
        "Runs, step throughput and latency, coordinator health",
    ),
    "queues-workers": (
        "steppe-queues-workers",
        "Steppe / Queues & workers",
        QUEUES_WORKERS,
        "Queue streams, consumer-group backlog and the worker fleet",
    ),
    "failures": (
        "steppe-failures",
        "Steppe / Failures, DLQ & breakers",
        FAILURES,
        "Failed and dead-lettered steps, retries, fencing, circuit breakers, sagas and hooks",
    ),
}
