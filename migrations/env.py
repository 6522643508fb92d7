"""Alembic environment: Steppe's migrations against the caller's URL or the configured database."""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy import create_engine, pool, text

from orchestrator.settings import Settings, sqlalchemy_url
from orchestrator.store.tables import metadata

config = context.config
# `orchestrator.store.db` runs migrations in-process and owns logging there; only the
# `alembic` command line configures logging from alembic.ini.
if config.config_file_name is not None and config.attributes.get("configure_logging", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = metadata

# Serialises concurrent upgrades (two `steppe run`s, parallel test sessions) on one database.
MIGRATION_LOCK_ID = 0x57E99E


def database_url() -> str:
    """SQLAlchemy URL: given by `orchestrator.store.db`, else STEPPE_DATABASE_URL or `steppe dev up`."""
    url = config.attributes.get("url") or Settings().resolved_database_url()
    return sqlalchemy_url(str(url))


def run_migrations_offline() -> None:
    context.configure(
        url=database_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(database_url(), poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            context.configure(connection=connection, target_metadata=target_metadata, compare_type=True)
            with context.begin_transaction():
                connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK_ID})
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
