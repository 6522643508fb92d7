"""Fleet-wide flow control in PostgreSQL (docs/spec.md §12.2): where the truth about slots lives.

Design
------
Every limit of a throttled attempt is a `limit_slots` row (migration 0007). The rows are never
written by hand for waiting or releasing: the row trigger `steppe_limit_rows` on `workflow_steps`
inserts the waiter rows in the transaction that records `throttled`, and deletes the held slots in
the transaction that records any status other than throttled, dispatched or running (succeeded,
failed, retry_scheduled, cancelled, dead-lettered …). So slots are *derived* from the step rows in
the same transactions: a coordinator, a worker or the whole host may die at any instant and no slot
outlives the attempt that holds it; a run deleted by retention takes its rows with it (FK cascade).

Only `admit` grants, one transaction per (kind, key):

1. `pg_advisory_xact_lock(hashtextextended('steppe.limit:<kind>:<key>', 0))` serialises admissions
   of one key across every coordinator (other keys take other locks: one hot key never waits on or
   delays another);
2. counting the granted rows (concurrency: all of them; rate: those granted within `per` of the
   database clock) happens after the lock is taken, so it sees every grant committed before it
   (READ COMMITTED takes a snapshot per statement), and releases committed concurrently only lower
   the count: the count can be stale only upwards, which delays an admission but never over-admits;
3. the waiters are granted in priority, then FIFO (`id`) order while the count stays under the
   limit, by `UPDATE … SET granted_at = clock_timestamp()`; a waiter deleted meanwhile (cancelled)
   is simply not updated.

Hence, for any number of coordinators: never more than `limit` granted concurrency rows per key,
and never more than `limit` grants per key in any window of `per` (a window holding more would
contain a grant made while `limit` others were counted within `per` before it). A step with both
limits waits for its concurrency slot first (`req_index` 0), then for its rate token; it is admitted
(dispatched by the coordinator owning its partition) once its last row is granted.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestrator.spec.limits import show_seconds
from orchestrator.store.runs import RunStore

_BATCH = 256  # waiters considered per round of one key's admission


@dataclass(frozen=True, slots=True)
class Grant:
    """One row granted by an admission."""

    run_id: str
    step: str
    attempt: int
    partition: int
    last: bool  # the attempt's last limit: it may be dispatched now
    next_key: tuple[str, str] | None  # otherwise the (kind, key) it waits on next


@dataclass(slots=True)
class Admission:
    """What one key's admission did."""

    kind: str
    key: str
    grants: list[Grant] = field(default_factory=list)
    held: int = 0  # granted rows counted after the admission (in use, or starts in the window)
    waiting: int = 0  # eligible waiters left
    retry_in: float | None = None  # rate: seconds until the oldest start leaves the window
    limit: int = 0  # the limit the key's rows declare (0: no rows)
    refused: list[tuple[str, int]] = field(default_factory=list)  # run level, cancel_new: (run, partition)
    evicted: list[tuple[str, int]] = field(default_factory=list)  # run level, cancel_oldest: runs to cancel


