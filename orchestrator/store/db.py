"""PostgreSQL plumbing: SQLAlchemy engines, Alembic migrations run in-process, reachability checks."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa
import structlog
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError

from orchestrator.errors import ConfigError, DatabaseUnavailableError
from orchestrator.settings import display_url, normalise_database_url, sqlalchemy_url

log = structlog.get_logger(__name__)

MIGRATIONS_DIR_ENV = "STEPPE_MIGRATIONS_DIR"
# The project is installed editable: migrations/ sits next to the orchestrator package.
_PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _unavailable(url: str, error: BaseException) -> DatabaseUnavailableError:
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return DatabaseUnavailableError(
        f"PostgreSQL is unreachable at {display_url(url)} ({reason}); start the embedded servers "
        "with `steppe dev up`, or set STEPPE_DATABASE_URL to a running PostgreSQL"
    )


def create_engine(url: str, *, pool_size: int = 4, **kwargs: Any) -> sa.Engine:
    """A SQLAlchemy engine on the psycopg 3 driver for a libpq (or SQLAlchemy-style) URL.

    `pool_size` applies to the default queue pool; pass `poolclass=sa.NullPool` for none.
    """
    if "poolclass" not in kwargs:
        kwargs["pool_size"] = pool_size
        kwargs.setdefault("pool_pre_ping", True)
    return sa.create_engine(sqlalchemy_url(url), **kwargs)


def check_database(url: str, *, timeout: int = 5) -> None:
    """Raise DatabaseUnavailableError (naming the URL and the fix) unless `SELECT 1` succeeds."""
    try:
        with psycopg.connect(normalise_database_url(url), connect_timeout=timeout) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as e:
        raise _unavailable(url, e) from e


def migrations_dir() -> Path:
    """The Alembic script directory: $STEPPE_MIGRATIONS_DIR, else the project's `migrations/`."""
    configured = os.environ.get(MIGRATIONS_DIR_ENV)
    candidates = [Path(configured)] if configured else [_PROJECT_ROOT / "migrations"]
    for candidate in candidates:
        if (candidate / "env.py").is_file():
            return candidate
    raise ConfigError(
        f"Alembic migrations not found in {candidates[0]}; install Steppe from its source tree "
        f"(`pip install -e .`) or set {MIGRATIONS_DIR_ENV} to the `migrations` directory"
    )


def alembic_config(url: str) -> Config:
    """An Alembic config for `url` that does not touch logging (the caller configured it)."""
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    # Passed as an attribute, not `sqlalchemy.url`: ConfigParser would choke on `%` in passwords.
    config.attributes["url"] = normalise_database_url(url)
    config.attributes["configure_logging"] = False
    return config


def _run(url: str, action: str, revision: str, *, event: str) -> None:
    config = alembic_config(url)
    try:
        getattr(command, action)(config, revision)
    except sa.exc.OperationalError as e:
        raise _unavailable(url, e.orig or e) from e
    except CommandError as e:
        raise ConfigError(f"cannot {action} to {revision!r}: {e}; `steppe db current` shows the state") from e
    log.info(event, url=display_url(url), target=revision, revision=current_revision(url))


def upgrade(url: str, revision: str = "head") -> None:
    """Apply migrations up to `revision` (default: the newest)."""
    _run(url, "upgrade", revision, event="database_upgraded")


def downgrade(url: str, revision: str) -> None:
    """Revert migrations down to `revision` (`base` removes every Steppe table)."""
    _run(url, "downgrade", revision, event="database_downgraded")


def current_revision(url: str) -> str | None:
    """The revision the database is at, or None when no migration has been applied."""
    engine = sa.create_engine(sqlalchemy_url(url), poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except sa.exc.OperationalError as e:
        raise _unavailable(url, e.orig or e) from e
    finally:
        engine.dispose()


def head_revision() -> str | None:
    """The newest revision shipped with this version of Steppe."""
    return ScriptDirectory(str(migrations_dir())).get_current_head()
