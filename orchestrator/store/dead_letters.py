"""Dead-letter repository: the `dead_letters` table, filled from the coordinator and the `{ns}:dlq` stream.

Every row is written by `write` (one INSERT, ignoring rows already there). The coordinator
writes one when it applies a dead-lettered step (`RunStore.commit_batch`); that row knows the
run and step but not the original message. A worker's entry in the
`{ns}:dlq` stream knows the message, and is the only trace of an entry that could not be
decoded (it belongs to no run). `sync_from_stream` merges the stream into the table (rows are
keyed by queue and original stream id, so the merge is idempotent); the CLI runs it before
reading.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import psycopg
import redis
from psycopg.types.json import Jsonb

from orchestrator.errors import RedisUnavailableError, SteppeError, SubmitError
from orchestrator.keys import Keys
from patterns.dead_letter import DeadLetter, DeadLetterReason, minid_before, overrides_payload, replay_problem

if TYPE_CHECKING:  # runs.py writes through `write` below
    from orchestrator.store.runs import RunStore

COLUMNS = (
    "dead_letter_id, run_id, step_key, attempt, queue, stream_id, delivery_count, reason, error, payload, raw,"
    " status, created_at, replayed_at"
)
SYNC_LIMIT = 10_000  # newest stream entries merged per sync; older ones were merged by earlier syncs


class DeadLetterNotFoundError(SteppeError):
    """No dead letter has the given id."""

    exit_code = 2


class DeadLetterStore:
    """Reads and maintains dead-letter rows through a `RunStore`'s connection pool."""

    def __init__(self, runs: RunStore) -> None:
        self.runs = runs

    def find(
        self,
        *,
        run_id: str | None = None,
        status: str | None = None,
        reason: str | None = None,
        queue: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Newest first, filtered by any of run, status (`dead`, `replayed`), reason (in any of its
        spellings, `DeadLetterReason.spellings`) and queue."""
        clauses: list[str] = []
        params: list[Any] = []
        for column, value in (("run_id", run_id), ("status", status), ("queue", queue)):
            if value:
                clauses.append(f"{column} = %s")
                params.append(value)
        if reason:
            clauses.append("reason = ANY(%s)")
            params.append(DeadLetterReason.spellings(reason))
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        with self.runs.connection() as conn:
            return conn.execute(
                f"SELECT {COLUMNS} FROM dead_letters {where} ORDER BY created_at DESC, dead_letter_id DESC"  # noqa: S608 - fixed columns
                " LIMIT %s",
                (*params, limit),
            ).fetchall()

    def get(self, dead_letter_id: int) -> dict[str, Any]:
        with self.runs.connection() as conn:
            row = conn.execute(
                f"SELECT {COLUMNS} FROM dead_letters WHERE dead_letter_id = %s",  # noqa: S608 - fixed columns
                (dead_letter_id,),
            ).fetchone()
        if row is None:
            raise DeadLetterNotFoundError(
                f"no dead letter {dead_letter_id}; list them with `steppe dlq list` (ids are in the first column)"
            )
        return row

    def run_status(self, run_id: str) -> str | None:
        with self.runs.connection() as conn:
            row = conn.execute("SELECT status FROM workflow_runs WHERE run_id = %s", (run_id,)).fetchone()
        return None if row is None else str(row["status"])

    def mark_replayed(self, dead_letter_id: int) -> None:
        with self.runs.connection() as conn:
            conn.execute(
                "UPDATE dead_letters SET status = 'replayed', replayed_at = now() WHERE dead_letter_id = %s",
                (dead_letter_id,),
            )

    def count(self, *, before: dt.datetime) -> int:
        """Rows created before `before` (what `purge` would delete)."""
        with self.runs.connection() as conn:
            row = conn.execute("SELECT count(*) AS n FROM dead_letters WHERE created_at < %s", (before,)).fetchone()
        return int(row["n"]) if row else 0

    def purge(self, *, before: dt.datetime) -> int:
        """Delete the rows created before `before`; returns how many."""
        with self.runs.connection() as conn:
            cursor = conn.execute("DELETE FROM dead_letters WHERE created_at < %s", (before,))
            return cursor.rowcount

    def merge(self, records: Sequence[DeadLetter]) -> int:
        """Insert stream records, or complete the coordinator's rows with their message; returns rows written.

        Rows that already hold their message are skipped before any INSERT is tried, so that
        repeated merges do not use up `dead_letter_id` values (the ids users type stay small).
        """
        if not records:
            return 0
        with self.runs.connection() as conn, conn.transaction(), conn.cursor() as cur:
            known = {
                (row["queue"], row["stream_id"]): row["complete"]
                for row in cur.execute(
                    "SELECT queue, stream_id, raw IS NOT NULL AS complete FROM dead_letters"
                    " WHERE (queue, stream_id) IN (SELECT * FROM unnest(%s::text[], %s::text[]))",
                    ([r.queue for r in records], [r.stream_id for r in records]),
                ).fetchall()
            }
            new = [r for r in records if (r.queue, r.stream_id) not in known]
            incomplete = [r for r in records if known.get((r.queue, r.stream_id)) is False]
            write(cur, new)
            if incomplete:
                cur.executemany(
                    """
                    UPDATE dead_letters SET payload = coalesce(payload, %s), raw = %s,
                        run_id = coalesce(run_id, %s), step_key = coalesce(step_key, %s),
                        attempt = coalesce(attempt, %s)
                    WHERE queue = %s AND stream_id = %s AND raw IS NULL
                    """,
                    [
                        (_jsonb(r.payload), r.raw, r.run_id, r.step_key, r.attempt, r.queue, r.stream_id)
                        for r in incomplete
                    ],
                )
        return len(new) + len(incomplete)


def write(cur: psycopg.Cursor[Any], letters: Sequence[DeadLetter]) -> None:
    """Insert dead-letter rows on `cur` (inside the caller's transaction); a row whose queue and
    stream id are there already is left as it is."""
    if not letters:
        return
    cur.executemany(
        """
        INSERT INTO dead_letters (run_id, step_key, attempt, queue, stream_id, delivery_count, reason,
                                  error, payload, raw, created_at)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, coalesce(%s, now()))
        ON CONFLICT (queue, stream_id) DO NOTHING
        """,
        [
            (
                d.run_id,
                d.step_key,
                d.attempt,
                d.queue,
                d.stream_id,
                d.delivery_count,
                d.reason.value,
                d.error,
                _jsonb(d.payload),
                d.raw,
                d.created_at,
            )
            for d in letters
        ],
    )


def _jsonb(value: Any) -> Jsonb | None:
    return None if value is None else Jsonb(value)


def sync_from_stream(client: redis.Redis, keys: Keys, store: DeadLetterStore, *, limit: int = SYNC_LIMIT) -> int:
    """Merge the newest `limit` entries of the `{ns}:dlq` stream into the table; returns rows written."""
    try:
        entries = client.xrevrange(keys.dlq_stream, count=limit)
    except (redis.ConnectionError, redis.TimeoutError) as e:
        raise RedisUnavailableError(f"cannot read the dead-letter stream {keys.dlq_stream}: {e}") from e
    return store.merge([DeadLetter.from_stream_entry(entry_id, fields) for entry_id, fields in reversed(entries)])


def add_to_stream(client: redis.Redis, keys: Keys, entries: Sequence[dict[str, Any]]) -> None:
    """XADD dead-letter entries (`patterns.dead_letter.unreadable_entry`) to `{ns}:dlq`, in one round trip."""
    pipe = client.pipeline(transaction=False)
    for entry in entries:
        pipe.xadd(keys.dlq_stream, entry)
    pipe.execute()


def trim_stream(client: redis.Redis, keys: Keys, *, before: dt.datetime) -> int:
    """Remove the `{ns}:dlq` stream entries added before `before`; returns how many."""
    try:
        return int(client.xtrim(keys.dlq_stream, minid=minid_before(before), approximate=False))
    except (redis.ConnectionError, redis.TimeoutError) as e:
        raise RedisUnavailableError(f"cannot trim the dead-letter stream {keys.dlq_stream}: {e}") from e


def check_replayable(store: DeadLetterStore, row: Mapping[str, Any]) -> None:
    """Raise SubmitError (saying what to do instead) unless the dead letter's run can be resumed now."""
    problem = replay_problem(row, store.run_status(row["run_id"]) if row["run_id"] else None)
    if problem is not None:
        raise SubmitError(problem)


def replay(
    store: DeadLetterStore,
    client: redis.Redis,
    keys: Keys,
    *,
    partitions: int,
    row: Mapping[str, Any],
    args: dict[str, Any] | None,
) -> None:
    """Resume the dead letter's run from its failed steps, its step with `args` when given (`steppe dlq
    replay`, the UI): a durable retry command for the run's coordinator, its wake-up, the row marked replayed."""
    from orchestrator import bus
    from orchestrator.store.leases import partition_of
    from orchestrator.wire import ControlMessage

    run_id = row["run_id"]
    payload = overrides_payload(row["step_key"], args) if args is not None else {}
    # One writer per run: the request goes through the run's coordinator, never straight to the queue.
    store.runs.add_command(run_id, "retry", payload)
    bus.notify(client, keys, partition_of(run_id, partitions), ControlMessage(kind="retry", run=run_id))
    store.mark_replayed(int(row["dead_letter_id"]))
