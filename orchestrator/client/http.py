"""The HTTP transport: `steppe api` over httpx, sync and asyncio, with the same results and errors
as the direct transport.

    submit   POST /v1/runs (JSON: workflow text, inputs, idempotency key; ?filename= for positions)
    get      GET  /v1/runs/{id}
    wait     GET  /v1/runs/{id}/wait?timeout=S   a long poll: the server answers when the run
             finishes or after S seconds; the client asks again, in chunks of at most 20 s,
             until its own deadline (so no request outlives the server's STEPPE_API_MAX_WAIT
             or a proxy's idle timeout)
    cancel   POST /v1/runs/{id}/cancel          retry  POST /v1/runs/{id}/retry
    runs     GET  /v1/runs                      history GET /v1/runs/{id}/events

Error documents (`{"errors": [{message, file, line, column}]}`) become the SteppeError the
direct transport raises: positioned 422s a SpecValidationError with the same positions, 404 a
RunNotFoundError, 409/413/415/422 a SubmitError, 401 a ConfigError (the token), 503 and
network failures an InfrastructureError. Nothing is retried: a POST that timed out may have
been applied, so the caller decides (an idempotency key makes re-submitting safe).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from orchestrator import __version__
from orchestrator.client import waits
from orchestrator.client.sources import Document
from orchestrator.client.transport import SubmitResult
from orchestrator.errors import (
    ConfigError,
    InfrastructureError,
    RunNotFoundError,
    SpecProblem,
    SpecValidationError,
    SteppeError,
    SubmitError,
)
from orchestrator.state import TERMINAL_RUN_STATUSES
from orchestrator.wait_errors import ApproverRefusedError

LONG_POLL = 20.0  # seconds of one wait request
MAX_FILENAME = 255  # `?filename=` limit of POST /v1/runs


@dataclass(frozen=True, slots=True)
class Call:
    """One request: what it is for (in error messages), and how long it may take beyond the usual."""

    method: str
    path: str
    what: str
    params: dict[str, Any] | None = None
    body: bytes | None = None
    extra_time: float = 0.0


def submit_call(document: Document, inputs: dict[str, Any], idempotency_key: str | None, check: bool) -> Call:
    envelope: dict[str, Any] = {"inputs": inputs}
    if document.ref is not None:
        envelope["workflow_ref"] = document.ref
    else:
        envelope["workflow"] = document.text
    if idempotency_key is not None:
        envelope["idempotency_key"] = idempotency_key
    try:
        body = orjson.dumps(envelope)
    except TypeError as e:
        raise SubmitError(f"inputs are not JSON data ({e}); pass strings, numbers, lists and mappings") from e
    params = {"filename": document.filename[-MAX_FILENAME:], "check_handlers": "true" if check else "false"}
    return Call("POST", "/v1/runs", "submit", params=params, body=body)


def error_for(status: int, content: bytes, *, base_url: str, what: str) -> SteppeError:
    """The SteppeError an error response stands for (see the module docstring)."""
    problems = _problems(content)
    text = "; ".join(str(p.get("message", "")) for p in problems) or f"HTTP {status}"
    if status == 422 and problems and all(p.get("file") is not None for p in problems):
        return SpecValidationError(
            [
                SpecProblem(
                    str(p.get("message", "")), str(p["file"]), int(p.get("line") or 0), int(p.get("column") or 0)
                )
                for p in problems
            ]
        )
    if status == 403:  # the only 403 of the API: an approver the step does not name
        return ApproverRefusedError(text)
    return _plain_error(status, text, base_url=base_url, what=what)


def _plain_error(status: int, text: str, *, base_url: str, what: str) -> SteppeError:
    if status == 404 and text.startswith("no run"):
        return RunNotFoundError(text)
    if status == 404:
        return SteppeError(f"the API at {base_url} has no route for {what} ({text}); upgrade that `steppe api`")
    if status == 401:
        return ConfigError(f"the API at {base_url} refused the token: {text}; pass token= (the server's token)")
    if status in (409, 413, 415, 422):
        return SubmitError(text)
    if status >= 500:
        return InfrastructureError(f"the API at {base_url} failed {what} (HTTP {status}): {text}")
    return SteppeError(f"the API at {base_url} answered {what} with HTTP {status}: {text}")


def _problems(content: bytes) -> list[dict[str, Any]]:
    try:
        errors = orjson.loads(content).get("errors")
    except (orjson.JSONDecodeError, AttributeError):
        return [{"message": content[:500].decode(errors="replace").strip()}] if content.strip() else []
    return [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []


def _headers(token: str | None) -> dict[str, str]:
    headers = {"User-Agent": f"steppe-client/{__version__}", "Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


class _Base:
    def __init__(self, api_url: str, *, connect_timeout: float, timeout: float) -> None:
        if not api_url.startswith(("http://", "https://")):
            raise ConfigError(f"api_url {api_url!r} is not an http:// or https:// URL, e.g. http://127.0.0.1:8080")
        self.base_url = api_url.rstrip("/")
        self.connect_timeout = connect_timeout
        self.timeout = timeout

    def _timeout(self, call: Call) -> httpx.Timeout:
        return httpx.Timeout(self.timeout + call.extra_time, connect=self.connect_timeout)

    def _request(self, http: httpx.Client | httpx.AsyncClient, call: Call) -> httpx.Request:
        headers = {"Content-Type": "application/json"} if call.body is not None else None
        return http.build_request(
            call.method,
            call.path,
            params=call.params,
            content=call.body,
            headers=headers,
            timeout=self._timeout(call),
        )

    def _failure(self, call: Call, e: httpx.HTTPError) -> InfrastructureError:
        if isinstance(e, httpx.TimeoutException):
            limit = self.connect_timeout if isinstance(e, httpx.ConnectTimeout) else self.timeout + call.extra_time
            return InfrastructureError(
                f"the Steppe API at {self.base_url} did not answer {call.what} within {limit:g}s; check that "
                "`steppe api` is up, or pass a larger timeout="
            )
        return InfrastructureError(
            f"cannot reach the Steppe API at {self.base_url} ({e}); check api_url and that `steppe api` runs"
        )

    def _parse(self, call: Call, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            raise error_for(response.status_code, response.content, base_url=self.base_url, what=call.what)
        return orjson.loads(response.content) if response.content else None

    @staticmethod
    def _submitted(body: dict[str, Any]) -> SubmitResult:
        return SubmitResult(run_id=body["run_id"], workflow=body["workflow"], created=bool(body["created"]))

    @staticmethod
    def _runs_call(status: str | None, workflow: str | None, limit: int) -> Call:
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = status
        if workflow:
            params["workflow"] = workflow
        return Call("GET", "/v1/runs", "list runs", params=params)

    @staticmethod
    def _wait_call(run_id: str, seconds: float) -> Call:
        return Call("GET", f"/v1/runs/{run_id}/wait", "wait", params={"timeout": f"{seconds:.3f}"}, extra_time=seconds)


class HttpTransport(_Base):
    def __init__(
        self,
        api_url: str,
        *,
        token: str | None,
        connect_timeout: float,
        timeout: float,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(api_url, connect_timeout=connect_timeout, timeout=timeout)
        self._http = httpx.Client(base_url=self.base_url, headers=_headers(token), transport=transport)

    def _send(self, call: Call) -> Any:
        try:
            response = self._http.send(self._request(self._http, call))
        except httpx.HTTPError as e:
            raise self._failure(call, e) from e
        return self._parse(call, response)

    def close(self) -> None:
        self._http.close()

    def submit(
        self, document: Document, *, inputs: dict[str, Any], idempotency_key: str | None, check_handlers: bool
    ) -> SubmitResult:
        return self._submitted(self._send(submit_call(document, inputs, idempotency_key, check_handlers)))

    def get(self, run_id: str) -> dict[str, Any]:
        return self._send(Call("GET", f"/v1/runs/{run_id}", "get run"))  # type: ignore[no-any-return]

    def wait(self, run_id: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            remaining = max(0.0, deadline - time.monotonic())
            doc: dict[str, Any] = self._send(self._wait_call(run_id, min(remaining, LONG_POLL)))
            if doc["status"] in TERMINAL_RUN_STATUSES or time.monotonic() >= deadline:
                return doc

    def cancel(self, run_id: str) -> None:
        self._send(Call("POST", f"/v1/runs/{run_id}/cancel", "cancel"))

    def retry(self, run_id: str) -> None:
        self._send(Call("POST", f"/v1/runs/{run_id}/retry", "retry"))

    def runs(self, *, status: str | None, workflow: str | None, limit: int) -> list[dict[str, Any]]:
        return self._send(self._runs_call(status, workflow, limit))["runs"]  # type: ignore[no-any-return]

    def history(self, run_id: str, *, after: int) -> list[dict[str, Any]]:
        call = Call("GET", f"/v1/runs/{run_id}/events", "history", params={"after": after})
        return self._send(call)["events"]  # type: ignore[no-any-return]

    def signal(self, run_id: str, name: str, payload: Any, *, idempotency_key: str | None) -> waits.Accepted:
        return waits.accepted(self._send(waits.signal_call(run_id, name, payload, idempotency_key)))

    def decide(self, run_id: str, step: str, *, approve: bool, by: str | None, comment: str | None) -> waits.Accepted:
        call = waits.decision_call(run_id, step, approve=approve, by=by, comment=comment)
        return waits.accepted(self._send(call))


class AsyncHttpTransport(_Base):
    def __init__(
        self,
        api_url: str,
        *,
        token: str | None,
        connect_timeout: float,
        timeout: float,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(api_url, connect_timeout=connect_timeout, timeout=timeout)
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=_headers(token), transport=transport)

    async def _send(self, call: Call) -> Any:
        try:
            response = await self._http.send(self._request(self._http, call))
        except httpx.HTTPError as e:
            raise self._failure(call, e) from e
        return self._parse(call, response)

    async def close(self) -> None:
        await self._http.aclose()

    async def submit(
        self, document: Document, *, inputs: dict[str, Any], idempotency_key: str | None, check_handlers: bool
    ) -> SubmitResult:
        return self._submitted(await self._send(submit_call(document, inputs, idempotency_key, check_handlers)))

    async def get(self, run_id: str) -> dict[str, Any]:
        return await self._send(Call("GET", f"/v1/runs/{run_id}", "get run"))  # type: ignore[no-any-return]

    async def wait(self, run_id: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            remaining = max(0.0, deadline - time.monotonic())
            doc: dict[str, Any] = await self._send(self._wait_call(run_id, min(remaining, LONG_POLL)))
            if doc["status"] in TERMINAL_RUN_STATUSES or time.monotonic() >= deadline:
                return doc

    async def cancel(self, run_id: str) -> None:
        await self._send(Call("POST", f"/v1/runs/{run_id}/cancel", "cancel"))

    async def retry(self, run_id: str) -> None:
        await self._send(Call("POST", f"/v1/runs/{run_id}/retry", "retry"))

    async def runs(self, *, status: str | None, workflow: str | None, limit: int) -> list[dict[str, Any]]:
        return (await self._send(self._runs_call(status, workflow, limit)))["runs"]  # type: ignore[no-any-return]

    async def history(self, run_id: str, *, after: int) -> list[dict[str, Any]]:
        call = Call("GET", f"/v1/runs/{run_id}/events", "history", params={"after": after})
        return (await self._send(call))["events"]  # type: ignore[no-any-return]

    async def signal(self, run_id: str, name: str, payload: Any, *, idempotency_key: str | None) -> waits.Accepted:
        return waits.accepted(await self._send(waits.signal_call(run_id, name, payload, idempotency_key)))

    async def decide(
        self, run_id: str, step: str, *, approve: bool, by: str | None, comment: str | None
    ) -> waits.Accepted:
        call = waits.decision_call(run_id, step, approve=approve, by=by, comment=comment)
        return waits.accepted(await self._send(call))
