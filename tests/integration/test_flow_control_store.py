"""Flow control's accounting against the real PostgreSQL (orchestrator/store/limits.py, migration 0007):
waiter rows follow step rows, two admitters hammering one key never exceed its limit, rate windows hold."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from psycopg.types.json import Jsonb

from orchestrator.store.limits import LimitStore
from orchestrator.store.runs import NewRun, RunStore

pytestmark = pytest.mark.integration


@pytest.fixture
def store(database_url: str) -> Iterator[RunStore]:
    store = RunStore(database_url, pool_size=6)
    store.open()
    yield store
    store.close()


def key() -> str:
    return f"k-{uuid.uuid4().hex[:8]}"


def throttled_run(store: RunStore, n: int, limits: list[dict[str, Any]], *, partition: int = 0) -> str:
    """A run with n throttled step rows holding these limits (as the coordinator writes them)."""
    run_id = f"r-fc-{uuid.uuid4().hex[:10]}"
    store.create_run(
        NewRun(run_id=run_id, workflow="w", partition=partition, definition={"name": "w"}, inputs={}, plan={})
    )
    with store.connection() as conn, conn.transaction(), conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO workflow_steps (run_id, step_key, step_id, status, attempt, detail)"
            " VALUES (%s, %s, 's', 'throttled', 0, %s)",
            [(run_id, f"s[{i}]", Jsonb({"limits": limits, "priority": 1})) for i in range(n)],
        )
    return run_id


def set_status(store: RunStore, run_id: str, step: str, status: str, attempt: int = 1) -> None:
    with store.connection() as conn, conn.transaction():
        conn.execute(
            "UPDATE workflow_steps SET status = %s, attempt = %s WHERE run_id = %s AND step_key = %s",
            (status, attempt, run_id, step),
        )


def rows(store: RunStore, run_id: str) -> list[dict[str, Any]]:
    with store.connection() as conn:
        return conn.execute(
            "SELECT kind, key, step_key, granted_at IS NOT NULL AS granted FROM limit_slots WHERE run_id = %s"
            " ORDER BY step_key, req_index",
            (run_id,),
        ).fetchall()


def test_waiters_follow_step_rows_and_slots_go_with_the_terminal_status(store: RunStore) -> None:
    k = key()
    run_id = throttled_run(store, 3, [{"kind": "concurrency", "key": k, "limit": 2, "per": 0}])
    assert [r["granted"] for r in rows(store, run_id)] == [False, False, False]
    admission = LimitStore(store).admit("concurrency", k)
    assert [g.step for g in admission.grants] == ["s[0]", "s[1]"]  # FIFO, up to the limit
    assert (admission.held, admission.waiting, admission.limit) == (2, 1, 2)
    assert LimitStore(store).admitted([0]) == [(run_id, "s[0]", 0), (run_id, "s[1]", 0)]
    set_status(store, run_id, "s[0]", "dispatched")
    set_status(store, run_id, "s[0]", "running")
    assert LimitStore(store).admit("concurrency", k).grants == []  # still 2 held
    set_status(store, run_id, "s[0]", "succeeded")  # the release rides on the status change
    assert [g.step for g in LimitStore(store).admit("concurrency", k).grants] == ["s[2]"]
    set_status(store, run_id, "s[1]", "cancelled")
    set_status(store, run_id, "s[2]", "retry_scheduled")
    assert rows(store, run_id) == []  # nothing leaked
    usage = LimitStore(store).usage([("concurrency", k)])
    assert usage == []


def test_priority_then_fifo_and_a_second_limit_after_the_first(store: RunStore) -> None:
    k, r = key(), key()
    limits = [
        {"kind": "concurrency", "key": k, "limit": 1, "per": 0},
        {"kind": "rate", "key": r, "limit": 5, "per": 60},
    ]
    run_id = throttled_run(store, 2, limits)
    with store.connection() as conn, conn.transaction():
        conn.execute("UPDATE limit_slots SET priority = 2 WHERE run_id = %s AND step_key = 's[1]'", (run_id,))
    limit_store = LimitStore(store)
    first = limit_store.admit("concurrency", k).grants
    assert [(g.step, g.last, g.next_key) for g in first] == [("s[1]", False, ("rate", r))]
    assert limit_store.admitted([0]) == []  # its rate token is still to come
    assert [(g.step, g.last) for g in limit_store.admit("rate", r).grants] == [("s[1]", True)]
    assert limit_store.admitted([0, 1]) == [(run_id, "s[1]", 0)]
    assert limit_store.admitted([1]) == []  # another partition's coordinator does not see it
    holders = limit_store.usage([("concurrency", k)])[0]
    assert (holders["in_use"], holders["waiting"], holders["holders"][0]["step"]) == (1, 1, "s[1]")


def test_two_admitters_hammering_one_key_never_exceed_its_limit(database_url: str, store: RunStore) -> None:
    k, limit, n = key(), 3, 240
    run_id = throttled_run(store, n, [{"kind": "concurrency", "key": k, "limit": limit, "per": 0}])
    stores = [RunStore(database_url, pool_size=3) for _ in range(2)]
    for s in stores:
        s.open()
    done = threading.Event()
    granted: list[str] = []
    lock = threading.Lock()
    seen: list[int] = []
    errors: list[BaseException] = []

    def admitter(s: RunStore, seed: int) -> None:
        rng = random.Random(seed)
        limits = LimitStore(s)
        try:
            while not done.is_set():
                admission = limits.admit("concurrency", k)
                seen.append(admission.held)
                for grant in admission.grants:
                    with lock:
                        granted.append(grant.step)
                    set_status(s, run_id, grant.step, "dispatched")
                    time.sleep(rng.random() * 0.002)
                    set_status(s, run_id, grant.step, "succeeded")
                if not admission.grants and not admission.waiting and not admission.held:
                    return
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    def monitor() -> None:
        with store.connection() as conn:
            while not done.is_set():
                row = conn.execute(
                    "SELECT count(*) AS n FROM limit_slots WHERE key = %s AND granted_at IS NOT NULL", (k,)
                ).fetchone()
                seen.append(int(row["n"]))

    threads = [threading.Thread(target=admitter, args=(s, i)) for i, s in enumerate(stores)]
    watcher = threading.Thread(target=monitor)
    for t in [*threads, watcher]:
        t.start()
    for t in threads:
        t.join(timeout=120)
    done.set()
    watcher.join(timeout=10)
    for s in stores:
        s.close()
    assert not errors, errors
    assert sorted(granted) == sorted(f"s[{i}]" for i in range(n))  # each admitted exactly once
    assert max(seen) == limit  # reached, never exceeded
    assert rows(store, run_id) == []


def test_no_window_of_per_holds_more_than_limit_grants(store: RunStore) -> None:
    r, limit, per, n = key(), 10, 0.5, 45
    run_id = throttled_run(store, n, [{"kind": "rate", "key": r, "limit": limit, "per": per}])
    limits = LimitStore(store)
    times: list[float] = []
    deadline = time.monotonic() + 30
    while len(times) < n and time.monotonic() < deadline:
        admission = limits.admit("rate", r)
        with store.connection() as conn:
            for grant in admission.grants:
                row = conn.execute(
                    "SELECT extract(epoch FROM granted_at) AS t FROM limit_slots WHERE run_id = %s AND step_key = %s",
                    (run_id, grant.step),
                ).fetchone()
                times.append(float(row["t"]))
        for grant in admission.grants:
            set_status(store, run_id, grant.step, "dispatched")
        if admission.waiting:
            assert admission.retry_in is not None
            assert 0 <= admission.retry_in <= per
            time.sleep(admission.retry_in + 0.001)
    assert len(times) == n
    times.sort()
    assert max(sum(1 for t in times if start <= t < start + per) for start in times) == limit
    assert times[-1] - times[0] >= per * (n // limit - 1) * 0.99  # the grants were spread out, not bunched