class LimitStore:
    """SQL of flow control; the coordinator's `orchestrator.limiter.Limiter` decides when to call it."""

    def __init__(self, store: RunStore) -> None:
        self.store = store

    def admit(self, kind: str, key: str) -> Admission:
        """Grant what the limit allows of the key's waiters, in one transaction (see the module docstring)."""
        result = Admission(kind, key)
        with self.store.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"steppe.limit:{kind}:{key}",))
            if kind == "rate":
                conn.execute(
                    "DELETE FROM limit_slots l WHERE kind = 'rate' AND key = %s AND granted_at IS NOT NULL"
                    " AND granted_at < clock_timestamp() - make_interval(secs => per_ms / 1000.0)"
                    " AND NOT EXISTS (SELECT 1 FROM workflow_steps s WHERE s.run_id = l.run_id"
                    " AND s.step_key = l.step_key AND s.attempt = l.attempt AND s.status = 'throttled')",
                    (key,),
                )
            while True:
                waiters = conn.execute(
                    "SELECT id, run_id, step_key, attempt, partition, lim, per_ms, req_index, req_count, on_limit"
                    " FROM limit_slots w WHERE kind = %s AND key = %s AND granted_at IS NULL AND on_limit <> 'refused'"
                    " AND (req_index = 0 OR NOT EXISTS (SELECT 1 FROM limit_slots p WHERE p.run_id = w.run_id"
                    " AND p.step_key = w.step_key AND p.attempt = w.attempt AND p.req_index < w.req_index"
                    " AND p.granted_at IS NULL))"
                    " ORDER BY priority DESC, id LIMIT %s",
                    (kind, key, _BATCH),
                ).fetchall()
                per_ms = int(waiters[0]["per_ms"]) if waiters else 0
                held, oldest, declared = self._held(conn, kind, key, per_ms)
                result.limit = int(waiters[0]["lim"]) if waiters else declared
                granted = []
                for w in waiters:
                    if held >= int(w["lim"]):
                        break
                    granted.append(w)
                    held += 1
                if granted:
                    conn.execute(
                        "UPDATE limit_slots SET granted_at = clock_timestamp() WHERE id = ANY(%s)",
                        ([w["id"] for w in granted],),
                    )
                result.grants.extend(self._grants(conn, granted))
                result.held = held
                result.waiting = len(waiters) - len(granted)
                if len(granted) < _BATCH:
                    if kind == "run":
                        self._run_policies(conn, key, waiters[len(granted) :], result)
                    break
            if kind == "rate" and result.waiting:
                _, oldest, _ = self._held(conn, kind, key, per_ms)  # the grants just made count too
                if oldest is not None:
                    result.retry_in = max(0.0, oldest + per_ms / 1000.0)
        return result

    @staticmethod
    def _run_policies(conn: Any, key: str, left: Sequence[dict[str, Any]], result: Admission) -> None:
        """Run level, no slot for these waiters: `cancel_new` ones are refused; for `cancel_oldest` ones the
        oldest holders not already on their way out are marked to be cancelled (their end frees the slot)."""
        refused = [w for w in left if w["on_limit"] == "cancel_new"]
        if refused:
            conn.execute(
                "UPDATE limit_slots SET on_limit = 'refused' WHERE id = ANY(%s)", ([w["id"] for w in refused],)
            )
            result.refused += [(w["run_id"], int(w["partition"])) for w in refused]
            result.waiting -= len(refused)
        wanted = sum(1 for w in left if w["on_limit"] == "cancel_oldest")
        if not wanted:
            return
        row = conn.execute(
            "SELECT count(*) AS n FROM limit_slots WHERE kind = 'run' AND key = %s AND granted_at IS NOT NULL"
            " AND on_limit = 'evicted'",
            (key,),
        ).fetchone()
        need = wanted - int(row["n"])
        if need > 0:
            rows = conn.execute(
                "UPDATE limit_slots SET on_limit = 'evicted' WHERE id IN (SELECT id FROM limit_slots"
                " WHERE kind = 'run' AND key = %s AND granted_at IS NOT NULL AND on_limit <> 'evicted'"
                " ORDER BY granted_at, id LIMIT %s) RETURNING run_id, partition",
                (key, need),
            ).fetchall()
            result.evicted += [(r["run_id"], int(r["partition"])) for r in rows]

    def ensure_run_waiters(self, partitions: Sequence[int], run_ids: Sequence[str] | None = None) -> None:
        """The waiter row of every pending run of these partitions that `run.throttled` holds back (derived
        from the run rows, so a crash between the commit and this insert only delays it to the sweep)."""
        if not partitions:
            return
        with self.store.connection() as conn, conn.transaction():
            conn.execute(
                "INSERT INTO limit_slots (kind, key, run_id, step_key, attempt, partition, priority, lim, on_limit)"
                " SELECT 'run', state->'throttled'->>'key', run_id, '', 0, partition, 1,"
                " (state->'throttled'->>'limit')::int, coalesce(state->'throttled'->>'on_limit', 'queue')"
                " FROM workflow_runs WHERE status = 'pending' AND finished_at IS NULL AND state ? 'throttled'"
                " AND NOT coalesce((state->>'cancel_requested')::boolean, false)"
                " AND partition = ANY(%s) AND (%s::text[] IS NULL OR run_id = ANY(%s))"
                " ON CONFLICT DO NOTHING",
                (list(partitions), run_ids, run_ids),
            )

    def run_actions(self, partitions: Sequence[int]) -> list[tuple[str, str]]:
        """(run, admit | refuse | evict) for the unfinished runs of these partitions that an admission
        (ours or another coordinator's) decided about."""
        if not partitions:
            return []
        with self.store.connection() as conn:
            rows = conn.execute(
                "SELECT l.run_id, CASE WHEN l.on_limit = 'refused' THEN 'refuse' WHEN l.on_limit = 'evicted'"
                " THEN 'evict' ELSE 'admit' END AS action FROM limit_slots l JOIN workflow_runs r USING (run_id)"
                " WHERE l.kind = 'run' AND l.partition = ANY(%s) AND r.finished_at IS NULL AND ("
                " (l.granted_at IS NOT NULL AND r.status = 'pending' AND l.on_limit <> 'evicted')"
                " OR l.on_limit IN ('refused', 'evicted')) ORDER BY l.id",
                (list(partitions),),
            ).fetchall()
        return [(r["run_id"], r["action"]) for r in rows]

    @staticmethod
    def _held(conn: Any, kind: str, key: str, per_ms: int) -> tuple[int, float | None, int]:
        if kind == "rate":
            row = conn.execute(
                "SELECT count(*) AS n, max(lim) AS lim,"
                " extract(epoch FROM min(granted_at) - clock_timestamp()) AS oldest"
                " FROM limit_slots WHERE kind = 'rate' AND key = %s AND granted_at IS NOT NULL"
                " AND granted_at > clock_timestamp() - make_interval(secs => %s / 1000.0)",
                (key, per_ms),
            ).fetchone()
            oldest = None if row["oldest"] is None else float(row["oldest"])
            return int(row["n"]), oldest, int(row["lim"] or 0)
        row = conn.execute(
            "SELECT count(*) AS n, max(lim) AS lim FROM limit_slots"
            " WHERE kind = %s AND key = %s AND granted_at IS NOT NULL",
            (kind, key),
        ).fetchone()
        return int(row["n"]), None, int(row["lim"] or 0)

    @staticmethod
    def _grants(conn: Any, granted: Sequence[dict[str, Any]]) -> list[Grant]:
        out = []
        for w in granted:
            last = int(w["req_index"]) == int(w["req_count"]) - 1
            next_key = None
            if not last:
                row = conn.execute(
                    "SELECT kind, key FROM limit_slots WHERE run_id = %s AND step_key = %s AND attempt = %s"
                    " AND req_index = %s",
                    (w["run_id"], w["step_key"], w["attempt"], int(w["req_index"]) + 1),
                ).fetchone()
                next_key = None if row is None else (row["kind"], row["key"])
            out.append(Grant(w["run_id"], w["step_key"], int(w["attempt"]), int(w["partition"]), last, next_key))
        return out

    def admitted(self, partitions: Sequence[int]) -> list[tuple[str, str, int]]:
        """(run, step, attempt) of throttled attempts on these partitions whose every limit is granted:
        to dispatch (a grant made by another coordinator, or one this coordinator did not act on)."""
        if not partitions:
            return []
        with self.store.connection() as conn:
            rows = conn.execute(
                "SELECT l.run_id, l.step_key, l.attempt FROM limit_slots l JOIN workflow_steps s"
                " ON s.run_id = l.run_id AND s.step_key = l.step_key AND s.attempt = l.attempt"
                " WHERE l.partition = ANY(%s) AND l.granted_at IS NOT NULL AND l.req_index = l.req_count - 1"
                " AND s.status = 'throttled' ORDER BY l.id",
                (list(partitions),),
            ).fetchall()
        return [(r["run_id"], r["step_key"], int(r["attempt"])) for r in rows]

    def waiting_keys(self, partitions: Sequence[int] | None = None) -> list[tuple[str, str]]:
        """(kind, key) of every limit with waiters (on these partitions, or anywhere): to admit again."""
        with self.store.connection() as conn:
            if partitions is None:
                rows = conn.execute(
                    "SELECT DISTINCT kind, key FROM limit_slots WHERE granted_at IS NULL ORDER BY kind, key"
                ).fetchall()
            else:
                rows = conn.execute(
                    "SELECT DISTINCT kind, key FROM limit_slots WHERE granted_at IS NULL AND partition = ANY(%s)"
                    " ORDER BY kind, key",
                    (list(partitions),),
                ).fetchall()
        return [(r["kind"], r["key"]) for r in rows]

    def usage(self, keys: Iterable[tuple[str, str]] | None = None) -> list[dict[str, Any]]:
        """Per (kind, key): limit, holders (granted rows, in the window for a rate) and waiters, with
        who holds and who waits; for `steppe limits`, `steppe status`, the API and metrics."""
        wanted = None if keys is None else [f"{k}:{v}" for k, v in keys]
        with self.store.connection() as conn:
            rows = conn.execute(
                "SELECT kind, key, run_id, step_key, attempt, lim, per_ms, priority, granted_at, created_at,"
                " (granted_at IS NOT NULL AND (kind <> 'rate' OR granted_at >"
                "  clock_timestamp() - make_interval(secs => per_ms / 1000.0))) AS holds"
                " FROM limit_slots WHERE (%s::text[] IS NULL OR kind || ':' || key = ANY(%s::text[]))"
                " ORDER BY kind, key, priority DESC, id",
                (wanted, wanted),
            ).fetchall()
        out: dict[tuple[str, str], dict[str, Any]] = {}
        for r in rows:
            entry = out.setdefault(
                (r["kind"], r["key"]),
                {
                    "kind": r["kind"],
                    "key": r["key"],
                    "limit": int(r["lim"]),
                    "per": int(r["per_ms"]) / 1000.0 if r["kind"] == "rate" else None,
                    "in_use": 0,
                    "waiting": 0,
                    "holders": [],
                    "waiters": [],
                },
            )
            who = {"run_id": r["run_id"], "step": r["step_key"], "attempt": int(r["attempt"])}
            if r["holds"]:
                entry["in_use"] += 1
                entry["holders"].append(who | {"since": r["granted_at"].isoformat()})
            elif r["granted_at"] is None:
                entry["waiting"] += 1
                entry["waiters"].append(who | {"since": r["created_at"].isoformat(), "priority": int(r["priority"])})
        return [entry for entry in out.values() if entry["in_use"] or entry["waiting"]]

    def of_run(self, run_id: str) -> list[dict[str, Any]]:
        """The limit rows of one run's attempts (waiting or held), for its run document."""
        with self.store.connection() as conn:
            return run_limits(conn, run_id)


