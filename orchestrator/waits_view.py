"""What a waiting step waits for, in words, for `steppe status`/`watch`, the API and the web UI. Pure."""

from __future__ import annotations

import datetime as dt
from typing import Any

from orchestrator.durations import format_duration

__all__ = ["wait_note", "wait_summary", "waiting_steps"]


def _at(epoch: Any) -> str:
    if not isinstance(epoch, int | float):
        return "?"
    return dt.datetime.fromtimestamp(float(epoch), tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def wait_summary(step: dict[str, Any]) -> dict[str, Any] | None:
    """`{kind, signal?, approvers?, since, due_at}` of a waiting step of a status document; else None."""
    if step.get("status") != "waiting":
        return None
    wait = (step.get("detail") or {}).get("wait") or {}
    summary = {k: wait[k] for k in ("kind", "signal", "approvers", "since", "timeout") if k in wait}
    summary["due_at"] = step.get("due_at")
    return summary


def wait_note(step: dict[str, Any], *, now: float | None = None) -> str:
    """`waits for signal payment-webhook since … (for 5m; times out at …)`; empty unless waiting."""
    summary = wait_summary(step)
    if summary is None:
        return ""
    kind, since, due = summary.get("kind"), summary.get("since"), summary.get("due_at")
    if kind == "sleep":
        return f"sleeps until {_at(due)}"
    what = f"signal {summary.get('signal')}" if kind == "signal" else "an approval"
    if kind == "approval" and summary.get("approvers"):
        what += " by " + " or ".join(summary["approvers"])
    note = f"waits for {what} since {_at(since)}"
    if isinstance(since, int | float) and now is not None:
        note += f" ({format_duration(round(max(0.0, now - since)))} ago)"
    if due is not None:
        note += f"; times out at {_at(due)}"
    return note


def waiting_steps(doc: dict[str, Any], *, now: float | None = None) -> list[dict[str, Any]]:
    """The waiting steps of a status document, each `{step, kind, signal, approvers, note}` (the UI's
    approve / reject / signal forms)."""
    rows = []
    for key, step in sorted((doc.get("steps") or {}).items()):
        summary = wait_summary(step)
        if summary is None:
            continue
        rows.append(
            {
                "step": key,
                "kind": summary.get("kind"),
                "signal": summary.get("signal"),
                "approvers": summary.get("approvers") or [],
                "note": wait_note(step, now=now),
            }
        )
    return rows
