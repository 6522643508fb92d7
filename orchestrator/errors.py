"""Steppe's exception tree; every error a user can see says what to do about it.

SteppeError
├── ConfigError                  bad settings or environment
├── InfrastructureError          Redis or PostgreSQL unreachable (CLI exit code 3)
│   ├── RedisUnavailableError
│   └── DatabaseUnavailableError
├── LauncherError                `steppe dev` could not start or stop a server
├── DurationError                a duration could not be parsed (orchestrator/durations.py; also a ValueError)
├── SpecError                    a workflow document is invalid (CLI exit code 2)
│   ├── SpecValidationError      carries every problem found, each with file:line:col
│   └── PatternError             a pattern plugin (`uses:`) rejected its step's configuration
├── TemplateError                a `${{ … }}` reference could not be resolved
│   └── RunLimitError            a run outgrew a limit while running (orchestrator/run_limits.py)
├── SubmitError                  a submission was refused (unknown handler, bad inputs, …)
│   ├── WorkflowNotDeployedError no such deployed workflow or version (orchestrator/store/workflows.py)
│   └── ScheduleNotFoundError    no schedule with that id (orchestrator/store/schedules.py)
├── RunNotFoundError             no run with that id
├── RunFailedError               a run the client waited for ended without succeeding (status, step errors)
├── RunTimeoutError              the run did not finish within the client's timeout (also a TimeoutError)
├── DeadLetterNotFoundError      no dead letter with that id (orchestrator/store/dead_letters.py)
├── CircuitOpenError             a breaker is open: the step is deferred (patterns/breaker.py; also pybreaker's)
├── ConflictError                optimistic-concurrency or lease conflict; retry the operation
├── RunDataError                 PostgreSQL refused a batch for the data of a run in it (orchestrator/quarantine.py)
└── StepError                    raised by handlers (re-exported by `workers`)
    ├── RetryableStepError
    ├── NonRetryableStepError
    └── UnknownHandlerError      this worker does not serve the handler (workers/runner.py)

Errors that belong to one module are defined beside the code that raises them and listed here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class SteppeError(Exception):
    """Root of every error Steppe raises on purpose."""

    exit_code: int = 1


class ConfigError(SteppeError):
    """A setting or environment variable has an invalid value."""

    exit_code = 2


class InfrastructureError(SteppeError):
    """A server Steppe depends on cannot be reached."""

    exit_code = 3


class RedisUnavailableError(InfrastructureError):
    """Redis cannot be reached at the configured URL."""


class DatabaseUnavailableError(InfrastructureError):
    """PostgreSQL cannot be reached at the configured URL."""


class LauncherError(SteppeError):
    """The embedded development servers could not be started or stopped."""

    exit_code = 3


@dataclass(frozen=True)
class SpecProblem:
    """One problem in a workflow document, located at file:line:col (1-based)."""

    message: str
    file: str = "<string>"
    line: int = 0
    column: int = 0

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.message}"


class SpecError(SteppeError):
    """A workflow document cannot be used as written."""

    exit_code = 2


class SpecValidationError(SpecError):
    """Every problem found while loading and validating a workflow document."""

    def __init__(self, problems: list[SpecProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class PatternError(SpecError):
    """Raised by a pattern plugin's `expand()` for a configuration it cannot use; the message
    is shown at the position of the step that uses the pattern, so it should say what to change."""


class TemplateError(SteppeError):
    """A `${{ … }}` reference names something that does not exist."""

    exit_code = 2


class SubmitError(SteppeError):
    """A submission was refused before anything was written."""

    exit_code = 2


class RunNotFoundError(SteppeError):
    """No run has the given id."""

    exit_code = 2


class RunFailedError(SteppeError):
    """A run ended without succeeding (failed, cancelled, compensated, ...), seen by `Run.result()`.

    `status` is the run's final status, `document` its status document (an
    `orchestrator.client.RunDocument`), `error` the run's error and `step_errors` the error of
    every step that failed, by step key.
    """

    def __init__(
        self,
        message: str,
        *,
        run_id: str,
        status: str,
        document: Any = None,
        error: dict[str, Any] | None = None,
        step_errors: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.status = status
        self.document = document
        self.error = error
        self.step_errors = step_errors or {}


class RunTimeoutError(SteppeError, TimeoutError):
    """The run did not finish within the timeout given to `result()`; it keeps running."""


class ConflictError(SteppeError):
    """Another writer changed the same row first; the operation can be retried."""


class RunDataError(SteppeError):
    """A write was refused for what it holds (a date, number or text PostgreSQL or the JSON encoder
    cannot store, a value too large), not because a server is down; `cause` names the library error.
    The coordinator splits the batch and fails the run at fault (orchestrator/quarantine.py)."""

    def __init__(self, message: str, *, cause: str) -> None:
        super().__init__(message)
        self.cause = cause


class StepError(SteppeError):
    """Base of the errors a handler raises to control retries."""

    non_retryable: bool = False


class RetryableStepError(StepError):
    """The step failed but may succeed if attempted again."""


class NonRetryableStepError(StepError):
    """The step failed for good: remaining retries are skipped."""

    non_retryable = True
