"""Configuration for every Steppe process (pydantic-settings, environment prefix `STEPPE_`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from orchestrator.durations import parse_duration
from orchestrator.errors import ConfigError, InfrastructureError

# Name of the file in STEPPE_HOME where `steppe dev up` records its servers.
DEV_STATE_FILE = "servers.json"

# STEPPE_DURABILITY: how the engine's own PostgreSQL sessions commit (docs/configuration.md).
# strict leaves the server's settings alone (synchronous_commit normally on: a commit returns once
# its WAL is flushed to disk). balanced commits with synchronous_commit=off: a commit returns before
# its WAL is written (the WAL writer writes and flushes it within 3 x wal_writer_delay, 600 ms by
# default), so a crash of the database host (operating system, power) or of PostgreSQL itself
# (an immediate shutdown, a backend killed by the OOM killer) may lose the transitions of that
# window; a crash of any Steppe process loses nothing, and the database stays consistent either
# way (whole transactions are lost, never parts). Migrations (`steppe db upgrade`) commit strictly.
Durability = Literal["strict", "balanced"]
DURABILITY_MODES: tuple[Durability, ...] = ("strict", "balanced")
# PostgreSQL settings each mode gives the engine's sessions (libpq `options` at connection start).
DURABILITY_SESSION_SETTINGS: dict[Durability, dict[str, str]] = {
    "strict": {},
    "balanced": {"synchronous_commit": "off"},
}


def parse_durability(value: object) -> Durability:
    """A STEPPE_DURABILITY value (any case, surrounding spaces ignored); ConfigError naming the
    variable, the value and the allowed values otherwise. A ConfigError, not a ValueError: pydantic
    lets it through, so a process refuses to start with this message rather than a traceback."""
    text = value.strip().lower() if isinstance(value, str) else value
    if text not in DURABILITY_MODES:
        raise ConfigError(
            f"STEPPE_DURABILITY is {value!r}; it must be one of {', '.join(DURABILITY_MODES)} "
            "(strict, the default: every commit waits for PostgreSQL's WAL flush; balanced: "
            "synchronous_commit=off, a crash of PostgreSQL or of its host may lose the last few hundred "
            "milliseconds of transitions). Unset it or set it to one of these"
        )
    return text


class RedisSettings(BaseModel):
    """Redis connection tuning (`STEPPE_REDIS__…`)."""

    # Blocking reads use `block_ms`; the socket timeout must stay above it (redis-py 8
    # defaults to 5 s, which breaks XREADGROUP BLOCK).
    socket_timeout: float = 30.0
    connect_timeout: float = 5.0
    block_ms: int = 1000
    server_path: str | None = Field(default=None, description="redis-server binary for `steppe dev`")


class DatabaseSettings(BaseModel):
    """PostgreSQL connection tuning (`STEPPE_DATABASE__…`)."""

    connect_timeout: int = 5
    pool_size: int = 4


class LimitSettings(BaseModel):
    """Size limits on documents, inputs and outputs (`STEPPE_LIMITS__…`)."""

    document_bytes: int = 16 * 1024 * 1024
    payload_bytes: int = 1024 * 1024
    workflow_depth: int = 5  # hierarchical: how deep child workflows may nest (guards recursion)
    # What one run may make the coordinator and Redis hold (orchestrator/run_limits.py checks them).
    for_each_items: int = Field(default=10_000, ge=1)  # items of one for_each step
    steps_per_run: int = Field(default=100_000, ge=1)  # step instances of a run, for_each items included
    descendants_per_run: int = Field(default=1_000, ge=0)  # child runs under one top-level run, all levels


class WorkerSettings(BaseModel):
    """Worker tuning (`STEPPE_WORKER__…`)."""

    concurrency: int = 16
    visibility_timeout: float = 30.0
    heartbeat_interval: float = 5.0
    max_deliveries: int = 5
    drain_timeout: float = 30.0


class CoordinatorSettings(BaseModel):
    """Coordinator tuning (`STEPPE_COORDINATOR__…`)."""

    partitions: int = 4
    lease_ttl: float = 10.0
    batch_size: int = 500
    timeout_grace: float = 10.0
    reconcile_interval: float = 15.0


class RetentionSettings(BaseModel):
    """How long finished runs are kept (`STEPPE_RETENTION__…`, docs/spec.md §12.6).

    Coordinators prune finished runs older than `finished_runs` (a duration such as `30d`;
    `0` keeps everything), one batch of at most `batch_runs` top-level runs every `interval`
    (sooner while there is a backlog), one coordinator at a time."""

    finished_runs: float = Field(default=30 * 86400.0, description="STEPPE_RETENTION__FINISHED_RUNS: 30d; 0 keeps all")
    batch_runs: int = Field(default=500, ge=1, le=10_000)
    interval: float = Field(default=60.0, gt=0)

    @field_validator("finished_runs", "interval", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return parse_duration(value, what="retention setting")


class TracingSettings(BaseModel):
    """OpenTelemetry tracing (`STEPPE_TRACING__…`, docs/spec.md §12.7; orchestrator/tracing.py).

    Off unless `endpoint` (or OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) names
    an OTLP/HTTP collector or `console` is set; `STEPPE_TRACING=console` is short for the latter."""

    endpoint: str | None = Field(default=None, description="OTLP/HTTP base URL, e.g. http://127.0.0.1:4318")
    console: bool = False
    service_name: str | None = None  # default: steppe-coordinator / steppe-worker


class Settings(BaseSettings):
    """Settings shared by the CLI, coordinator and workers."""

    model_config = SettingsConfigDict(env_prefix="STEPPE_", env_nested_delimiter="__", extra="ignore")

    redis_url: str | None = None
    database_url: str | None = None
    namespace: str = "steppe"
    home: Path = Path(".steppe")
    imports: list[str] = Field(default_factory=list)
    # What a worker exposes to `${{ secrets.NAME }}` (workers/secrets.py), nothing else of its
    # environment: these names, read from the environment, and the files of `secrets_dir`.
    secrets: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="STEPPE_SECRETS: comma-separated names of environment variables"
    )
    secrets_dir: Path | None = Field(default=None, description="STEPPE_SECRETS_DIR: one file per secret")
    durability: Durability = Field(
        default="strict", description="STEPPE_DURABILITY: strict | balanced (synchronous_commit=off)"
    )

    redis: RedisSettings = Field(default_factory=RedisSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    coordinator: CoordinatorSettings = Field(default_factory=CoordinatorSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    tracing: Annotated[TracingSettings, NoDecode] = Field(default_factory=TracingSettings)

    @field_validator("secrets", mode="before")
    @classmethod
    def _split_secret_names(cls, value: Any) -> Any:
        # `STEPPE_SECRETS=API_TOKEN,DB_PASSWORD` (commas and/or spaces), not JSON.
        return value.replace(",", " ").split() if isinstance(value, str) else value

    @field_validator("durability", mode="before")
    @classmethod
    def _durability(cls, value: Any) -> Any:
        return parse_durability(value)

    @field_validator("tracing", mode="before")
    @classmethod
    def _tracing_shorthand(cls, value: Any) -> Any:
        # `STEPPE_TRACING=console` (spans on stderr) or `STEPPE_TRACING=http://collector:4318`.
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.lower() in ("", "off", "none", "false"):
            return {}
        return {"console": True} if text.lower() == "console" else {"endpoint": text}

    @property
    def dev_state_path(self) -> Path:
        return self.home / DEV_STATE_FILE

    def _dev_state(self) -> dict[str, dict[str, object]]:
        path = self.dev_state_path
        if not path.exists():
            return {}
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"{path} is unreadable ({e}); run `steppe dev down` then `steppe dev up`") from e
        return data if isinstance(data, dict) else {}

    def resolved_redis_url(self) -> str:
        """The configured Redis URL, else the one `steppe dev up` recorded."""
        if self.redis_url:
            return self.redis_url
        url = self._dev_state().get("redis", {}).get("url")
        if not url:
            raise InfrastructureError(
                "no Redis configured: set STEPPE_REDIS_URL, or run `steppe dev up` to start the "
                f"embedded servers (STEPPE_HOME={self.home})"
            )
        return str(url)

    def resolved_database_url(self) -> str:
        """The configured PostgreSQL URL (libpq form), else the one `steppe dev up` recorded."""
        if self.database_url:
            return normalise_database_url(self.database_url)
        url = self._dev_state().get("postgres", {}).get("url")
        if not url:
            raise InfrastructureError(
                "no PostgreSQL configured: set STEPPE_DATABASE_URL, or run `steppe dev up` to start "
                f"the embedded servers (STEPPE_HOME={self.home})"
            )
        return str(url)

    def resolved_migration_url(self) -> str:
        """Where `steppe db upgrade` connects: STEPPE_DATABASE_URL (give it the schema owner's
        credentials there), else the owner role's URL `steppe dev up` recorded."""
        if self.database_url:
            return normalise_database_url(self.database_url)
        record = self._dev_state().get("postgres", {})
        if record.get("url") and record.get("migration_url"):
            return str(record["migration_url"])
        return self.resolved_database_url()


