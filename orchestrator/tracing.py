"""OpenTelemetry tracing (docs/spec.md §12.7): one trace per run, one span per step attempt.

On when `STEPPE_TRACING__ENDPOINT`, `OTEL_EXPORTER_OTLP_ENDPOINT` or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` names an OTLP/HTTP collector, or `STEPPE_TRACING=console`
prints spans on stderr. Off by default, and then free: nothing here imports the SDK, no span is
created and step messages carry no trace context (`configure` returns None, the coordinator and
the worker keep None and skip every call).

The trace of a run: its trace id and the id of its run span are derived from the run id
(`run_context`), so every coordinator that dispatches a step of the run names the same parent
without storing anything. Step messages carry it as a W3C `traceparent`; the worker's span of
each attempt is its child and is current while the handler runs, so spans the handler opens
(`opentelemetry.trace.get_tracer(...).start_as_current_span(...)`) nest under their step. The
run span itself is written by the coordinator that sees the run finish, from its stored
`created_at` to its `finished_at` (`RunSpans`).

Service names: `steppe-coordinator` and `steppe-worker` (`STEPPE_TRACING__SERVICE_NAME` or
`OTEL_SERVICE_NAME` override them).
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from orchestrator.state import base_step_id

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

    from orchestrator.settings import Settings
    from orchestrator.store.runs import RunStore
    from orchestrator.wire import ResultMessage, StepMessage

COORDINATOR = "steppe-coordinator"
WORKER = "steppe-worker"
INSTRUMENTATION = "steppe"
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


class _Process:
    """Whether this process puts trace context into the step messages it builds (`configure` sets it)."""

    propagating = False


# The ids `_RunIds` hands out for the next span (a run span's derived ids), else random ones.
_next_ids: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar("steppe_run_ids", default=None)


def run_context(run_id: str) -> tuple[int, int]:
    """(trace id, span id) of a run's trace and run span, derived from its id (never zero)."""
    digest = hashlib.sha256(run_id.encode()).digest()
    return int.from_bytes(digest[:16], "big") or 1, int.from_bytes(digest[16:24], "big") or 1


def traceparent(run_id: str) -> str:
    """The W3C `traceparent` of a run's span, what step messages of the run carry (sampled)."""
    trace_id, span_id = run_context(run_id)
    return f"00-{trace_id:032x}-{span_id:016x}-01"


def run_traceparent(run_id: str) -> str:
    """`traceparent(run_id)` when this process traces, else "" (the message field is then left out)."""
    return traceparent(run_id) if _Process.propagating else ""


def enabled(settings: Settings) -> bool:
    cfg = settings.tracing
    return bool(cfg.console or cfg.endpoint or any(os.environ.get(v) for v in ENDPOINT_VARIABLES))


@dataclass
class Tracing:
    """A configured tracer provider (the process's global one) and this process's tracer."""

    provider: TracerProvider
    tracer: Tracer

    def shutdown(self) -> None:
        """Export what is buffered and stop (SIGTERM paths call this; atexit does too)."""
        self.provider.shutdown()


def configure(settings: Settings, service: str) -> Tracing | None:
    """Set up tracing for a coordinator or worker process, or None when it is off (the SDK is not imported)."""
    if not enabled(settings):
        return None
    from opentelemetry import trace
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    cfg = settings.tracing
    name = cfg.service_name or os.environ.get("OTEL_SERVICE_NAME") or service
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: name}), id_generator=_run_ids())
    exporters: list[SpanExporter] = []
    if cfg.endpoint or any(os.environ.get(v) for v in ENDPOINT_VARIABLES):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        endpoint = cfg.endpoint.rstrip("/") + "/v1/traces" if cfg.endpoint else None  # None: the OTEL_ variables
        exporters.append(OTLPSpanExporter(endpoint=endpoint))
    if cfg.console:
        exporters.append(ConsoleSpanExporter())
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)  # handlers' own spans go through the same provider
    _Process.propagating = True
    return Tracing(provider, provider.get_tracer(INSTRUMENTATION))


