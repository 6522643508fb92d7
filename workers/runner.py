"""Run one step attempt: resolve secrets, call the handler under its timeout, build the result."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import os
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Executor
from typing import Any

import msgspec
import orjson
import structlog
from structlog.types import EventDict

from orchestrator.errors import NonRetryableStepError, StepError, TemplateError
from orchestrator.state import base_step_id
from orchestrator.templates import find_references, resolve_secrets
from orchestrator.wire import ResultMessage, StepErrorInfo, StepMessage, dumps
from patterns.breaker import BreakerRegistry, CircuitOpenError, SharedBreaker
from workers.context import StepContext
from workers.registry import Handler, HandlerRegistry

REDACTED = "***"


class Redactor:
    """Removes the secret values this worker resolved from everything that leaves it.

    Text (error messages, tracebacks), JSON-like values (step outputs) and structlog events
    (before rendering: every value; after rendering: the line, tracebacks included). Secrets
    are kept as an immutable tuple, so that handler threads that log never see it change.
    """

    def __init__(self) -> None:
        self._secrets: tuple[str, ...] = ()
        self._rendered: tuple[str, ...] = ()

    def add(self, values: Mapping[str, str]) -> None:
        new = {v for v in values.values() if v and len(v) >= 3} - set(self._secrets)
        if not new:
            return
        # Longest first, so that a secret containing another one is replaced whole.
        self._secrets = tuple(sorted({*self._secrets, *new}, key=len, reverse=True))
        escaped = {orjson.dumps(s).decode()[1:-1] for s in self._secrets}  # as a JSON renderer writes it
        self._rendered = tuple(sorted({*self._secrets, *escaped}, key=len, reverse=True))

    def __call__(self, text: str) -> str:
        return _replace_all(text, self._secrets)

    def redact_value(self, value: Any) -> Any:
        """`value` with every string in it (dict keys included) redacted; containers are copied."""
        if not self._secrets:
            return value
        if isinstance(value, str):
            return self(value)
        if isinstance(value, dict):
            return {self.redact_value(k): self.redact_value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self.redact_value(v) for v in value)
        return value

    def processor(self, _logger: Any, _name: str, event: EventDict) -> EventDict:
        """structlog processor (before the renderer): redact every value of a log event, nested ones too."""
        if not self._secrets:
            return event
        return {key: self.redact_value(value) for key, value in event.items()}

    def rendered(self, _logger: Any, _name: str, line: Any) -> Any:
        """structlog processor (after the renderer): redact the rendered line, whatever it formatted."""
        if isinstance(line, str):
            return _replace_all(line, self._rendered)
        if isinstance(line, bytes):
            for secret in self._rendered:
                line = line.replace(secret.encode(), REDACTED.encode())
        return line

    def install_log_processors(self) -> None:
        """Redact this process's structlog output from now on (call once logging is configured).

        The configured processor list is changed in place, so that loggers cached before this
        call (structlog's `cache_logger_on_first_use`) redact too.
        """
        processors = structlog.get_config()["processors"]
        if self.processor in processors:
            return
        if isinstance(processors, list) and processors:
            processors.insert(len(processors) - 1, self.processor)
            processors.append(self.rendered)
        else:
            *head, renderer = list(processors) or [structlog.processors.KeyValueRenderer()]
            structlog.configure(processors=[*head, self.processor, renderer, self.rendered])


def _replace_all(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


class StepRunner:
    """Executes step messages against a handler registry.

    A message that names a circuit breaker is guarded by it (`patterns.breaker`): while the
    breaker is open the handler is not called and the attempt is reported as deferred;
    otherwise the handler's outcome (a timeout is a failure) is recorded on the breaker.
    """

    def __init__(
        self,
        *,
        registry: HandlerRegistry,
        executor: Executor,
        worker_id: str,
        payload_limit: int,
        redactor: Redactor,
        env: Mapping[str, str] | None = None,
        breakers: BreakerRegistry | None = None,
    ) -> None:
        self.registry = registry
        self.executor = executor
        self.worker_id = worker_id
        self.payload_limit = payload_limit
        self.redactor = redactor
        self.env = env if env is not None else os.environ
        # Set by the worker once its Redis client exists; without it breakers are not enforced.
        self.breakers = breakers

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
        except CircuitOpenError as e:
            log.debug("step_deferred", breaker=e.name, retry_after=round(e.retry_after, 3))
            output, status = None, "deferred"
            error = StepErrorInfo(type="CircuitOpenError", message=str(e), retryable=True)
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
            event=message.event,
            feedback=message.feedback,
            annotations=message.annotations,
            log=log,
            _on_heartbeat=on_heartbeat,
            _cancelled=cancelled,
        )
        try:
            entry.signature.bind(ctx, **args)
        except TypeError as e:
            raise NonRetryableStepError(f"handler {message.handler!r} cannot take these arguments: {e}") from e
        invoke = functools.partial(self._invoke, entry, ctx, args, message.timeout)
        breaker = self._breaker_of(message)
        output = await (invoke() if breaker is None else _guarded(breaker, invoke, lease=message.timeout))
        # Outputs reach PostgreSQL (the event log) and downstream steps: no secret value may travel in them.
        return self.redactor.redact_value(self._check_output(message, output))

    async def _invoke(self, entry: Handler, ctx: StepContext, args: dict[str, Any], timeout: float) -> Any:
        if entry.is_async:
            return await asyncio.wait_for(entry.func(ctx, **args), timeout=timeout)
        loop = asyncio.get_running_loop()
        call = functools.partial(contextvars.copy_context().run, entry.func, ctx, **args)
        # A sync handler that ignores the timeout keeps its thread; the slot is freed anyway.
        return await asyncio.wait_for(loop.run_in_executor(self.executor, call), timeout=timeout)

    def _breaker_of(self, message: StepMessage) -> SharedBreaker | None:
        if message.breaker is None or self.breakers is None:
            return None
        return self.breakers.get(message.breaker, message.breaker_config)

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


# A half-open breaker's trial holds its lease for the step's timeout plus this margin.
TRIAL_LEASE_GRACE = 5.0


async def _guarded(breaker: SharedBreaker, invoke: Callable[[], Awaitable[Any]], *, lease: float) -> Any:
    """Call through `breaker`: CircuitOpenError while it is open; the outcome is recorded on it."""
    permit = await breaker.acquire(lease=lease + TRIAL_LEASE_GRACE)
    try:
        output = await invoke()
    except asyncio.CancelledError:
        await breaker.release(permit)  # cancelled: neither a success nor a failure of the service
        raise
    except Exception as e:
        await breaker.record(permit, e)
        raise
    await breaker.record(permit, None)
    return output


class UnknownHandlerError(StepError):
    """This worker does not serve the handler; another worker (or a retry) may."""


def _secret_values(args: Any, env: Mapping[str, str]) -> dict[str, str]:
    names = {ref.name for ref in find_references(args) if ref.root == "secrets" and ref.name}
    return {n: env[n] for n in names if n in env}
