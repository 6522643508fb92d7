"""Signals and approval decisions through the client (docs/spec.md §12.1): the HTTP calls, the
direct calls, and what both return, so that `Client.signal/approve/reject` mean the same on each.

Both transports refuse alike: RunNotFoundError (unknown run), a SubmitError for a finished run or a
step that is not waiting (the direct transport's RunFinishedError / NotWaitingError are SubmitErrors;
the API answers 409), ApproverRefusedError for an approver the step does not name (403).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import orjson

from orchestrator.errors import SubmitError

if TYPE_CHECKING:
    from orchestrator.client.http import Call
    from orchestrator.client.transport import AsyncTransport, Transport
    from orchestrator.signals import Signaller

__all__ = ["Accepted", "AsyncSignalMethods", "SignalMethods", "decision_call", "signal_call"]


@dataclass(frozen=True, slots=True)
class Accepted:
    """A signal or decision stored for the run; `duplicate` when its idempotency key was accepted before."""

    run_id: str
    signal_id: int
    duplicate: bool = False


def signal_call(run_id: str, name: str, payload: Any, idempotency_key: str | None) -> Call:
    from orchestrator.client.http import Call

    try:
        body = orjson.dumps(payload)
    except TypeError as e:
        raise SubmitError(f"the signal's payload is not JSON data ({e}); pass strings, numbers, lists, mappings") from e
    params = {"idempotency_key": idempotency_key} if idempotency_key is not None else None
    return Call("POST", f"/v1/runs/{run_id}/signals/{quote(name, safe='')}", "signal", params=params, body=body)


def decision_call(run_id: str, step: str, *, approve: bool, by: str | None, comment: str | None) -> Call:
    from orchestrator.client.http import Call

    verb = "approve" if approve else "reject"
    body = orjson.dumps({"by": by, "comment": comment})
    return Call("POST", f"/v1/runs/{run_id}/steps/{quote(step, safe='')}/{verb}", verb, body=body)


def accepted(body: dict[str, Any]) -> Accepted:
    return Accepted(run_id=body["run_id"], signal_id=int(body["signal_id"]), duplicate=bool(body.get("duplicate")))


def direct_signal(signaller: Signaller, run_id: str, name: str, payload: Any, idempotency_key: str | None) -> Accepted:
    receipt = signaller.signal(run_id, name, payload, idempotency_key=idempotency_key)
    return Accepted(run_id=run_id, signal_id=receipt.signal_id, duplicate=receipt.duplicate)


def direct_decision(
    signaller: Signaller, run_id: str, step: str, *, approve: bool, by: str | None, comment: str | None
) -> Accepted:
    receipt = signaller.decide(run_id, step, approve=approve, by=by, comment=comment)
    return Accepted(run_id=run_id, signal_id=receipt.signal_id)


class _Checks:
    @staticmethod
    def _ids(run_id: str) -> str:
        from orchestrator.client.transport import check_run_id

        return check_run_id(run_id)


class SignalMethods(_Checks):
    """`Client.signal`, `approve` and `reject`."""

    transport: Transport

    def signal(self, run_id: str, name: str, payload: Any = None, *, idempotency_key: str | None = None) -> Accepted:
        """Send signal `name` to the run: the first step waiting for it (now or later) succeeds with `payload`.
        The same `idempotency_key` twice is accepted once (`duplicate` says so)."""
        return self.transport.signal(self._ids(run_id), name, payload, idempotency_key=idempotency_key)

    def approve(self, run_id: str, step: str, *, by: str | None = None, comment: str | None = None) -> Accepted:
        """Approve the run's waiting `approval:` step `step`, as `by`."""
        return self.transport.decide(self._ids(run_id), step, approve=True, by=by, comment=comment)

    def reject(self, run_id: str, step: str, *, by: str | None = None, comment: str | None = None) -> Accepted:
        """Reject the run's waiting `approval:` step: it fails with ApprovalRejected (`on_failure` applies)."""
        return self.transport.decide(self._ids(run_id), step, approve=False, by=by, comment=comment)


class AsyncSignalMethods(_Checks):
    """`AsyncClient.signal`, `approve` and `reject`."""

    transport: AsyncTransport

    async def signal(
        self, run_id: str, name: str, payload: Any = None, *, idempotency_key: str | None = None
    ) -> Accepted:
        return await self.transport.signal(self._ids(run_id), name, payload, idempotency_key=idempotency_key)

    async def approve(self, run_id: str, step: str, *, by: str | None = None, comment: str | None = None) -> Accepted:
        return await self.transport.decide(self._ids(run_id), step, approve=True, by=by, comment=comment)

    async def reject(self, run_id: str, step: str, *, by: str | None = None, comment: str | None = None) -> Accepted:
        return await self.transport.decide(self._ids(run_id), step, approve=False, by=by, comment=comment)
