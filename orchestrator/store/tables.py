"""SQLAlchemy 2 table definitions; Alembic migrations in `migrations/` mirror them.

PostgreSQL is the source of truth. A run is projected into one `workflow_runs` row
(run-level state as JSONB) plus one `workflow_steps` row per step instance (a
`for_each` item or swarm replica is its own instance), so applying a result
touches one small row instead of rewriting a whole run document. Every change
is also appended to `workflow_events` (gapless `seq` per run); the rows above are
a projection of that log.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
    }
)

workflow_runs = Table(
    "workflow_runs",
    metadata,
    Column("run_id", Text, primary_key=True),
    Column("workflow", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("partition", Integer, nullable=False),
    Column("definition", JSONB, nullable=False),
    Column("inputs", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("plan", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("state", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("version", Integer, nullable=False, server_default=text("0")),
    Column("last_seq", BigInteger, nullable=False, server_default=text("0")),
    Column("idempotency_key", Text, nullable=True),
    Column("parent_run_id", Text, ForeignKey("workflow_runs.run_id", ondelete="SET NULL"), nullable=True),
    Column("parent_step", Text, nullable=True),
    Column("depth", Integer, nullable=False, server_default=text("0")),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Column("workflow_version", Integer, nullable=True),  # the deployed version it started from (0006)
    # Partial (0010): runs without a key or a parent, most of them, add no index entry on each write.
    Index(
        "uq_workflow_runs_idempotency_key",
        "idempotency_key",
        unique=True,
        postgresql_where=text("idempotency_key IS NOT NULL"),
    ),
    Index("ix_workflow_runs_status_created_at", "status", "created_at"),
    Index("ix_workflow_runs_partition_active", "partition", postgresql_where=text("finished_at IS NULL")),
    Index("ix_workflow_runs_parent_run_id", "parent_run_id", postgresql_where=text("parent_run_id IS NOT NULL")),
    # Retention's scan: finished top-level runs, oldest first (steppe_prune_finished_runs).
    Index(
        "ix_workflow_runs_finished_roots",
        "finished_at",
        postgresql_where=text("finished_at IS NOT NULL AND parent_run_id IS NULL"),
    ),
    Index("ix_workflow_runs_workflow_created_at", "workflow", "created_at"),
)

workflow_steps = Table(
    "workflow_steps",
    metadata,
    Column("run_id", Text, ForeignKey("workflow_runs.run_id", ondelete="CASCADE"), nullable=False),
    Column("step_key", Text, nullable=False),
    Column("step_id", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("attempt", Integer, nullable=False, server_default=text("0")),
    Column("output", JSONB, nullable=True),
    Column("error", JSONB, nullable=True),
    Column("detail", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("due_at", DateTime(timezone=True), nullable=True),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("run_id", "step_key"),
    Index("ix_workflow_steps_status", "status", postgresql_where=text("status IN ('dispatched', 'running')")),
    Index("ix_workflow_steps_waiting", "due_at", postgresql_where=text("status = 'waiting'")),  # durable waits
)

# Flow control (docs/spec.md §12.2, orchestrator/store/limits.py): one row per limit of a throttled attempt.
# A row without granted_at waits; a granted concurrency row is a held slot, a granted rate row a start in
# its window. Rows follow their step row (trigger steppe_limit_rows, migration 0007).
limit_slots = Table(
    "limit_slots",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),  # FIFO order among equal priorities
    Column("kind", Text, nullable=False),  # concurrency | rate
    Column("key", Text, nullable=False),
    Column("run_id", Text, ForeignKey("workflow_runs.run_id", ondelete="CASCADE"), nullable=False),
    Column("step_key", Text, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("partition", Integer, nullable=False),
    Column("priority", Integer, nullable=False, server_default=text("1")),
    Column("lim", Integer, nullable=False),
    Column("per_ms", BigInteger, nullable=False, server_default=text("0")),
    Column("req_index", Integer, nullable=False, server_default=text("0")),
    Column("req_count", Integer, nullable=False, server_default=text("1")),
    Column("granted_at", DateTime(timezone=True), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("on_limit", Text, nullable=False, server_default=text("'queue'")),  # run rows (0009)
    UniqueConstraint("run_id", "step_key", "attempt", "req_index"),
    Index("ix_limit_slots_kind_key_granted_at", "kind", "key", "granted_at"),
    Index("ix_limit_slots_partition", "partition", postgresql_where=text("granted_at IS NOT NULL")),
)

workflow_events = Table(
    "workflow_events",
    metadata,
    Column("run_id", Text, ForeignKey("workflow_runs.run_id", ondelete="CASCADE"), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("type", Text, nullable=False),
    Column("step_key", Text, nullable=True),
    Column("attempt", Integer, nullable=True),
    Column("data", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("run_id", "seq"),  # the only index: the log is read by run and seq (0010)
)

workflow_hooks = Table(
    "workflow_hooks",
    metadata,
    Column("hook_id", BigInteger, primary_key=True, autoincrement=True),
    Column("name", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("events", JSONB, nullable=False),
    Column("workflow", Text, nullable=True),
    Column("handler", Text, nullable=False),
    Column("with", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("enabled", Boolean, nullable=False, server_default=text("true")),
    Column("trigger_count", BigInteger, nullable=False, server_default=text("0")),
    Column("error_count", BigInteger, nullable=False, server_default=text("0")),
    Column("last_triggered_at", DateTime(timezone=True), nullable=True),
    Column("last_error", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    UniqueConstraint("name"),
)

# One row per post/session hook execution, written in the same transaction as the event that
# triggered it: a coordinator that dies before publishing it, or Redis losing it, cannot lose it.
hook_executions = Table(
    "hook_executions",
    metadata,
    Column("run_id", Text, ForeignKey("workflow_runs.run_id", ondelete="CASCADE"), nullable=False),
    Column("step_key", Text, nullable=False),
    Column("hook_id", BigInteger, nullable=False),
    Column("partition", Integer, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("status", Text, nullable=False),  # pending | succeeded | failed
    Column("due_at", DateTime(timezone=True), nullable=True),  # a scheduled retry
    Column("message", JSONB, nullable=False),
    Column("error", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("run_id", "step_key"),
    Index("ix_hook_executions_partition", "partition", postgresql_where=text("status = 'pending'")),
)

workflow_definitions = Table(
    "workflow_definitions",
    metadata,
    Column("name", Text, primary_key=True),
    Column("definition", JSONB, nullable=False),
    Column("source", Text, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

dead_letters = Table(
    "dead_letters",
    metadata,
    Column("dead_letter_id", BigInteger, primary_key=True, autoincrement=True),
    Column("run_id", Text, nullable=True),
    Column("step_key", Text, nullable=True),
    Column("attempt", Integer, nullable=True),
    Column("queue", Text, nullable=False),
    Column("stream_id", Text, nullable=False),
    Column("delivery_count", Integer, nullable=False),
    Column("reason", Text, nullable=False),
    Column("error", Text, nullable=False),
    Column("payload", JSONB, nullable=True),
    Column("raw", Text, nullable=True),
    Column("status", Text, nullable=False, server_default=text("'dead'")),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("replayed_at", DateTime(timezone=True), nullable=True),
    UniqueConstraint("queue", "stream_id"),
    Index("ix_dead_letters_created_at", "created_at"),
    Index("ix_dead_letters_run_id", "run_id"),
)

coordinator_leases = Table(
    "coordinator_leases",
    metadata,
    Column("partition", Integer, primary_key=True, autoincrement=False),
    Column("owner", Text, nullable=True),
    Column("token", BigInteger, nullable=False, server_default=text("0")),
    Column("expires_at", DateTime(timezone=True), nullable=True),
)

# Durable requests (cancel, retry) for the coordinator that owns a run: the CLI never
# writes run state itself, so that each run keeps a single writer.
run_commands = Table(
    "run_commands",
    metadata,
    Column("command_id", BigInteger, primary_key=True, autoincrement=True),
    Column("run_id", Text, ForeignKey("workflow_runs.run_id", ondelete="CASCADE"), nullable=False),
    Column("command", Text, nullable=False),
    Column("payload", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("processed_at", DateTime(timezone=True), nullable=True),
    Index("ix_run_commands_unprocessed", "run_id", postgresql_where=text("processed_at IS NULL")),
    Index("ix_run_commands_run_id", "run_id"),  # deleting a run's commands (retention) looks them up
)

# The transactions allowed to delete events: steppe_prune_finished_runs (retention) inserts its
# own and removes it before returning; only the schema owner may write (or read) this table.
steppe_prune_tokens = Table(
    "steppe_prune_tokens",
    metadata,
    Column("txid", BigInteger, primary_key=True, autoincrement=False),
)

# Deployed workflows (docs/spec.md §12.3): each distinct document of a name is its next version;
# `digest` (SHA-256 of the canonical definition) makes a repeated deploy return the same version.
workflow_versions = Table(
    "workflow_versions",
    metadata,
    Column("name", Text, nullable=False),
    Column("version", Integer, nullable=False),
    Column("digest", Text, nullable=False),
    Column("definition", JSONB, nullable=False),
    Column("source", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("name", "version"),
    UniqueConstraint("name", "digest"),
)

# Schedules: the coordinator leasing `partition` fires them (orchestrator/scheduler.py). Durations
# are whole milliseconds. `next_tick_at` is the next nominal tick, `next_fire_at` it plus jitter.
schedules = Table(
    "schedules",
    metadata,
    Column("schedule_id", Text, primary_key=True),
    Column("partition", Integer, nullable=False),
    Column("workflow", Text, nullable=False),
    Column("workflow_version", Integer, nullable=True),  # NULL: the newest version when a tick fires
    Column("inputs", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("cron", Text, nullable=True),
    Column("timezone", Text, nullable=False, server_default=text("'UTC'")),
    Column("every_ms", BigInteger, nullable=True),
    Column("overlap", Text, nullable=False, server_default=text("'skip'")),
    Column("catchup", Text, nullable=False, server_default=text("'latest'")),
    Column("catchup_window_ms", BigInteger, nullable=False, server_default=text("3600000")),
    Column("jitter_ms", BigInteger, nullable=False, server_default=text("0")),
    Column("paused", Boolean, nullable=False, server_default=text("false")),
    Column("next_tick_at", DateTime(timezone=True), nullable=False),
    Column("next_fire_at", DateTime(timezone=True), nullable=False),
    Column("last_tick_at", DateTime(timezone=True), nullable=True),
    Column("last_run_id", Text, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("fired_count", BigInteger, nullable=False, server_default=text("0")),
    Column("skipped_count", BigInteger, nullable=False, server_default=text("0")),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("ix_schedules_partition_next_fire_at", "partition", "next_fire_at", postgresql_where=text("NOT paused")),
)


# Signals and approval decisions (docs/spec.md §12.1), accepted by `steppe signal|approve|reject` with
# the run_commands row that wakes the coordinator; `consumed_by` is the step key whose wait it ended,
# set in the coordinator's batch transaction with that step's event (orchestrator/store/signals.py).
run_signals = Table(
    "run_signals",
    metadata,
    Column("signal_id", BigInteger, primary_key=True, autoincrement=True),
    Column("run_id", Text, ForeignKey("workflow_runs.run_id", ondelete="CASCADE"), nullable=False),
    Column("kind", Text, nullable=False),  # signal | approve | reject
    Column("name", Text, nullable=False),  # the signal's name; the approval step's id
    Column("payload", JSONB, nullable=True),
    Column("idempotency_key", Text, nullable=True),
    Column("who", Text, nullable=True),
    Column("comment", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("consumed_by", Text, nullable=True),
    Column("consumed_at", DateTime(timezone=True), nullable=True),
    UniqueConstraint("run_id", "idempotency_key", name="uq_run_signals_idempotency_key"),
    Index("ix_run_signals_unconsumed", "run_id", postgresql_where=text("consumed_by IS NULL")),
)
