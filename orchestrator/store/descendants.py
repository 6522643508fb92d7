"""How many child runs sit under one top-level run, all levels together (the descendants limit)."""

from __future__ import annotations

from collections.abc import Sequence

from orchestrator.store.runs import RunStore

# Walks the parent links (indexed by ix_workflow_runs_parent_run_id) and stops after `cap` rows,
# so that counting costs at most the limit, however large the tree.
_COUNT = """
WITH RECURSIVE tree(run_id) AS (
    SELECT run_id FROM workflow_runs WHERE parent_run_id = %(root)s
    UNION ALL
    SELECT w.run_id FROM workflow_runs w JOIN tree t ON w.parent_run_id = t.run_id
)
SELECT count(*) AS n FROM (SELECT 1 FROM tree LIMIT %(cap)s) AS capped
"""


def count_descendants(store: RunStore, root_run_id: str, *, cap: int) -> int:
    """Child runs under `root_run_id` at every level, counted up to `cap`."""
    with store.connection() as conn:
        row = conn.execute(_COUNT, {"root": root_run_id, "cap": cap}).fetchone()
    return int(row["n"]) if row else 0


def existing_runs(store: RunStore, run_ids: Sequence[str]) -> set[str]:
    """Which of `run_ids` exist already (creating them again is a no-op, never over a limit)."""
    return set(store.run_outcomes(list(run_ids)))
