"""The coordinator's second line of defence: a batch PostgreSQL refuses because of one run's data.

The first line validates values where they enter (durations are bounded, inputs are checked)
and makes handler text storable on the wire (`orchestrator.sanitize`). Should a batch still
fail to commit with `RunDataError` (a date, number, text or document PostgreSQL or the JSON
encoder refuses, or a value over one of PostgreSQL's limits), `BatchSplitter.split` commits
it again run by run:

- each run's write, with its dead letters and hook executions, commits on its own, so every
  other run of the batch keeps going;
- a run whose own write is refused is failed in PostgreSQL (`store.run_failures.fail_run`):
  a `run.failed` event and `state.error` say why and what to do, and the run is never retried,
  so it cannot stop the loop or make it repeat itself;
- the rows that belong to no write (processed commands, hook counters, …) commit last; if they
  are refused too, only the processed commands are kept (and the loss is logged).

The caller drops its in-memory state afterwards and acknowledges the batch: dispatches that
committed but were not published are found and published by the reconciler, as after a crash
between commit and publish. A run whose stored definition no longer loads (validation became
stricter since it was submitted) is failed the same way (`fail_unloadable`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import structlog

from orchestrator.errors import ConflictError, RunDataError
from orchestrator.sanitize import storable_text
from orchestrator.store.hook_executions import HookCount, HookExecutionRow
from orchestrator.store.run_failures import fail_run
from orchestrator.store.runs import RunStore, RunWrite
from patterns.dead_letter import DeadLetter

log = structlog.get_logger(__name__)

DETAIL_LIMIT = 300
# What to look at, by the library error that refused the data.
_HINTS = {
    "DatetimeFieldOverflow": "a date or time is out of range: shorten the step's retry delays and timeouts",
    "IntervalFieldOverflow": "a duration is out of range: shorten the step's retry delays and timeouts",
    "NumericValueOutOfRange": "a number is out of range: return numbers PostgreSQL can store",
    "UntranslatableCharacter": "a text cannot be stored (a NUL character, or one the database encoding lacks)",
    "CharacterNotInRepertoire": "a text holds a character the database encoding lacks",
    "JSONEncodeError": "an output holds a value JSON cannot carry (an integer beyond 64 bits, or nesting "
    "deeper than 254 levels)",
    "ProgramLimitExceeded": "a value is over one of PostgreSQL's size limits: return less data, or store it "
    "elsewhere and return a reference",
    "StatementTooComplex": "a value is nested too deeply for PostgreSQL: flatten the step's output",
}
_DEFAULT_HINT = "check what the steps returned or raised, and their settings"
_CARRIED = frozenset({"output", "error", "due_at"})


def suspects(write: RunWrite) -> list[str]:
    """The steps of a refused write that carry what handlers returned or raised, or a due time;
    every step it touched when none does."""
    carrying = {e.step for e in write.events if e.step is not None and _CARRIED.intersection(e.data)}
    return sorted(carrying or write.steps)


def unstorable_error(error: RunDataError, step_keys: Sequence[str]) -> dict[str, Any]:
    """The run's error when PostgreSQL refused its changes: what was refused, where, and what to do."""
    steps = ", ".join(sorted(step_keys)[:5]) + (", …" if len(step_keys) > 5 else "")
    hint = _HINTS.get(error.cause, _DEFAULT_HINT)
    return {
        "type": "RunDataError",
        "message": (
            f"the coordinator could not store this run's changes{f' (steps: {steps})' if steps else ''}: "
            f"{_detail(error)}. The run was failed so that other runs keep going; {hint}, then submit it again"
        ),
        "cause": error.cause,
        "retryable": False,
    }


def unloadable_error(error: Exception) -> dict[str, Any]:
    """The run's error when its stored definition no longer validates."""
    return {
        "type": "DefinitionError",
        "message": (
            f"the coordinator cannot load this run's stored definition: {_detail(error)}. "
            "Fix the workflow and submit it again"
        ),
        "retryable": False,
    }


def _detail(error: Exception) -> str:
    text = storable_text(" ".join(str(error).split()))
    return text if len(text) <= DETAIL_LIMIT else text[: DETAIL_LIMIT - 1] + "…"


class BatchSplitter:
    """Commits a refused batch run by run and fails the runs whose own changes are refused."""

    def __init__(self, *, store: RunStore, owner: str) -> None:
        self.store = store
        self.owner = owner
        self.failed: list[str] = []  # the runs the last split failed

    def split(
        self,
        writes: Sequence[RunWrite],
        processed_commands: Sequence[int] = (),
        dead_letters: Sequence[DeadLetter] = (),
        hook_rows: Sequence[HookExecutionRow] = (),
        hook_counts: Sequence[HookCount] = (),
    ) -> bool:
        """Commit what can be committed and fail the runs at fault (`failed` lists them); False when
        a run changed hands meanwhile (ConflictError: the caller reloads, as for any conflict).
        DatabaseUnavailableError propagates as from `RunStore.commit_batch`."""
        try:
            self.failed = self._split(writes, processed_commands, dead_letters, hook_rows, hook_counts)
        except ConflictError as e:
            log.warning("batch_conflict", error=str(e), runs=len(writes))
            return False
        return True

    def _split(
        self,
        writes: Sequence[RunWrite],
        processed_commands: Sequence[int],
        dead_letters: Sequence[DeadLetter],
        hook_rows: Sequence[HookExecutionRow],
        hook_counts: Sequence[HookCount],
    ) -> list[str]:
        run_ids = {w.run_id for w in writes}
        failed: list[str] = []
        for write in writes:
            try:
                self.store.commit_batch(
                    [write],
                    owner=self.owner,
                    dead_letters=[d for d in dead_letters if d.run_id == write.run_id],
                    hook_rows=[r for r in hook_rows if r.run_id == write.run_id],
                )
            except RunDataError as e:
                if self.fail(write.run_id, unstorable_error(e, suspects(write))):
                    failed.append(write.run_id)
        rest_dead = [d for d in dead_letters if d.run_id not in run_ids]
        rest_hooks = [r for r in hook_rows if r.run_id not in run_ids]
        try:
            self.store.commit_batch(
                [],
                owner=self.owner,
                processed_commands=processed_commands,
                dead_letters=rest_dead,
                hook_rows=rest_hooks,
                hook_counts=hook_counts,
            )
        except RunDataError as e:
            log.error(
                "batch_rows_unstorable",
                error=_detail(e),
                dead_letters=len(rest_dead),
                hook_executions=len(rest_hooks),
                hook_counts=len(hook_counts),
            )
            self.store.commit_batch([], owner=self.owner, processed_commands=processed_commands)
        return failed

    def fail(self, run_id: str, error: dict[str, Any]) -> bool:
        """Fail one run with `error` (see the module docstring); False if it is not ours to fail."""
        failed = fail_run(self.store, run_id, owner=self.owner, error=error)
        if failed:
            log.error("run_quarantined", run_id=run_id, error_type=error["type"], error=error["message"])
        return failed

    def fail_unloadable(self, run_id: str, error: Exception) -> bool:
        """Fail a run whose stored definition no longer loads."""
        return self.fail(run_id, unloadable_error(error))
