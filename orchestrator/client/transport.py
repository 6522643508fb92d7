"""What a transport does (two implementations each: direct.py and http.py, sync and asyncio) and the
rules both apply the same way, so that one contract suite holds for both.

A transport deals in plain documents (the status document as `steppe status --json` prints it);
`orchestrator.client.client` turns them into models and handles.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from orchestrator.client.sources import Document
from orchestrator.client.waits import Accepted
from orchestrator.errors import RunNotFoundError, SubmitError
from orchestrator.state import TERMINAL_RUN_STATUSES, RunStatus

# The run ids the HTTP API accepts in a path (orchestrator/api/routes.py `RunId`); any other string
# names no run, over either transport.
RUN_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
RETRYABLE_STATUSES = frozenset({RunStatus.FAILED, RunStatus.CANCELLED})
# Polling for a change no one announces: 5 ms, then x1.5 per poll up to 1 s (13 polls in the
# first 3 s, then one a second). `steppe bench client`: a one-step run takes under 10 ms end to
# end, so starting at 20 ms instead tripled the median submit-to-result latency.
FIRST_POLL = 0.005
MAX_POLL = 1.0
POLL_GROWTH = 1.5


def poll_delays(first: float = FIRST_POLL, cap: float = MAX_POLL) -> Iterator[float]:
    """Seconds to sleep between polls, growing from `first` to `cap`."""
    delay = first
    while True:
        yield delay
        delay = min(delay * POLL_GROWTH, cap)


@dataclass(frozen=True, slots=True)
class SubmitResult:
    run_id: str
    workflow: str
    created: bool  # False when the idempotency key named an existing run


def check_run_id(run_id: str) -> str:
    if not isinstance(run_id, str) or not RUN_ID.match(run_id):
        raise RunNotFoundError(f"no run {run_id!r}: run ids look like 'r-0123abcd…'; list runs with `steppe runs`")
    return run_id


def cancel_refusal(run_id: str, status: str) -> SubmitError | None:
    """Why a cancel of a run in `status` is refused (the API answers 409 with the same text), if it is."""
    if status in TERMINAL_RUN_STATUSES:
        return SubmitError(f"run {run_id} is already {status}; there is nothing to cancel")
    return None


def retry_refusal(run_id: str, status: str) -> SubmitError | None:
    if status not in RETRYABLE_STATUSES:
        return SubmitError(f"run {run_id} is {status}; only failed or cancelled runs can be retried")
    return None


class Transport(Protocol):
    def submit(
        self, document: Document, *, inputs: dict[str, Any], idempotency_key: str | None, check_handlers: bool
    ) -> SubmitResult: ...
    def get(self, run_id: str) -> dict[str, Any]: ...
    def wait(self, run_id: str, timeout: float) -> dict[str, Any]: ...
    def cancel(self, run_id: str) -> None: ...
    def retry(self, run_id: str) -> None: ...
    def runs(self, *, status: str | None, workflow: str | None, limit: int) -> list[dict[str, Any]]: ...
    def history(self, run_id: str, *, after: int) -> list[dict[str, Any]]: ...
    def signal(self, run_id: str, name: str, payload: Any, *, idempotency_key: str | None) -> Accepted: ...
    def decide(self, run_id: str, step: str, *, approve: bool, by: str | None, comment: str | None) -> Accepted: ...
    def close(self) -> None: ...


class AsyncTransport(Protocol):
    async def submit(
        self, document: Document, *, inputs: dict[str, Any], idempotency_key: str | None, check_handlers: bool
    ) -> SubmitResult: ...
    async def get(self, run_id: str) -> dict[str, Any]: ...
    async def wait(self, run_id: str, timeout: float) -> dict[str, Any]: ...
    async def cancel(self, run_id: str) -> None: ...
    async def retry(self, run_id: str) -> None: ...
    async def runs(self, *, status: str | None, workflow: str | None, limit: int) -> list[dict[str, Any]]: ...
    async def history(self, run_id: str, *, after: int) -> list[dict[str, Any]]: ...
    async def signal(self, run_id: str, name: str, payload: Any, *, idempotency_key: str | None) -> Accepted: ...
    async def decide(
        self, run_id: str, step: str, *, approve: bool, by: str | None, comment: str | None
    ) -> Accepted: ...
    async def close(self) -> None: ...