def _run_ids() -> Any:
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

    class RunIds(RandomIdGenerator):
        """Random ids, except for a run span, whose ids are its run's (`run_context`)."""

        def generate_trace_id(self) -> int:
            ids = _next_ids.get()
            return ids[0] if ids is not None else super().generate_trace_id()

        def generate_span_id(self) -> int:
            ids = _next_ids.get()
            return ids[1] if ids is not None else super().generate_span_id()

    return RunIds()


# -- worker: a span per step attempt -----------------------------------------------------------------


class StepSpans:
    """The worker's span of each step attempt, current while its handler runs."""

    def __init__(self, tracing: Tracing, *, worker: str) -> None:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.tracer = tracing.tracer
        self.worker = worker
        self.propagator = TraceContextTextMapPropagator()

    @contextlib.contextmanager
    def attempt(self, message: StepMessage, queue: str) -> Iterator[Span]:
        from opentelemetry.trace import SpanKind

        parent = self.propagator.extract({"traceparent": message.traceparent})
        attributes: dict[str, Any] = {
            "steppe.run_id": message.run,
            "steppe.workflow": message.workflow,
            "steppe.step": message.step,
            "steppe.attempt": message.attempt,
            "steppe.handler": message.handler,
            "steppe.kind": message.kind,
            "steppe.queue": queue,
            "steppe.worker": self.worker,
        }
        name = f"{message.kind} {base_step_id(message.step)}"
        with self.tracer.start_as_current_span(
            name, context=parent, kind=SpanKind.CONSUMER, attributes=attributes, record_exception=False
        ) as span:
            yield span

    @staticmethod
    def outcome(span: Span, result: ResultMessage) -> None:
        from opentelemetry.trace import Status, StatusCode

        span.set_attribute("steppe.outcome", result.status)
        if result.error is not None and result.status != "succeeded":
            span.set_status(Status(StatusCode.ERROR, f"{result.error.type}: {result.error.message}"[:1000]))
            span.add_event(
                "exception",
                {
                    "exception.type": result.error.type,
                    "exception.message": result.error.message,
                    "exception.stacktrace": result.error.traceback,
                },
            )


# -- coordinator: the run span, once the run finished --------------------------------------------------


class RunSpans:
    """Writes the span of each run that finished, with its run's derived ids, start and end."""

    def __init__(self, tracing: Tracing, store: RunStore) -> None:
        self.tracer = tracing.tracer
        self.store = store

    def finished(self, run_ids: Sequence[str]) -> None:
        """One statement for the finished runs of a batch; a run retried and finished again gets
        its run span written again (same ids, the new end)."""
        if not run_ids:
            return
        from opentelemetry.context import Context
        from opentelemetry.trace import SpanKind, Status, StatusCode

        try:
            with self.store.connection() as conn:
                rows = conn.execute(
                    "SELECT run_id, workflow, status, parent_run_id, created_at, finished_at FROM workflow_runs"
                    " WHERE run_id = ANY(%s)",
                    (list(run_ids),),
                ).fetchall()
        except Exception as e:  # a trace is never worth a coordinator's loop: skip these run spans
            structlog.get_logger(__name__).warning("run_spans_skipped", runs=len(run_ids), error=str(e))
            return
        for row in rows:
            attributes = {"steppe.run_id": row["run_id"], "steppe.workflow": row["workflow"]}
            attributes["steppe.status"] = row["status"]
            if row["parent_run_id"]:
                attributes["steppe.parent_run_id"] = row["parent_run_id"]
            token = _next_ids.set(run_context(row["run_id"]))
            try:
                span = self.tracer.start_span(
                    f"run {row['workflow']}",
                    context=Context(),  # a root: the ids come from `_next_ids`
                    kind=SpanKind.INTERNAL,
                    attributes=attributes,
                    start_time=_nanos(row["created_at"]),
                )
            finally:
                _next_ids.reset(token)
            if row["status"] != "succeeded":
                span.set_status(Status(StatusCode.ERROR, f"run {row['status']}"))
            span.end(end_time=_nanos(row["finished_at"]) if row["finished_at"] is not None else None)


def _nanos(when: Any) -> int:
    return int(when.timestamp() * 1_000_000_000)