def run_limits(conn: Any, run_id: str) -> list[dict[str, Any]]:
    """The limits one run's attempts wait on or hold, each with its key's current use (the `limits`
    of the run document: `steppe status`, `GET /v1/runs/{id}`)."""
    rows = conn.execute(
        "SELECT l.kind, l.key, l.step_key, l.attempt, l.lim, l.per_ms, l.granted_at, l.created_at,"
        " (SELECT count(*) FROM limit_slots h WHERE h.kind = l.kind AND h.key = l.key AND h.granted_at IS NOT NULL"
        "  AND (h.kind <> 'rate' OR h.granted_at > clock_timestamp() - make_interval(secs => h.per_ms / 1000.0)))"
        " AS in_use FROM limit_slots l WHERE l.run_id = %s"
        " AND NOT (l.kind = 'rate' AND l.granted_at IS NOT NULL AND NOT EXISTS (SELECT 1 FROM workflow_steps s"
        "  WHERE s.run_id = l.run_id AND s.step_key = l.step_key AND s.status = 'throttled'))"
        " ORDER BY l.step_key, l.req_index",
        (run_id,),
    ).fetchall()
    return [
        {
            "step": r["step_key"],
            "attempt": int(r["attempt"]),
            "kind": r["kind"],
            "key": r["key"],
            "limit": int(r["lim"]),
            "per": int(r["per_ms"]) / 1000.0 if r["kind"] == "rate" else None,
            "in_use": int(r["in_use"]),
            "state": "held" if r["granted_at"] is not None else "waiting",
            "since": (r["granted_at"] or r["created_at"]).isoformat(),
        }
        for r in rows
    ]


def describe(limit: dict[str, Any]) -> str:
    """`concurrency openai 8/8` or `rate openai 60/1m`: a limit of the run document, for status lines."""
    if limit["kind"] == "rate":
        per = show_seconds(float(limit["per"] or 0))
        return f"rate {limit['key']} {limit['limit']}/{per} ({limit['in_use']} started in the window)"
    return f"concurrency {limit['key']} {limit['in_use']}/{limit['limit']}"
