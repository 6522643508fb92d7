"""Retention's SQL: prune finished runs in bounded batches, and find the runs a prune would take.

The deleting is done by `steppe_prune_finished_runs` (migration 0005), the only way events are
ever deleted: one transaction per batch, one pruner at a time across the fleet (an advisory
transaction lock), only terminal runs finished before the cutoff, with their child runs.
`prunable_runs` selects what it would take, read-only, for `--dry-run` and `steppe admin export`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from orchestrator.state import TERMINAL_RUN_STATUSES
from orchestrator.store.runs import RunStore

# The tables a prune deletes from, in the order steppe_prune_finished_runs reports them.
PRUNED_TABLES = ("runs", "steps", "events", "hook_executions", "commands", "dead_letters")
MAX_BATCH_RUNS = 10_000  # what the SQL function accepts


@dataclass(frozen=True, slots=True)
class PruneResult:
    """What one batch deleted, by table; `busy` when another pruner held the lock (nothing deleted)."""

    busy: bool = False
    runs: int = 0
    steps: int = 0
    events: int = 0
    hook_executions: int = 0
    commands: int = 0
    dead_letters: int = 0

    def counts(self) -> dict[str, int]:
        return {table: getattr(self, table) for table in PRUNED_TABLES}

    def __add__(self, other: PruneResult) -> PruneResult:
        return PruneResult(False, *(getattr(self, t) + getattr(other, t) for t in PRUNED_TABLES))

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def cutoff_before(store: RunStore, seconds: float) -> dt.datetime:
    """PostgreSQL's now minus `seconds`: the cutoff the server checks against (no clock skew)."""
    with store.connection() as conn:
        row = conn.execute("SELECT now() - make_interval(secs => %s) AS cutoff", (seconds,)).fetchone()
    assert row is not None
    return row["cutoff"]  # type: ignore[no-any-return]


def prune_batch(store: RunStore, cutoff: dt.datetime, *, max_runs: int) -> PruneResult:
    """Delete at most `max_runs` top-level finished runs (with their child runs) finished before `cutoff`."""
    with store.connection() as conn, conn.transaction():
        row = conn.execute(
            "SELECT * FROM steppe_prune_finished_runs(%s, %s)", (cutoff, min(max_runs, MAX_BATCH_RUNS))
        ).fetchone()
    assert row is not None
    return PruneResult(bool(row["busy"]), *(int(row[table]) for table in PRUNED_TABLES))


# Mirrors the function's rules: terminal top-level runs finished before the cutoff without an
# unprocessed command, whose child runs at every level are all so too.
_PRUNABLE = """
WITH RECURSIVE roots AS (
    SELECT r.run_id, r.finished_at FROM workflow_runs r
    WHERE r.parent_run_id IS NULL AND r.finished_at < %(cutoff)s AND r.status = ANY(%(terminal)s)
      AND (r.finished_at, r.run_id) > (%(after_at)s, %(after_id)s)
    ORDER BY r.finished_at, r.run_id
    LIMIT %(limit)s
), tree(root, run_id) AS (
    SELECT run_id, run_id FROM roots
    UNION ALL
    SELECT t.root, w.run_id FROM workflow_runs w JOIN tree t ON w.parent_run_id = t.run_id
)
SELECT t.root, t.run_id, roots.finished_at AS root_finished_at,
       (w.finished_at < %(cutoff)s AND w.status = ANY(%(terminal)s)
        AND NOT EXISTS (SELECT FROM run_commands c WHERE c.run_id = w.run_id AND c.processed_at IS NULL)) AS ready
FROM tree t JOIN workflow_runs w ON w.run_id = t.run_id JOIN roots ON roots.run_id = t.root
ORDER BY roots.finished_at, t.root, w.depth
"""

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def prunable_runs(store: RunStore, cutoff: dt.datetime, *, page: int = 500) -> list[list[str]]:
    """Every tree a prune with `cutoff` would delete now, oldest first: [root, descendants…] each."""
    trees: list[list[str]] = []
    after_at, after_id = _EPOCH, ""
    terminal = sorted(str(s) for s in TERMINAL_RUN_STATUSES)
    while True:
        params = {"cutoff": cutoff, "terminal": terminal, "after_at": after_at, "after_id": after_id, "limit": page}
        with store.connection() as conn:
            rows = conn.execute(_PRUNABLE, params).fetchall()
        if not rows:
            return trees
        grouped: dict[str, list[dict[str, object]]] = {}
        for row in rows:
            grouped.setdefault(str(row["root"]), []).append(row)
        for root, members in grouped.items():
            if all(m["ready"] for m in members):
                trees.append([str(m["run_id"]) for m in members])
            after_at, after_id = members[0]["root_finished_at"], root  # type: ignore[assignment]
        if len(grouped) < page:
            return trees


def row_counts(store: RunStore, run_ids: Sequence[str]) -> PruneResult:
    """How many rows of each table belong to `run_ids` (what pruning them deletes)."""
    ids = list(run_ids)
    with store.connection() as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM workflow_runs WHERE run_id = ANY(%(ids)s)) AS runs,"
            " (SELECT count(*) FROM workflow_steps WHERE run_id = ANY(%(ids)s)) AS steps,"
            " (SELECT count(*) FROM workflow_events WHERE run_id = ANY(%(ids)s)) AS events,"
            " (SELECT count(*) FROM hook_executions WHERE run_id = ANY(%(ids)s)) AS hook_executions,"
            " (SELECT count(*) FROM run_commands WHERE run_id = ANY(%(ids)s)) AS commands,"
            " (SELECT count(*) FROM dead_letters WHERE run_id = ANY(%(ids)s)) AS dead_letters",
            {"ids": ids},
        ).fetchone()
    assert row is not None
    return PruneResult(False, *(int(row[table]) for table in PRUNED_TABLES))


def oldest_finished_at(store: RunStore) -> dt.datetime | None:
    """When the oldest finished top-level run still stored finished (None: there is none)."""
    with store.connection() as conn:
        row = conn.execute(
            "SELECT min(finished_at) AS oldest FROM workflow_runs"
            " WHERE finished_at IS NOT NULL AND parent_run_id IS NULL"
        ).fetchone()
    return None if row is None else row["oldest"]
