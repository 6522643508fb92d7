"""The coordinator's write to `run_signals`: which step consumed a signal, in the batch's transaction."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import psycopg

from orchestrator.state import Event

__all__ = ["mark_consumed"]


def mark_consumed(cur: psycopg.Cursor[Any], events: Iterable[tuple[str, Event]]) -> None:
    """Record the step each signal (or approval decision) of the batch's events was consumed by.

    An event that ends a wait carries the `signal_id` it consumed (`engine.waits`); marking it in the
    same transaction as that event means a signal is never applied twice nor lost by a crash."""
    ids: list[int] = []
    steps: list[str] = []
    for _run_id, event in events:
        signal_id = event.data.get("signal_id")
        if signal_id is not None and event.step is not None:
            ids.append(int(signal_id))
            steps.append(event.step)
    if ids:
        cur.execute(
            "UPDATE run_signals AS s SET consumed_by = v.step, consumed_at = now()"
            " FROM unnest(%s::bigint[], %s::text[]) AS v(id, step) WHERE s.signal_id = v.id",
            (ids, steps),
        )
