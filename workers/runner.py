"""Run one step attempt: resolve secrets, call the handler under its timeout, build the result."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import os
import time
import traceback
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from typing import Any

import msgspec
import structlog
from orchestrator.templates import find_references, resolve_secrets

from orchestrator.errors import NonRetryableStepError, StepError, TemplateError
from orchestrator.state import base_step_id
from orchestrator.wire import ResultMessage, StepErrorInfo, StepMessage, dumps
from workers.context import StepContext
from workers.registry import HandlerRegistry

REDACTED = "***"


class Redactor:
    """Removes secret values from text before it leaves the worker."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()

    def add(self, values: Mapping[str, str]) -> None:
        self._secrets.update(v for v in values.values() if v and len(v) >= 3)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def processor(self, _logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
        """structlog processor: redact every string value of a log event."""
        if not self._secrets:
            return event
        return {k: self(v) if isinstance(v, str) else v for k, v in event.items()}


class StepRunner:
    """Executes step messages against a handler registry."""

    def __init__(
        self,
        *,
        registry: HandlerRegistry,
        executor: Executor,
        worker_id: str,
        payload_limit: int,
        redactor: Redactor,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.registry = registry
        self.executor = executor
        self.worker_id = worker_id
        self.payload_limit = payload_limit
        self.redactor = redactor
        self.env = env if env is not None else os.environ

    async def run(
        self,
        message: StepMessage,
        *,
        on_heartbeat: Callable[[], None],
        cancelled: asyncio.Event,
    ) -> ResultMessage:
        started = time.perf_counter()
        log = structlog.get_logger("steppe.handler").bind(
            run_id=message.run, step=message.step, attempt=message.attempt, handler=message.handler
        )
        try:
            output = await self._call(message, log, on_heartbeat, cancelled)
            status = "succeeded"
            error = None
        except asyncio.CancelledError:
            if not cancelled.is_set():
                raise  # the worker itself is shutting down hard
            output, status = None, "cancelled"
            error = StepErrorInfo(type="Cancelled", message="the run was cancelled", retryable=False)
        except TimeoutError:
            output, status = None, "failed"
            error = StepErrorInfo(
                type="StepTimeoutError",
                message=f"handler {message.handler!r} did not finish within {message.timeout:g}s and was cancelled",
                retryable=True,
            )
        except Exception as e:
            output, status = None, "failed"
            error = StepErrorInfo(
                type=type(e).__name__,
                message=self.redactor(str(e)),
                traceback=self.redactor("".join(traceback.format_exception(e))[-8000:]),
                retryable=not (isinstance(e, StepError) and e.non_retryable),
            )
        return ResultMessage(
            run=message.run,
            step=message.step,
            attempt=message.attempt,
            status=status,  # type: ignore[arg-type]
            worker=self.worker_id,
            output=output,
            error=error,
            duration=time.perf_counter() - started,
        )

    async def _call(
        self, message: StepMessage, log: Any, on_heartbeat: Callable[[], None], cancelled: asyncio.Event
    ) -> Any:
        entry = self.registry.get(message.handler)
        if entry is None:
            raise UnknownHandlerError(
                f"handler {message.handler!r} is not registered on worker {self.worker_id}; start a worker "
                "with --import for the module that defines it"
            )
        try:
            # Always the second stage: it also turns escaped `$${{` from upstream outputs back into `${{`.
            self.redactor.add(_secret_values(message.args, self.env))
            args = resolve_secrets(message.args, self.env)
        except TemplateError as e:
            raise NonRetryableStepError(str(e)) from e
        ctx = StepContext(
            run_id=message.run,
            step_id=base_step_id(message.step),
            step_key=message.step,
            attempt=message.attempt,
            workflow=message.workflow,
            inputs=message.inputs,
            kind=message.kind,
            log=log,
            _on_heartbeat=on_heartbeat,
            _cancelled=cancelled,
        )
        try:
            entry.signature.bind(ctx, **args)
        except TypeError as e:
            raise NonRetryableStepError(
                f"handler {message.handler!r} cannot take these arguments: {e}"
            ) from e
        if entry.is_async:
            output = await asyncio.wait_for(entry.func(ctx, **args), timeout=message.timeout)
        else:
            loop = asyncio.get_running_loop()
            call = functools.partial(contextvars.copy_context().run, entry.func, ctx, **args)
            # A sync handler that ignores the timeout keeps its thread; the slot is freed anyway.
            output = await asyncio.wait_for(
                loop.run_in_executor(self.executor, call), timeout=message.timeout
            )
        return self._check_output(message, output)

    def _check_output(self, message: StepMessage, output: Any) -> Any:
        try:
            encoded = dumps(output)
        except (TypeError, msgspec.EncodeError) as e:
            raise NonRetryableStepError(
                f"handler {message.handler!r} returned a value that is not JSON-serialisable: {e}"
            ) from e
        if len(encoded) > self.payload_limit:
            raise NonRetryableStepError(
                f"output of {message.handler!r} is {len(encoded)} bytes, over the {self.payload_limit}-byte limit; "
                "store large data elsewhere (object storage, a table) and return a reference to it"
            )
        if b"\\u0000" in encoded:
            raise NonRetryableStepError(
                f"output of {message.handler!r} contains a NUL character (\\u0000), which PostgreSQL JSONB "
                "cannot store; encode binary data (e.g. base64)"
            )
        return output


class UnknownHandlerError(StepError):
    """This worker does not serve the handler; another worker (or a retry) may."""


def _secret_values(args: Any, env: Mapping[str, str]) -> dict[str, str]:
    names = {ref.name for ref in find_references(args) if ref.root == "secrets" and ref.name}
    return {n: env[n] for n in names if n in env}
