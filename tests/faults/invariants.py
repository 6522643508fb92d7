"""The invariants of docs/reliability.md, as checks that every fault scenario runs after its fault.

    I1  wait_terminal(env, runs, deadline)          every run terminal before the deadline
    I2  check_effectively_once(env, keys, injected) one effect per step key; duplicate calls
                                                    bounded by the faults and each one visible
        check_applied_once(env, runs)               at most one applied success per step instance
    I3  check_event_logs(env, runs)                 gapless seq; fold(log) == stored projection
    I4  check_nothing_stranded(env, queues)         no pending/undelivered stream entries, no step
                                                    left dispatched/running, no unfinished run
    I5  check_dead_letters(env, expected)           the DLQ stream holds exactly `expected`

`report()` prints a scenario's measured figures on one line (run pytest with -s to see them).
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.keys import COORDINATOR_GROUP, WORKER_GROUP
from orchestrator.state import fold
from orchestrator.store.queries import events_from_rows
from tests.faults.harness import FaultEnv
from tests.helpers import assert_eventually

TERMINAL = frozenset({"succeeded", "failed", "cancelled", "compensated", "compensation_failed"})
STREAM_ID = re.compile(rb"^\d+-\d+$")


def report(scenario: str, **figures: Any) -> None:
    """One greppable line of measured figures: `FAULTS <scenario> k=v …`."""
    shown = " ".join(f"{k}={round(v, 2) if isinstance(v, float) else v}" for k, v in figures.items())
    print(f"\nFAULTS {scenario} {shown}")


# -- I1 -------------------------------------------------------------------------------------------


def run_statuses(env: FaultEnv, run_ids: Sequence[str]) -> dict[str, str]:
    with env.store.connection() as conn:
        rows = conn.execute(
            "SELECT run_id, status FROM workflow_runs WHERE run_id = ANY(%s)", (list(run_ids),)
        ).fetchall()
    return {r["run_id"]: r["status"] for r in rows}


def wait_terminal(env: FaultEnv, run_ids: Sequence[str], *, deadline: float) -> dict[str, dict[str, Any]]:
    """I1: every run reaches a terminal state within `deadline` seconds; returns their status documents."""
    started = time.monotonic()
    statuses: dict[str, str] = {}
    while time.monotonic() - started < deadline:
        statuses = run_statuses(env, run_ids)
        if len(statuses) == len(set(run_ids)) and set(statuses.values()) <= TERMINAL:
            return {r: env.run(r) for r in run_ids}
        time.sleep(0.1)
    stuck = {r: s for r, s in statuses.items() if s not in TERMINAL}
    detail = []
    for run_id in list(stuck)[:5]:
        steps = env.run(run_id)["steps"]
        detail.append(
            f"{run_id} {stuck[run_id]}: "
            + ", ".join(
                f"{k}={v['status']}#{v['attempts']}" for k, v in steps.items() if v["status"] not in ("succeeded",)
            )
        )
    raise AssertionError(
        f"I1 violated: {len(stuck)} of {len(run_ids)} runs not terminal after {deadline:.0f}s:\n"
        + "\n".join(detail)
        + f"\ncluster log tail:\n{env.log_text()[-5000:]}"
    )


# -- I2 -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OnceReport:
    """What I2 measured."""

    keys: int
    calls: int
    duplicates: int
    duplicated_keys: dict[str, int]
    duplicate_logs: int


def duplicate_evidence(env: FaultEnv, run_ids: Iterable[str]) -> Counter[str]:
    """Per idempotency key (run/step): what shows that a step ran more than once — a redelivery
    (`step_reclaimed`) or a fenced result (`result_duplicate_ignored`) in the log, or a new attempt
    (a retry after a timeout) in the event log."""
    evidence: Counter[str] = Counter()
    for record in env.log_events():
        if record.get("event") in ("result_duplicate_ignored", "step_reclaimed") and record.get("run_id"):
            evidence[f"{record['run_id']}/{record['step']}"] += 1
    for run_id in run_ids:
        dispatched = Counter(r["step_key"] for r in env.queries.events(run_id) if r["type"] == "step.dispatched")
        for step, n in dispatched.items():
            evidence[f"{run_id}/{step}"] += n - 1
    return evidence


def check_effectively_once(
    env: FaultEnv,
    keys: Iterable[str],
    *,
    injected: int,
    per_key: int | None = None,
    effects: str = "effects",
    exact: bool = True,
) -> OnceReport:
    """I2: every key has exactly one effect; repeated calls ≤ `injected` (and ≤ `per_key` per key),
    and every repeated call left a trace (see `duplicate_evidence`)."""
    keys = list(keys)
    calls = env.witness("calls")
    done = env.witness(effects)
    wrong = {k: done.get(k, 0) for k in keys if done.get(k, 0) != 1}
    assert not wrong, f"I2 violated: steps without exactly one effect: {wrong}"
    if exact:
        extra = set(done) - set(keys)
        assert not extra, f"I2 violated: effects of unexpected step instances: {sorted(extra)}"
    duplicated = {k: calls[k] - 1 for k in keys if calls.get(k, 0) > 1}
    total = sum(duplicated.values())
    assert total <= injected, f"I2 violated: {total} duplicate calls for {injected} injected fault(s): {duplicated}"
    if per_key is not None:
        over = {k: n for k, n in duplicated.items() if n > per_key}
        assert not over, f"I2 violated: more than {per_key} duplicate call(s) for {over}"
    evidence = duplicate_evidence(env, {k.split("/", 1)[0] for k in duplicated})
    silent = {k: n for k, n in duplicated.items() if evidence[k] < n}
    assert not silent, f"I2 violated: duplicate calls with no reclaim/duplicate record in the log: {silent}"
    return OnceReport(
        keys=len(keys),
        calls=sum(calls.get(k, 0) for k in keys),
        duplicates=total,
        duplicated_keys=duplicated,
        duplicate_logs=len(env.log_events("result_duplicate_ignored")),
    )


def check_applied_once(env: FaultEnv, run_ids: Iterable[str]) -> None:
    """I2 on the coordinator's side: no step instance has two applied successes in its log."""
    for run_id in run_ids:
        succeeded = Counter(r["step_key"] for r in env.queries.events(run_id) if r["type"] == "step.succeeded")
        twice = {k: n for k, n in succeeded.items() if n > 1}
        assert not twice, f"I2 violated: run {run_id} applied these steps more than once: {twice}"


