"""`Client` and `AsyncClient`: submit runs, wait for their results, cancel, retry, list, read history.

    Client()                                    PostgreSQL + Redis directly (STEPPE_* settings, or
                                                the servers `steppe dev up` recorded)
    Client(api_url="http://host:8080", token=…) the same methods over `steppe api`

Every method raises SteppeError subclasses (orchestrator.errors) with a message saying what to
do. Timeouts: `connect_timeout` for opening connections, `timeout` for each request (each SQL
statement, each Redis command, each HTTP request), and `result(timeout=…)` for waiting.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

from orchestrator.client.models import HistoryEvent, RunDocument, RunSummary
from orchestrator.client.sources import Document, WorkflowSource, resolve
from orchestrator.client.transport import AsyncTransport, SubmitResult, Transport, check_run_id, poll_delays
from orchestrator.client.waits import AsyncSignalMethods, SignalMethods
from orchestrator.errors import ConfigError, InfrastructureError, RunFailedError, RunTimeoutError
from orchestrator.state import EventType, RunStatus

if TYPE_CHECKING:
    from orchestrator.settings import Settings

CONNECT_TIMEOUT = 5.0
REQUEST_TIMEOUT = 30.0
RESULT_TIMEOUT = 300.0
MAX_LIST = 1000  # the most runs `GET /v1/runs` lists


def failure(doc: RunDocument) -> RunFailedError:
    """The error `result()` raises for a run that finished without succeeding."""
    steps = doc.step_errors
    lines = [f"{key}: {err.get('type') or 'error'}: {err.get('message', '')}" for key, err in steps.items()]
    if not lines and doc.error:
        lines = [f"{doc.error.get('type') or 'error'}: {doc.error.get('message', '')}"]
    detail = ("; ".join(lines) + "; ") if lines else ""
    message = f"run {doc.run_id} ({doc.workflow}) {doc.status}: {detail}see `steppe status {doc.run_id}`"
    return RunFailedError(
        message, run_id=doc.run_id, status=str(doc.status), document=doc, error=doc.error, step_errors=steps
    )


def outcome(doc: RunDocument, run_id: str, timeout: float) -> Any:
    """The outputs of a succeeded run; RunFailedError or RunTimeoutError otherwise."""
    if doc.status == RunStatus.SUCCEEDED:
        return doc.outputs
    if doc.finished:
        raise failure(doc)
    raise RunTimeoutError(
        f"run {run_id} is still {doc.status} after {timeout:g}s; it keeps running: call result() again, "
        "pass a larger timeout=, or cancel it"
    )


def _timeout(value: float | None) -> float:
    if value is None:
        return float("inf")
    if value < 0:
        raise ConfigError(f"timeout must be at least 0 seconds, not {value}")
    return float(value)


def _wait_budget(timeout: float) -> float:
    # An unbounded wait is a series of day-long waits (time.monotonic() arithmetic stays finite).
    return min(timeout, 86_400.0)


def _inputs(inputs: Mapping[str, Any] | None) -> dict[str, Any]:
    if inputs is None:
        return {}
    if not isinstance(inputs, Mapping):
        raise ConfigError(f"inputs must be a mapping of input names to values, not {type(inputs).__name__}")
    return dict(inputs)


def _transport(
    settings: Settings | None, api_url: str | None, token: str | None, connect_timeout: float, timeout: float
) -> Transport:
    if api_url is None:
        from orchestrator.client.direct import DirectTransport

        return DirectTransport(settings, connect_timeout=connect_timeout, timeout=timeout)
    from orchestrator.client.http import HttpTransport

    return HttpTransport(api_url, token=token, connect_timeout=connect_timeout, timeout=timeout)


def _async_transport(
    settings: Settings | None, api_url: str | None, token: str | None, connect_timeout: float, timeout: float
) -> AsyncTransport:
    if api_url is None:
        from orchestrator.client.direct import AsyncDirectTransport

        return AsyncDirectTransport(settings, connect_timeout=connect_timeout, timeout=timeout)
    from orchestrator.client.http import AsyncHttpTransport

    return AsyncHttpTransport(api_url, token=token, connect_timeout=connect_timeout, timeout=timeout)


class Run:
    """A handle on one run: its id, and shortcuts to the client's methods for it."""

    def __init__(self, client: Client, run_id: str, *, workflow: str | None = None, created: bool = True) -> None:
        self.client = client
        self.id = run_id
        self.workflow = workflow
        self.created = created  # False when submit() returned an existing run (same idempotency key)

    def __repr__(self) -> str:
        return f"Run(id={self.id!r}, workflow={self.workflow!r})"

    def status(self) -> RunDocument:
        return self.client.status(self.id)

    def result(self, timeout: float | None = RESULT_TIMEOUT) -> Any:
        return self.client.result(self.id, timeout=timeout)

    def cancel(self) -> None:
        self.client.cancel(self.id)

    def retry(self) -> None:
        self.client.retry(self.id)

    def history(self) -> list[HistoryEvent]:
        return self.client.history(self.id)


