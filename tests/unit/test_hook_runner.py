"""The coordinator's hook book-keeping: nothing is tracked or published before its batch commits."""

from __future__ import annotations

from typing import Any

from orchestrator.hook_runner import HookRunner
from orchestrator.spec import load_workflow
from orchestrator.state import Event, EventType
from orchestrator.wire import ResultMessage, StepErrorInfo, decode_step
from orchestrator.workflow import compile_workflow
from patterns.hooks import HookDef

WORKFLOW = compile_workflow(load_workflow("name: w\nsteps:\n  - {id: a, handler: builtin.noop}\n"))
NOTIFY = HookDef(hook_id=7, name="notify", kind="session", events=("run.finished",), handler="ops.notify")


class _NoStore:
    """The runner only reads the store in `reload`, which these tests do not call."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"unexpected store call {name}")


def runner(now: list[float]) -> HookRunner:
    hooks = HookRunner(_NoStore(), clock=lambda: now[0])  # type: ignore[arg-type]
    hooks.global_hooks = [NOTIFY]
    return hooks


def finish(hooks: HookRunner, run_id: str, partition: int = 0, seq: int = 5) -> None:
    hooks.on_events(
        run_id=run_id,
        partition=partition,
        workflow=WORKFLOW,
        inputs={},
        events=[Event(seq=seq, type=EventType.RUN_SUCCEEDED, data={})],
    )


def result(run_id: str, attempt: int, *, ok: bool, retryable: bool = True) -> ResultMessage:
    error = None if ok else StepErrorInfo(type="RuntimeError", message="down", retryable=retryable)
    return ResultMessage(
        run=run_id, step="hook:7:5", attempt=attempt, status="succeeded" if ok else "failed", error=error
    )


def test_an_execution_is_staged_with_its_event_and_published_only_once_committed() -> None:
    hooks = runner([100.0])
    finish(hooks, "r1")
    batch = hooks.take_batch()
    assert [(r.run_id, r.step_key, r.attempt, r.status) for r in batch.rows] == [("r1", "hook:7:5", 1, "pending")]
    assert decode_step(batch.rows[0].message).handler == "ops.notify"
    assert hooks.in_flight() == []  # not tracked before the commit
    published = hooks.committed()
    assert [(d.queue, d.message.step, d.message.attempt) for d in published] == [("hooks", "hook:7:5", 1)]
    assert [d.message.run for d in hooks.in_flight()] == ["r1"]
    assert not hooks.take_batch()  # the next batch starts empty


def test_an_aborted_batch_leaves_nothing_behind() -> None:
    hooks = runner([100.0])
    finish(hooks, "r1")
    hooks.abort()
    assert not hooks.take_batch()
    assert hooks.committed() == []
    assert hooks.in_flight() == []


def test_a_failed_attempt_is_retried_from_its_row_and_the_outcome_counted_once() -> None:
    now = [100.0]
    hooks = runner(now)
    finish(hooks, "r1")
    hooks.committed()
    hooks.on_result(result("r1", 1, ok=False))
    [row] = hooks.take_batch().rows
    assert (row.attempt, row.status) == (2, "pending")
    assert row.due_at is not None
    assert row.due_at > now[0]
    hooks.committed()
    assert hooks.due(now[0]) == []  # not yet
    now[0] = row.due_at
    [retry] = hooks.due(now[0])
    assert retry.message.attempt == 2
    hooks.on_result(result("r1", 2, ok=True))
    hooks.on_result(result("r1", 2, ok=True))  # a duplicate in the same batch is not counted again
    batch = hooks.take_batch()
    assert [(r.attempt, r.status) for r in batch.rows] == [(2, "succeeded")]
    assert [(c.hook_id, c.ok) for c in batch.counts] == [(7, True)]
    hooks.committed()
    hooks.on_result(result("r1", 2, ok=True))  # and neither is a late one
    assert not hooks.take_batch()
    assert hooks.in_flight() == []


def test_same_hook_and_seq_in_two_runs_are_two_executions() -> None:
    hooks = runner([100.0])
    finish(hooks, "r1")
    finish(hooks, "r2")
    hooks.committed()
    hooks.on_result(result("r1", 1, ok=False, retryable=False))
    batch = hooks.take_batch()
    assert [(r.run_id, r.status) for r in batch.rows] == [("r1", "failed")]
    hooks.committed()
    assert [d.message.run for d in hooks.in_flight()] == ["r2"]


def test_forgetting_partitions_drops_only_their_executions() -> None:
    hooks = runner([100.0])
    finish(hooks, "r1", partition=0)
    finish(hooks, "r2", partition=1)
    hooks.committed()
    hooks.forget({1})
    assert [d.message.run for d in hooks.in_flight()] == ["r1"]
    hooks.forget()
    assert hooks.in_flight() == []