def normalise_database_url(url: str) -> str:
    """Accept SQLAlchemy-style URLs too; return the libpq form psycopg takes."""
    for prefix in ("postgresql+psycopg://", "postgresql+psycopg2://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix) :]
    return url


def display_url(url: str) -> str:
    """A database `url` with any password replaced by `***`, for messages and logs."""
    parts = urlsplit(normalise_database_url(url))
    if parts.password is None:
        return parts.geturl()
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def sqlalchemy_url(url: str) -> str:
    """The SQLAlchemy form (psycopg 3 driver) of a libpq URL."""
    return "postgresql+psycopg://" + normalise_database_url(url)[len("postgresql://") :]


# -- timing settings checked against each other (every process at start) ---------------------------

# A live worker extends its steps' leases once per heartbeat, and its liveness loop may run up to
# one more tick late: another worker may take a step over only after this many heartbeats.
VISIBILITY_HEARTBEATS = 3
# A coordinator renews its leases every `lease_ttl / LEASE_RENEWALS`, between reads that block up to
# `redis.block_ms`: a read may not outlast one renewal interval.
LEASE_RENEWALS = 3


def _positive(problems: list[str], variable: str, value: float) -> bool:
    if value > 0:
        return True
    problems.append(f"{variable} is {value:g}; it must be a positive number of seconds")
    return False


def timing_problems(settings: Settings, role: str) -> list[str]:
    """What is wrong with the timing settings a `role` ("worker" or "coordinator") process
    depends on, each naming the settings to change; empty when they fit together."""
    problems: list[str] = []
    if settings.redis.block_ms < 1:
        problems.append(f"STEPPE_REDIS__BLOCK_MS is {settings.redis.block_ms}; it must be at least 1 (milliseconds)")
    if role == "worker":
        w, times = settings.worker, VISIBILITY_HEARTBEATS
        beat = _positive(problems, "STEPPE_WORKER__HEARTBEAT_INTERVAL", w.heartbeat_interval)
        visible = _positive(problems, "STEPPE_WORKER__VISIBILITY_TIMEOUT", w.visibility_timeout)
        if beat and visible and w.visibility_timeout < times * w.heartbeat_interval:
            problems.append(
                f"STEPPE_WORKER__VISIBILITY_TIMEOUT ({w.visibility_timeout:g} s) is shorter than {times} x "
                f"STEPPE_WORKER__HEARTBEAT_INTERVAL ({w.heartbeat_interval:g} s): a worker extends its steps' "
                "leases once per heartbeat, so other workers would take over steps that are still running, "
                "and a dead worker's steps would never be reclaimed. Set STEPPE_WORKER__VISIBILITY_TIMEOUT "
                f"to at least {times * w.heartbeat_interval:g} or STEPPE_WORKER__HEARTBEAT_INTERVAL to at "
                f"most {w.visibility_timeout / times:g}"
            )
    if role == "coordinator":
        c, block_s, renew = settings.coordinator, settings.redis.block_ms / 1000, LEASE_RENEWALS
        _positive(problems, "STEPPE_COORDINATOR__RECONCILE_INTERVAL", c.reconcile_interval)
        if _positive(problems, "STEPPE_COORDINATOR__LEASE_TTL", c.lease_ttl) and block_s > c.lease_ttl / renew:
            problems.append(
                f"STEPPE_REDIS__BLOCK_MS ({settings.redis.block_ms} ms) is longer than the coordinator's "
                f"lease renewal interval, STEPPE_COORDINATOR__LEASE_TTL / {renew} ({c.lease_ttl / renew:g} s): "
                "a coordinator blocked in a read would let its partition leases expire and lose them to "
                f"its peers. Set STEPPE_COORDINATOR__LEASE_TTL to at least {block_s * renew:g} or "
                f"STEPPE_REDIS__BLOCK_MS to at most {int(c.lease_ttl / renew * 1000)}"
            )
    return problems


def check_timing(settings: Settings, role: str) -> None:
    """Refuse to start a `role` process whose timing settings contradict each other (ConfigError)."""
    problems = timing_problems(settings, role)
    if problems:
        raise ConfigError(f"the {role} cannot start with these timing settings: " + "; ".join(problems))
