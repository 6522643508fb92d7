"""`steppe admin export` / `import`: runs as JSON lines, one run a line, re-importable.

A line is `{"format": "steppe.run/1", "run": {...}, "steps": [...], "events": [...]}`: the run's
row (definition, inputs, plan, state, status, times…), its step rows and its whole event log,
each as PostgreSQL renders the row (`to_jsonb`), so every column round-trips, those later
migrations add included. Importing inserts them back with `jsonb_populate_record(set)`;
a run that is stored already is refused, and then nothing of the file is imported.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from orchestrator.errors import ConflictError, SubmitError
from orchestrator.store.runs import RunStore

FORMAT = "steppe.run/1"
CHUNK = 100  # runs read or written per round trip / transaction

_RUNS = """
WITH RECURSIVE tree(run_id) AS (
    SELECT run_id FROM workflow_runs WHERE run_id = ANY(%(ids)s)
    UNION
    SELECT w.run_id FROM workflow_runs w JOIN tree t ON w.parent_run_id = t.run_id
)
SELECT r.run_id, to_jsonb(r) AS run,
       (SELECT coalesce(jsonb_agg(to_jsonb(s) ORDER BY s.step_key), '[]') FROM workflow_steps s
        WHERE s.run_id = r.run_id) AS steps,
       (SELECT coalesce(jsonb_agg(to_jsonb(e) ORDER BY e.seq), '[]') FROM workflow_events e
        WHERE e.run_id = r.run_id) AS events
FROM workflow_runs r JOIN tree USING (run_id)
ORDER BY r.depth, r.created_at, r.run_id
"""


def export_lines(store: RunStore, run_ids: Sequence[str]) -> Iterator[str]:
    """One JSON line per run of `run_ids` and of their child runs at every level, parents first."""
    seen: set[str] = set()
    ids = list(dict.fromkeys(run_ids))
    for start in range(0, len(ids), CHUNK):
        with store.connection() as conn:
            rows = conn.execute(_RUNS, {"ids": ids[start : start + CHUNK]}).fetchall()
        for row in rows:
            if row["run_id"] in seen:
                continue
            seen.add(row["run_id"])
            doc = {"format": FORMAT, "run": row["run"], "steps": row["steps"], "events": row["events"]}
            yield orjson.dumps(doc).decode()


def missing_runs(store: RunStore, run_ids: Sequence[str]) -> list[str]:
    """Which of `run_ids` are not stored."""
    with store.connection() as conn:
        found = {
            r["run_id"]
            for r in conn.execute("SELECT run_id FROM workflow_runs WHERE run_id = ANY(%s)", (list(run_ids),))
        }
    return [r for r in run_ids if r not in found]


@dataclass(frozen=True, slots=True)
class ImportResult:
    runs: int
    steps: int
    events: int


def parse_lines(lines: Iterable[str], *, source: str) -> list[dict[str, Any]]:
    """The run documents of an export, checked line by line (SubmitError naming the line)."""
    docs: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            doc = orjson.loads(line)
        except orjson.JSONDecodeError as e:
            raise SubmitError(f"{source}:{number}: not JSON ({e}); give a file written by `steppe admin export`") from e
        if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("run"), dict):
            raise SubmitError(
                f'{source}:{number}: not a run exported by `steppe admin export` (expected "format": "{FORMAT}")'
            )
        if not isinstance(doc["run"].get("run_id"), str):
            raise SubmitError(f"{source}:{number}: the run has no run_id")
        docs.append(doc)
    return docs


def import_docs(store: RunStore, docs: Sequence[dict[str, Any]], *, source: str) -> ImportResult:
    """Insert the runs of `docs` (parents first); refuse them all if any is stored already."""
    ids = [d["run"]["run_id"] for d in docs]
    duplicates = sorted({r for r in ids if ids.count(r) > 1})
    if duplicates:
        raise SubmitError(f"{source} holds run(s) {', '.join(duplicates[:5])} more than once; nothing was imported")
    present = sorted(set(ids) - set(missing_runs(store, ids))) if ids else []
    if present:
        shown = ", ".join(present[:5]) + (f" and {len(present) - 5} more" if len(present) > 5 else "")
        raise ConflictError(
            f"{len(present)} of the {len(ids)} run(s) in {source} are stored already ({shown}); nothing was "
            "imported. Import into a database without them, or remove their lines from the file"
        )
    ordered = sorted(docs, key=lambda d: int(d["run"].get("depth") or 0))
    known = set(ids)
    steps = events = 0
    for start in range(0, len(ordered), CHUNK):
        chunk = ordered[start : start + CHUNK]
        with store.connection() as conn, conn.transaction():
            parents = {d["run"].get("parent_run_id") for d in chunk} - known - {None}
            stored_parents = set(parents) - set(missing_runs(store, sorted(parents))) if parents else set()
            for doc in chunk:
                run = dict(doc["run"])
                if run.get("parent_run_id") and run["parent_run_id"] not in known | stored_parents:
                    run["parent_run_id"] = None  # its parent was neither exported nor is stored: a top-level run
                conn.execute(
                    "INSERT INTO workflow_runs SELECT * FROM jsonb_populate_record(NULL::workflow_runs, %s::jsonb)",
                    (orjson.dumps(run).decode(),),
                )
                for table, rows in (
                    ("workflow_steps", doc.get("steps") or []),
                    ("workflow_events", doc.get("events") or []),
                ):
                    if rows:
                        conn.execute(
                            f"INSERT INTO {table} SELECT * FROM jsonb_populate_recordset(NULL::{table}, %s::jsonb)",  # noqa: S608
                            (orjson.dumps(rows).decode(),),
                        )
                steps += len(doc.get("steps") or [])
                events += len(doc.get("events") or [])
    return ImportResult(runs=len(ordered), steps=steps, events=events)
