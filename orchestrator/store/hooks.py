"""Hook definitions and execution records in `workflow_hooks`."""

from __future__ import annotations

from typing import Any

from psycopg.types.json import Jsonb

from orchestrator.errors import SubmitError
from orchestrator.store import hook_executions
from orchestrator.store.hook_executions import HookExecutionRow
from orchestrator.store.runs import RunStore
from patterns.hooks import HookDef


class HookStore:
    """CRUD for hooks plus the counters every execution updates."""

    def __init__(self, store: RunStore) -> None:
        self.store = store

    def add(
        self, *, name: str, kind: str, events: list[str], handler: str, args: dict[str, Any], workflow: str | None
    ) -> int:
        with self.store.connection() as conn, conn.transaction():
            row = conn.execute(
                'INSERT INTO workflow_hooks (name, kind, events, workflow, handler, "with")'
                " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (name) DO NOTHING RETURNING hook_id",
                (name, kind, Jsonb(events), workflow, handler, Jsonb(args)),
            ).fetchone()
        if row is None:
            raise SubmitError(f"a hook named {name!r} exists already; remove it first (`steppe hooks remove {name}`)")
        return int(row["hook_id"])

    def ensure(self, hook: HookDef) -> int:
        """Upsert a workflow-defined hook by name; returns its id (so it gets counters too)."""
        with self.store.connection() as conn, conn.transaction():
            row = conn.execute(
                'INSERT INTO workflow_hooks (name, kind, events, workflow, handler, "with")'
                " VALUES (%s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (name) DO UPDATE SET kind = EXCLUDED.kind, events = EXCLUDED.events,"
                ' handler = EXCLUDED.handler, "with" = EXCLUDED."with", workflow = EXCLUDED.workflow'
                " RETURNING hook_id",
                (hook.name, hook.kind, Jsonb(list(hook.events)), hook.workflow, hook.handler, Jsonb(hook.args)),
            ).fetchone()
        assert row is not None
        return int(row["hook_id"])

    def remove(self, name: str) -> bool:
        with self.store.connection() as conn, conn.transaction():
            cur = conn.execute("DELETE FROM workflow_hooks WHERE name = %s", (name,))
            return cur.rowcount > 0

    def all(self) -> list[dict[str, Any]]:
        with self.store.connection() as conn:
            return conn.execute(
                'SELECT hook_id, name, kind, events, workflow, handler, "with", enabled, trigger_count,'
                " error_count, last_triggered_at, last_error FROM workflow_hooks ORDER BY name"
            ).fetchall()

    def global_hooks(self) -> list[HookDef]:
        """Enabled hooks added with `steppe hooks add` (workflow-defined ones come with their workflow)."""
        with self.store.connection() as conn:
            rows = conn.execute(
                'SELECT hook_id, name, kind, events, workflow, handler, "with" FROM workflow_hooks'
                " WHERE enabled AND name NOT LIKE 'yaml:%%'"
            ).fetchall()
        return [
            HookDef(
                hook_id=r["hook_id"],
                name=r["name"],
                kind=r["kind"],
                events=tuple(r["events"]),
                handler=r["handler"],
                args=r["with"],
                workflow=r["workflow"],
            )
            for r in rows
        ]

    def pending_executions(self, partitions: list[int], skip: set[tuple[str, str]]) -> list[HookExecutionRow]:
        """Executions of these partitions not finished yet, except the (run id, step key) pairs in `skip`."""
        if not partitions:
            return []
        with self.store.connection() as conn:
            return hook_executions.load_pending(conn, partitions, skip)
