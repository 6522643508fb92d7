"""`steppe db upgrade | downgrade | current`: the PostgreSQL schema, through Alembic."""

from __future__ import annotations

import typer

from orchestrator.cli.common import console, load_settings, report_errors


def _database_url() -> str:
    from orchestrator.store.db import check_database

    url = load_settings().resolved_migration_url()
    check_database(url)
    return url


@report_errors
def upgrade(
    revision: str = typer.Option("head", "--revision", "-r", help="Target revision (default: newest)"),
) -> None:
    """Apply migrations (creates the tables on a new database)."""
    from orchestrator.settings import display_url
    from orchestrator.store import db

    url = _database_url()
    before = db.current_revision(url)
    db.upgrade(url, revision)
    after = db.current_revision(url)
    target = display_url(url)
    if before == after:
        console.print(f"database {target} already at revision {after}", soft_wrap=True)
    else:
        console.print(f"database {target} upgraded from {before or 'empty'} to {after}", soft_wrap=True)


@report_errors
def downgrade(revision: str = typer.Argument(..., help="Target revision; `base` drops every table")) -> None:
    """Revert migrations down to REVISION."""
    from orchestrator.settings import display_url
    from orchestrator.store import db

    url = _database_url()
    before = db.current_revision(url)
    db.downgrade(url, revision)
    after = db.current_revision(url)
    console.print(
        f"database {display_url(url)} downgraded from {before or 'empty'} to {after or 'base'}", soft_wrap=True
    )


@report_errors
def current() -> None:
    """Show the database's revision and the newest one this Steppe ships."""
    from orchestrator.settings import display_url
    from orchestrator.store import db

    url = _database_url()
    revision, head = db.current_revision(url), db.head_revision()
    state = "up to date" if revision == head else "run `steppe db upgrade`"
    console.print(f"database {display_url(url)}: revision {revision or 'none'} (head {head}; {state})", soft_wrap=True)


def register(app: typer.Typer) -> None:
    db_app = typer.Typer(help="Database schema migrations (Alembic).")
    db_app.command("upgrade")(upgrade)
    db_app.command("downgrade")(downgrade)
    db_app.command("current")(current)
    app.add_typer(db_app, name="db")
