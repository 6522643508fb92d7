"""What `steppe status`, the API and the UI say a waiting step waits for (orchestrator/waits_view.py)."""

from __future__ import annotations

from orchestrator.waits_view import wait_note, wait_summary, waiting_steps

SINCE = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC


def step(kind: str, **wait: object) -> dict[str, object]:
    due = wait.pop("due_at", None)
    return {"status": "waiting", "due_at": due, "detail": {"wait": {"kind": kind, "since": SINCE, **wait}}}


def test_a_signal_wait_says_its_name_since_when_and_its_timeout() -> None:
    note = wait_note(step("signal", signal="payment-webhook", timeout=60, due_at=SINCE + 60), now=SINCE + 65)
    assert note == (
        "waits for signal payment-webhook since 2027-01-15 08:00:00 UTC (1m5s ago); times out at 2027-01-15 08:01:00 UTC"
    )


def test_an_approval_names_its_approvers_and_a_sleep_its_wake_up() -> None:
    assert wait_note(step("approval", approvers=["alice", "bob"])).startswith("waits for an approval by alice or bob")
    assert wait_note(step("sleep", due_at=SINCE + 600)) == "sleeps until 2027-01-15 08:10:00 UTC"


def test_only_waiting_steps_are_described() -> None:
    done = {"status": "succeeded", "detail": {"wait": {"kind": "signal", "signal": "x"}}}
    assert wait_note(done) == ""
    assert wait_summary(done) is None
    doc = {"steps": {"a": done, "b": step("signal", signal="go")}}
    assert [(r["step"], r["kind"], r["signal"]) for r in waiting_steps(doc)] == [("b", "signal", "go")]
