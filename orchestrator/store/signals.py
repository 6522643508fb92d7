"""Signals and approval decisions (docs/spec.md §12.1): accepted into `run_signals`, consumed by the coordinator.

A signal or a decision is stored, with the `run_commands` row that wakes the run's coordinator, in
one transaction before the caller hears back; the run's log is never written here (a run has one
writer, its coordinator). The coordinator offers a run's unconsumed rows to its engine
(`unconsumed`); the event that ends a wait carries the row's `signal_id`, and
`signal_rows.mark_consumed` records the consuming step in the same transaction as that event
(`RunStore.commit_batch`), so a signal is applied once whatever crashes. Rows no step consumed
stay: early signals wait for a step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from orchestrator.engine.waits import APPROVE, REJECT, SIGNAL, Signal
from orchestrator.state import TERMINAL_RUN_STATUSES, StepStatus
from orchestrator.store.runs import RunStore, require_run, to_epoch
from orchestrator.wait_errors import ApproverRefusedError, NotWaitingError, RunFinishedError

__all__ = ["SignalReceipt", "SignalStore"]


@dataclass(frozen=True, slots=True)
class SignalReceipt:
    """What accepting a signal or decision stored: its id, and whether the idempotency key had stored it before."""

    signal_id: int
    run_id: str
    duplicate: bool = False


Conn = psycopg.Connection[dict[str, Any]]


def _open_run(conn: Conn, run_id: str) -> dict[str, Any]:
    run = require_run(conn, run_id)
    if run["status"] in TERMINAL_RUN_STATUSES:
        raise RunFinishedError(f"run {run_id} is already {run['status']}: nothing of it waits any more")
    return run


def _wake(conn: Conn, run_id: str, signal_id: int) -> None:
    conn.execute(
        "INSERT INTO run_commands (run_id, command, payload) VALUES (%s, 'signal', %s)",
        (run_id, Jsonb({"signal_id": signal_id})),
    )


class SignalStore:
    """Accept signals and decisions; read what the coordinator offers its engines."""

    def __init__(self, store: RunStore) -> None:
        self.store = store

    def send(
        self, run_id: str, name: str, payload: Any = None, *, idempotency_key: str | None = None, by: str | None = None
    ) -> SignalReceipt:
        """Store signal `name` for the run (durably, before returning); the same key twice is stored once
        (a repeat is answered as a duplicate even once the run finished: the first one was accepted)."""
        with self.store.connection() as conn, conn.transaction():
            if idempotency_key is not None:
                first = conn.execute(
                    "SELECT signal_id FROM run_signals WHERE run_id = %s AND idempotency_key = %s",
                    (run_id, idempotency_key),
                ).fetchone()
                if first is not None:
                    return SignalReceipt(int(first["signal_id"]), run_id, duplicate=True)
            _open_run(conn, run_id)
            row = conn.execute(
                "INSERT INTO run_signals (run_id, kind, name, payload, idempotency_key, who)"
                " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (run_id, idempotency_key) DO NOTHING RETURNING signal_id",
                (run_id, SIGNAL, name, Jsonb(payload), idempotency_key, by),
            ).fetchone()
            if row is None:
                first = conn.execute(
                    "SELECT signal_id FROM run_signals WHERE run_id = %s AND idempotency_key = %s",
                    (run_id, idempotency_key),
                ).fetchone()
                assert first is not None
                return SignalReceipt(int(first["signal_id"]), run_id, duplicate=True)
            _wake(conn, run_id, int(row["signal_id"]))
            return SignalReceipt(int(row["signal_id"]), run_id)

    def decide(
        self, run_id: str, step_id: str, *, approve: bool, by: str | None = None, comment: str | None = None
    ) -> SignalReceipt:
        """Approve or reject approval step `step_id`, which must be waiting; its approvers, if named, decide."""
        verb = "approve" if approve else "reject"
        with self.store.connection() as conn, conn.transaction():
            _open_run(conn, run_id)
            step = conn.execute(
                "SELECT status, detail FROM workflow_steps WHERE run_id = %s AND step_key = %s", (run_id, step_id)
            ).fetchone()
            wait = (step["detail"] or {}).get("wait") or {} if step is not None else {}
            if step is None or step["status"] != StepStatus.WAITING or wait.get("kind") != "approval":
                status = step["status"] if step is not None else "not started (or not a step of the run)"
                raise NotWaitingError(
                    f"step {step_id!r} of run {run_id} is not waiting for an approval (it is {status}): "
                    f"only a waiting `approval:` step can be approved or rejected; see `steppe status {run_id}`"
                )
            approvers = wait.get("approvers")
            if approvers and by not in approvers:
                who = f"{by!r} is" if by else "an unnamed approver is"
                raise ApproverRefusedError(
                    f"{who} not an approver of step {step_id!r}; its approvers are {', '.join(approvers)}"
                    + ("" if by else ": pass --by NAME")
                )
            pending = conn.execute(
                "SELECT who FROM run_signals WHERE run_id = %s AND name = %s AND kind IN (%s, %s)"
                " AND consumed_by IS NULL",
                (run_id, step_id, APPROVE, REJECT),
            ).fetchone()
            if pending is not None:
                raise NotWaitingError(
                    f"step {step_id!r} of run {run_id} already has a decision (by {pending['who'] or 'someone'})"
                    " being applied; it cannot be decided twice"
                )
            row = conn.execute(
                "INSERT INTO run_signals (run_id, kind, name, who, comment) VALUES (%s, %s, %s, %s, %s)"
                " RETURNING signal_id",
                (run_id, APPROVE if approve else REJECT, step_id, by, comment),
            ).fetchone()
            assert row is not None, verb
            _wake(conn, run_id, int(row["signal_id"]))
            return SignalReceipt(int(row["signal_id"]), run_id)

    def unconsumed(self, run_ids: Sequence[str]) -> dict[str, list[Signal]]:
        """run id → its stored signals and decisions no step consumed yet, oldest first."""
        if not run_ids:
            return {}
        with self.store.connection() as conn:
            rows = conn.execute(
                "SELECT signal_id, run_id, kind, name, payload, who, comment, created_at FROM run_signals"
                " WHERE run_id = ANY(%s) AND consumed_by IS NULL ORDER BY signal_id",
                (list(run_ids),),
            ).fetchall()
        found: dict[str, list[Signal]] = {}
        for r in rows:
            found.setdefault(r["run_id"], []).append(
                Signal(
                    signal_id=int(r["signal_id"]),
                    kind=r["kind"],
                    name=r["name"],
                    payload=r["payload"],
                    by=r["who"],
                    comment=r["comment"],
                    at=to_epoch(r["created_at"]) or 0.0,
                )
            )
        return found

    def of_run(self, run_id: str) -> list[dict[str, Any]]:
        """Every signal and decision of a run, for `steppe status` and the API."""
        with self.store.connection() as conn:
            return conn.execute(
                "SELECT signal_id, kind, name, who, comment, created_at, consumed_by, consumed_at FROM run_signals"
                " WHERE run_id = %s ORDER BY signal_id",
                (run_id,),
            ).fetchall()