# -- I3 -------------------------------------------------------------------------------------------


def check_event_logs(env: FaultEnv, run_ids: Iterable[str]) -> None:
    """I3: each run's log has a gapless seq from 1, and folding it gives exactly the stored projection."""
    for run_id in run_ids:
        rows = env.queries.events(run_id)
        seqs = [r["seq"] for r in rows]
        assert seqs == list(range(1, len(rows) + 1)), f"I3 violated: run {run_id} has seq gaps: {seqs}"
        folded = fold(run_id, events_from_rows(rows)).to_json()
        stored = env.queries.stored_projection(run_id).to_json()
        assert folded == stored, f"I3 violated: run {run_id}: fold(log) != stored projection"


# -- I4 -------------------------------------------------------------------------------------------


def _decode(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _id_tuple(entry_id: str) -> tuple[int, int]:
    ms, seq = entry_id.split("-")
    return int(ms), int(seq)


def stream_backlog(env: FaultEnv, stream: str, group: str) -> tuple[int, int]:
    """(pending, undelivered) entries of `group` on `stream`; (0, 0) when the stream does not exist."""
    if not env.redis.exists(stream):
        return 0, 0
    info = env.redis.xinfo_stream(stream)
    last = _decode(info["last-generated-id"])
    for g in env.redis.xinfo_groups(stream):
        if _decode(g["name"]) == group:
            undelivered = 0
            if _id_tuple(_decode(g["last-delivered-id"])) < _id_tuple(last) and info["length"]:
                undelivered = len(env.redis.xrange(stream, min="(" + _decode(g["last-delivered-id"]), max="+"))
            return int(g["pending"]), undelivered
    return 0, 0


def stranded(env: FaultEnv, queues: Iterable[str]) -> dict[str, Any]:
    """Everything I4 forbids after a drain, keyed by where it was found."""
    found: dict[str, Any] = {}
    streams = [(s, WORKER_GROUP) for q in queues for s in env.keys.queue_streams(q)]
    for p in range(env.settings.coordinator.partitions):
        streams += [(env.keys.results_stream(p), COORDINATOR_GROUP), (env.keys.control_stream(p), COORDINATOR_GROUP)]
    for stream, group in streams:
        pending, undelivered = stream_backlog(env, stream, group)
        if pending or undelivered:
            found[stream] = {"pending": pending, "undelivered": undelivered}
    with env.store.connection() as conn:
        steps = conn.execute(
            "SELECT run_id, step_key, status FROM workflow_steps WHERE status IN ('dispatched', 'running')"
            " AND detail->'items' IS NULL"
        ).fetchall()
        runs = conn.execute("SELECT run_id, status FROM workflow_runs WHERE finished_at IS NULL").fetchall()
    if steps:
        found["steps in flight"] = [(s["run_id"], s["step_key"], s["status"]) for s in steps]
    if runs:
        found["unfinished runs"] = [(r["run_id"], r["status"]) for r in runs]
    return found


def check_nothing_stranded(env: FaultEnv, *, queues: Iterable[str] = ("default",), timeout: float = 15.0) -> None:
    """I4: after the drain no stream entry is pending or undelivered and no step is left in flight."""
    queues = list(queues)
    last: dict[str, Any] = {}

    def drained() -> bool:
        nonlocal last
        last = stranded(env, queues)
        return not last

    assert_eventually(drained, timeout=timeout, interval=0.2, message=lambda: f"I4 violated: stranded {last}")


# -- I5 -------------------------------------------------------------------------------------------


def dead_letters(env: FaultEnv) -> list[dict[str, Any]]:
    """The entries of the dead-letter stream, fields decoded (`m`, the original payload, kept as bytes)."""
    out = []
    for dlq_id, fields in env.redis.xrange(env.keys.dlq_stream):
        entry: dict[str, Any] = {"dlq_id": dlq_id.decode()}
        for k, v in fields.items():
            name = k.decode()
            entry[name] = v if name == "m" else v.decode(errors="replace")
        out.append(entry)
    return out


def check_dead_letters(env: FaultEnv, expected: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """I5: the DLQ stream holds exactly one entry per `expected` mapping (a subset of its fields), each
    with an error, the original stream id and a delivery count."""
    entries = dead_letters(env)
    for entry in entries:
        assert entry.get("error"), f"I5 violated: dead letter without an error: {entry}"
        assert STREAM_ID.match(str(entry.get("id", "")).encode()), f"I5 violated: no original id: {entry}"
        assert str(entry.get("deliveries", "")).isdigit(), f"I5 violated: no delivery count: {entry}"
        assert int(entry["deliveries"]) >= 1
    unmatched = list(entries)
    for want in expected:
        hits = [e for e in unmatched if all(str(e.get(k)) == str(v) for k, v in want.items())]
        assert len(hits) == 1, f"I5 violated: {len(hits)} dead letters match {dict(want)}; DLQ holds {entries}"
        unmatched.remove(hits[0])
    assert not unmatched, f"I5 violated: unexpected dead letters: {unmatched}"
    return entries