def _check_arguments(api_url: str | None, token: str | None, settings: Settings | None) -> None:
    """The transport arguments that contradict each other, for both clients."""
    if api_url is None and token is not None:
        raise ConfigError("token= is for the HTTP API: pass api_url= too, or drop the token")
    if api_url is not None and settings is not None:
        raise ConfigError("settings= configure the direct transport; with api_url= the server has its own")


class Client(SignalMethods):
    """Submit and follow runs from Python; see the module docstring for the two transports."""

    def __init__(
        self,
        *,
        api_url: str | None = None,
        token: str | None = None,
        settings: Settings | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
        timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        _check_arguments(api_url, token, settings)
        self.timeout = _timeout(timeout)
        self.transport = _transport(settings, api_url, token, _timeout(connect_timeout), self.timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self.transport.close()

    def submit(
        self,
        source: WorkflowSource,
        *,
        inputs: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        check_handlers: bool = True,
    ) -> Run:
        """Validate and start a run of `source` (a mapping, YAML text, or a path; see sources.py).

        The same `idempotency_key` again returns the first run (`run.created` is False).
        `check_handlers=False` skips refusing handlers that no live worker serves.
        """
        done: SubmitResult = self.transport.submit(
            resolve(source), inputs=_inputs(inputs), idempotency_key=idempotency_key, check_handlers=check_handlers
        )
        return Run(self, done.run_id, workflow=done.workflow, created=done.created)

    def get(self, run_id: str) -> Run:
        """A handle on an existing run (RunNotFoundError if there is none)."""
        doc = self.status(run_id)
        return Run(self, doc.run_id, workflow=doc.workflow, created=False)

    def status(self, run_id: str) -> RunDocument:
        """The run's status document, as `steppe status --json` prints it."""
        return RunDocument.model_validate(self.transport.get(check_run_id(run_id)))

    def wait(self, run_id: str, timeout: float | None = RESULT_TIMEOUT) -> RunDocument:
        """The status document once the run is finished, or at `timeout` (check `.finished`)."""
        limit = _timeout(timeout)
        deadline = time.monotonic() + limit
        while True:
            remaining = max(0.0, deadline - time.monotonic())
            doc = RunDocument.model_validate(self.transport.wait(check_run_id(run_id), _wait_budget(remaining)))
            if doc.finished or time.monotonic() >= deadline:
                return doc

    def result(self, run_id: str, timeout: float | None = RESULT_TIMEOUT) -> Any:
        """The run's outputs once it succeeds; RunFailedError if it ends otherwise (with the status
        document and every step's error), RunTimeoutError if it is still going after `timeout`
        seconds (None waits without limit)."""
        return outcome(self.wait(run_id, timeout), run_id, _timeout(timeout))

    def cancel(self, run_id: str) -> None:
        """Ask the run's coordinator to cancel it (SubmitError if it already finished)."""
        self.transport.cancel(check_run_id(run_id))

    def retry(self, run_id: str) -> None:
        """Resume a failed or cancelled run from its failed steps (SubmitError otherwise).

        Returns once the coordinator has taken the request (the run's log has a new
        `run.resumed`), so that a `result()` after it waits for the new outcome rather than
        returning the old failure; InfrastructureError if no coordinator takes it in `timeout`.
        """
        run_id = check_run_id(run_id)
        seen = _last_seq(self.transport.history(run_id, after=0))
        self.transport.retry(run_id)
        deadline = time.monotonic() + self.timeout
        for delay in poll_delays():
            if _resumed(self.transport.history(run_id, after=seen)):
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _untaken(run_id, self.timeout)
            time.sleep(min(delay, remaining))

    def runs(self, *, status: str | None = None, workflow: str | None = None, limit: int = 50) -> list[RunSummary]:
        """Recent runs, newest first."""
        return [RunSummary.model_validate(r) for r in self.transport.runs(**_list_args(status, workflow, limit))]

    def history(self, run_id: str, *, after: int = 0) -> list[HistoryEvent]:
        """The run's event log (after sequence number `after`), oldest first."""
        return [HistoryEvent.model_validate(e) for e in self.transport.history(check_run_id(run_id), after=after)]


def _last_seq(events: list[dict[str, Any]]) -> int:
    return max((int(e["seq"]) for e in events), default=0)


def _resumed(events: list[dict[str, Any]]) -> bool:
    return any(e["type"] == EventType.RUN_RESUMED for e in events)


def _untaken(run_id: str, timeout: float) -> InfrastructureError:
    return InfrastructureError(
        f"the retry of run {run_id} is recorded, but no coordinator took it within {timeout:g}s; it is carried "
        "out when one runs: check that `steppe coordinator` is up"
    )


def _list_args(status: str | None, workflow: str | None, limit: int) -> dict[str, Any]:
    if status is not None:
        try:
            status = str(RunStatus(status))
        except ValueError:
            raise ConfigError(
                f"unknown run status {status!r}; use one of: {', '.join(s.value for s in RunStatus)}"
            ) from None
    if not 1 <= limit <= MAX_LIST:
        raise ConfigError(f"limit must be between 1 and {MAX_LIST}, not {limit}")
    return {"status": status, "workflow": workflow, "limit": limit}


class AsyncRun:
    """A handle on one run, for AsyncClient."""

    def __init__(self, client: AsyncClient, run_id: str, *, workflow: str | None = None, created: bool = True) -> None:
        self.client = client
        self.id = run_id
        self.workflow = workflow
        self.created = created

    def __repr__(self) -> str:
        return f"AsyncRun(id={self.id!r}, workflow={self.workflow!r})"

    async def status(self) -> RunDocument:
        return await self.client.status(self.id)

    async def result(self, timeout: float | None = RESULT_TIMEOUT) -> Any:
        return await self.client.result(self.id, timeout=timeout)

    async def cancel(self) -> None:
        await self.client.cancel(self.id)

    async def retry(self) -> None:
        await self.client.retry(self.id)

    async def history(self) -> list[HistoryEvent]:
        return await self.client.history(self.id)


class AsyncClient(AsyncSignalMethods):
    """Client for asyncio: the same methods, awaited. Over the direct transport each call runs in a
    worker thread; over HTTP it uses httpx's async client."""

    def __init__(
        self,
        *,
        api_url: str | None = None,
        token: str | None = None,
        settings: Settings | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
        timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        _check_arguments(api_url, token, settings)
        self.timeout = _timeout(timeout)
        self.transport = _async_transport(settings, api_url, token, _timeout(connect_timeout), self.timeout)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self.transport.close()

    async def submit(
        self,
        source: WorkflowSource,
        *,
        inputs: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        check_handlers: bool = True,
    ) -> AsyncRun:
        document = await _resolve_async(source)
        done = await self.transport.submit(
            document, inputs=_inputs(inputs), idempotency_key=idempotency_key, check_handlers=check_handlers
        )
        return AsyncRun(self, done.run_id, workflow=done.workflow, created=done.created)

    async def get(self, run_id: str) -> AsyncRun:
        doc = await self.status(run_id)
        return AsyncRun(self, doc.run_id, workflow=doc.workflow, created=False)

    async def status(self, run_id: str) -> RunDocument:
        return RunDocument.model_validate(await self.transport.get(check_run_id(run_id)))

    async def wait(self, run_id: str, timeout: float | None = RESULT_TIMEOUT) -> RunDocument:
        limit = _timeout(timeout)
        deadline = time.monotonic() + limit
        while True:
            remaining = max(0.0, deadline - time.monotonic())
            raw = await self.transport.wait(check_run_id(run_id), _wait_budget(remaining))
            doc = RunDocument.model_validate(raw)
            if doc.finished or time.monotonic() >= deadline:
                return doc

    async def result(self, run_id: str, timeout: float | None = RESULT_TIMEOUT) -> Any:
        return outcome(await self.wait(run_id, timeout), run_id, _timeout(timeout))

    async def cancel(self, run_id: str) -> None:
        await self.transport.cancel(check_run_id(run_id))

    async def retry(self, run_id: str) -> None:
        run_id = check_run_id(run_id)
        seen = _last_seq(await self.transport.history(run_id, after=0))
        await self.transport.retry(run_id)
        deadline = time.monotonic() + self.timeout
        for delay in poll_delays():
            if _resumed(await self.transport.history(run_id, after=seen)):
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _untaken(run_id, self.timeout)
            await asyncio.sleep(min(delay, remaining))

    async def runs(
        self, *, status: str | None = None, workflow: str | None = None, limit: int = 50
    ) -> list[RunSummary]:
        rows = await self.transport.runs(**_list_args(status, workflow, limit))
        return [RunSummary.model_validate(r) for r in rows]

    async def history(self, run_id: str, *, after: int = 0) -> list[HistoryEvent]:
        rows = await self.transport.history(check_run_id(run_id), after=after)
        return [HistoryEvent.model_validate(e) for e in rows]


async def _resolve_async(source: WorkflowSource) -> Document:
    """`resolve`, off the event loop when it may read a file."""
    if isinstance(source, Mapping):
        return resolve(source)
    return await asyncio.to_thread(resolve, source)
