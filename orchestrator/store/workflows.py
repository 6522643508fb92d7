"""Deployed workflows: versions of a workflow name, content-addressed (`workflow_versions`).

`deploy` stores a document as the next version of its name unless a version with the same
canonical definition (SHA-256 of its JSON with sorted keys) exists, which it returns instead;
concurrent deploys of one name are serialised by a transaction-scoped advisory lock on it.
Runs keep their own copy of the definition (`workflow_runs.definition`), so deploying a new
version never changes a run already started from an older one.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

import orjson
from psycopg.types.json import Jsonb

from orchestrator.errors import SubmitError
from orchestrator.store.runs import RunStore

REF = re.compile(r"^(?P<name>[A-Za-z0-9._-]{1,128})(?:@(?P<version>[^@]*))?$")


@dataclass(frozen=True, slots=True)
class Deployed:
    name: str
    version: int
    created: bool  # False when identical content was deployed before (that version is returned)
    digest: str


def parse_ref(ref: str) -> tuple[str, int | None]:
    """`name` or `name@VERSION` → (name, version or None for the newest)."""
    match = REF.match(ref.strip())
    if match is None:
        raise SubmitError(
            f"{ref!r} is not a workflow reference: write NAME or NAME@VERSION (name [A-Za-z0-9._-], version a number)"
        )
    version = match.group("version")
    if version is None or version == "latest":
        return match.group("name"), None
    if not version.isdigit() or int(version) < 1:
        raise SubmitError(f"{ref!r}: the version after @ is a positive number (e.g. {match.group('name')}@3)")
    return match.group("name"), int(version)


def format_ref(name: str, version: int | None) -> str:
    return name if version is None else f"{name}@{version}"


def digest_of(definition: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(definition, option=orjson.OPT_SORT_KEYS)).hexdigest()


class WorkflowStore:
    """Reads and writes `workflow_versions` through a `RunStore`'s pool."""

    def __init__(self, store: RunStore) -> None:
        self.store = store

    def deploy(self, name: str, definition: dict[str, Any], source: str) -> Deployed:
        digest = digest_of(definition)
        with self.store.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('steppe.workflow:' || %s))", (name,))
            existing = conn.execute(
                "SELECT version FROM workflow_versions WHERE name = %s AND digest = %s", (name, digest)
            ).fetchone()
            if existing is not None:
                return Deployed(name, int(existing["version"]), False, digest)
            row = conn.execute(
                """
                INSERT INTO workflow_versions (name, version, digest, definition, source)
                SELECT %s, coalesce(max(version), 0) + 1, %s, %s, %s FROM workflow_versions WHERE name = %s
                RETURNING version
                """,
                (name, digest, Jsonb(definition), source, name),
            ).fetchone()
            assert row is not None
            return Deployed(name, int(row["version"]), True, digest)

    def get(self, name: str, version: int | None = None) -> dict[str, Any]:
        """The row of `name@version` (the newest without a version); SubmitError saying what exists."""
        with self.store.connection() as conn:
            if version is None:
                row = conn.execute(
                    "SELECT * FROM workflow_versions WHERE name = %s ORDER BY version DESC LIMIT 1", (name,)
                ).fetchone()
            else:
                row = conn.execute(
                    "SELECT * FROM workflow_versions WHERE name = %s AND version = %s", (name, version)
                ).fetchone()
            if row is not None:
                return dict(row)
            newest = conn.execute("SELECT max(version) AS v FROM workflow_versions WHERE name = %s", (name,)).fetchone()
        if newest is None or newest["v"] is None:
            raise WorkflowNotDeployedError(
                f"no deployed workflow {name!r}: deploy it first (`steppe workflows deploy FILE`); "
                "`steppe workflows list` shows what is deployed"
            )
        raise WorkflowNotDeployedError(
            f"workflow {name!r} has no version {version}: its versions are 1..{newest['v']} "
            f"(`steppe workflows show {name}`)"
        )

    def list_latest(self) -> list[dict[str, Any]]:
        """One row per name: its newest version, how many versions and when it was last deployed."""
        with self.store.connection() as conn:
            return conn.execute(
                """
                SELECT DISTINCT ON (name) name, version, digest, created_at,
                       count(*) OVER (PARTITION BY name) AS versions,
                       definition->>'description' AS description
                FROM workflow_versions ORDER BY name, version DESC
                """
            ).fetchall()

    def versions(self, name: str) -> list[dict[str, Any]]:
        with self.store.connection() as conn:
            return conn.execute(
                "SELECT name, version, digest, created_at FROM workflow_versions WHERE name = %s ORDER BY version",
                (name,),
            ).fetchall()


class WorkflowNotDeployedError(SubmitError):
    """The named workflow (or that version of it) was never deployed."""

    exit_code = 2
