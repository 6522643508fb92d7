"""Run one step attempt: resolve secrets, call the handler under its timeout, build the result."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import time
import traceback
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import Any

import msgspec
import structlog

from orchestrator.errors import NonRetryableStepError, StepError, TemplateError
from orchestrator.state import base_step_id
from orchestrator.templates import find_references, resolve_secrets
from orchestrator.tracing import StepSpans
from orchestrator.wire import ResultMessage, StepErrorInfo, StepMessage, dumps
from patterns.breaker import BreakerRegistry, CircuitOpenError, SharedBreaker
from workers.capture import capture_step
from workers.context import StepContext
from workers.inputs import InputsCache, inputs_of
from workers.redaction import REDACTED, Redactor
from workers.registry import Handler, HandlerRegistry
from workers.secrets import SecretStore

__all__ = ["REDACTED", "Redactor", "StepRunner", "UnknownHandlerError"]


class StepRunner:
    """Executes step messages against a handler registry.

    A message that names a circuit breaker is guarded by it (`patterns.breaker`): while the
    breaker is open the handler is not called and the attempt is reported as deferred;
    otherwise the handler's outcome (a timeout is a failure) is recorded on the breaker.
    Handlers get only the secrets `secrets` exposes; whatever they print or log while running
    is captured for the step and logged redacted (`workers.capture`).
    """

    def __init__(
        self,
        *,
        registry: HandlerRegistry,
        executor: Executor,
        worker_id: str,
        payload_limit: int,
        redactor: Redactor,
        secrets: SecretStore | None = None,
        breakers: BreakerRegistry | None = None,
    ) -> None:
        self.registry = registry
        self.executor = executor
        self.worker_id = worker_id
        self.payload_limit = payload_limit
        self.redactor = redactor
        self.secrets = secrets if secrets is not None else SecretStore()
        # Redacted from the start, even before a step asks for them (a handler may read them itself).
        redactor.add(self.secrets.values())
        structlog.get_logger(__name__).info(
            "worker_secrets", exposed=self.secrets.exposed(), directory=str(self.secrets.directory or "")
        )
        # Set by the worker once its Redis client exists; without it breakers are not enforced.
        self.breakers = breakers
        # Set by the worker too: where `ctx.inputs` comes from (`workers.inputs`).
        self.inputs: InputsCache | None = None
        # Set by `steppe worker` when tracing is on (orchestrator/tracing.py); None costs nothing.
        self.spans: StepSpans | None = None
        self._handler_log: Any = None  # the `steppe.handler` logger, bound on the first step
        # What binding said per handler and argument names (`_check_arguments`).
        self._bound: dict[tuple[str, tuple[str, ...]], tuple[Handler, str | None]] = {}

    async def run(
        self,
        message: StepMessage,
        *,
        on_heartbeat: Callable[[], None],
        cancelled: asyncio.Event,
        queue: str = "",
    ) -> ResultMessage:
        if self.spans is None or not message.traceparent:
            return await self._attempt(message, on_heartbeat=on_heartbeat, cancelled=cancelled)
        # The attempt's span is current while the handler runs: the handler's own spans nest under it.
        with self.spans.attempt(message, queue) as span:
            result = await self._attempt(message, on_heartbeat=on_heartbeat, cancelled=cancelled)
            self.spans.outcome(span, result)
        return result

    async def _attempt(
        self,
        message: StepMessage,
        *,
        on_heartbeat: Callable[[], None],
        cancelled: asyncio.Event,
    ) -> ResultMessage:
        started = time.perf_counter()
        if self._handler_log is None:  # bound once logging is configured; binding a proxy per step costs more
            self._handler_log = structlog.get_logger("steppe.handler").bind()
        log = self._handler_log.bind(
            run_id=message.run, step=message.step, attempt=message.attempt, handler=message.handler
        )
        redacted: list[str] = []
        try:
            with capture_step(self.redactor, log):
                output, redacted = await self._call(message, log, on_heartbeat, cancelled)
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
            redacted=redacted,
        )

    async def _call(
        self, message: StepMessage, log: Any, on_heartbeat: Callable[[], None], cancelled: asyncio.Event
    ) -> tuple[Any, list[str]]:
        entry = self.registry.get(message.handler)
        if entry is None:
            raise UnknownHandlerError(
                f"handler {message.handler!r} is not registered on worker {self.worker_id}; start a worker "
                "with --import for the module that defines it"
            )
        args = message.args
        if _has_template(args):  # most steps have none: no scan, no render
            # Only the secrets this worker exposes (SecretNotExposedError otherwise: no retries).
            values = self.secrets.lookup(_secret_names(args), worker=self.worker_id)
            self.redactor.add(values)
            try:
                # Always the second stage: it also turns escaped `$${{` from upstream outputs back into `${{`.
                args = resolve_secrets(args, values)
            except TemplateError as e:
                raise NonRetryableStepError(str(e)) from e
        inputs = await inputs_of(message, self.inputs)  # InputsUnavailableError: retried
        ctx = StepContext(
            run_id=message.run,
            step_id=base_step_id(message.step),
            step_key=message.step,
            attempt=message.attempt,
            workflow=message.workflow,
            kind=message.kind,
            event=message.event,
            feedback=message.feedback,
            annotations=message.annotations,
            inputs=inputs,
            log=log,
            _on_heartbeat=on_heartbeat,
            _cancelled=cancelled,
        )
        self._check_arguments(entry, ctx, args)
        invoke = functools.partial(self._invoke, entry, ctx, args, message.timeout)
        breaker = self._breaker_of(message)
        output = await (invoke() if breaker is None else _guarded(breaker, invoke, lease=message.timeout))
        # Outputs reach PostgreSQL (the event log) and downstream steps: no secret value may travel in them.
        redacted, found = self.redactor.redact_counting(self._check_output(message, output))
        if found:
            log.warning("step_output_redacted", secrets=found, marker=REDACTED)
        return redacted, found

    def _check_arguments(self, entry: Handler, ctx: StepContext, args: dict[str, Any]) -> None:
        """NonRetryableStepError unless the handler takes these arguments. Binding looks only at their
        names, so its outcome is kept per handler and names (a bounded cache, emptied when it fills)."""
        key = (entry.name, tuple(args))
        known = self._bound.get(key)
        if known is None or known[0] is not entry:  # not seen, or the name was registered again
            try:
                entry.signature.bind(ctx, **args)
                problem = None
            except TypeError as e:
                problem = str(e)
            if len(self._bound) >= BIND_CACHE_SIZE:
                self._bound.clear()
            known = self._bound[key] = (entry, problem)
        problem = known[1]
        if problem is not None:
            raise NonRetryableStepError(f"handler {entry.name!r} cannot take these arguments: {problem}")

    async def _invoke(self, entry: Handler, ctx: StepContext, args: dict[str, Any], timeout: float) -> Any:
        if entry.is_async:
            async with asyncio.timeout(timeout):  # in this task: wait_for would start one more per step
                return await entry.func(ctx, **args)
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


# Distinct (handler, argument names) whose binding `_check_arguments` remembers.
BIND_CACHE_SIZE = 4096


def _has_template(args: dict[str, Any]) -> bool:
    """Whether any key or value holds `${{` (which `$${{`, the escaped form, contains too). Messages
    come from JSON, so their encoding shows every string as written."""
    return bool(args) and b"${{" in dumps(args)


def _secret_names(args: Any) -> set[str]:
    return {ref.name for ref in find_references(args) if ref.root == "secrets" and ref.name}
