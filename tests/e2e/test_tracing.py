"""Tracing across real processes (docs/spec.md §12.7): a coordinator and a worker subprocess export
spans over OTLP/HTTP to a receiver in this test, which decodes the protobuf requests."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from orchestrator.tracing import run_context
from tests.e2e.conftest import Env
from tests.helpers import assert_eventually

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

TRACED = """
name: traced
steps:
  - id: first
    handler: traced.sync_work
    with: {n: 1}
  - id: second
    handler: traced.async_work
    needs: [first]
    with: {n: "${{ steps.first.output.n }}"}
  - id: broken
    handler: builtin.fail
    needs: [first]
    with: {message: "expected to fail once", times: 1}
    retry: {max_attempts: 2, initial_delay: 0.1}
"""


@dataclass(frozen=True)
class Received:
    service: str
    trace_id: int
    span_id: int
    parent_id: int
    name: str
    attributes: dict[str, Any]
    error: bool


class Receiver:
    """An OTLP/HTTP trace receiver on 127.0.0.1: every span of every export request, decoded."""

    def __init__(self) -> None:
        self.spans: list[Received] = []
        self.lock = threading.Lock()
        receiver = self

        class Handle(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                receiver.add(request)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handle)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def add(self, request: ExportTraceServiceRequest) -> None:
        got = []
        for resource_spans in request.resource_spans:
            service = next(
                (a.value.string_value for a in resource_spans.resource.attributes if a.key == "service.name"), ""
            )
            for scope in resource_spans.scope_spans:
                for s in scope.spans:
                    attributes = {a.key: _value(a.value) for a in s.attributes}
                    got.append(
                        Received(
                            service=service,
                            trace_id=int.from_bytes(s.trace_id, "big"),
                            span_id=int.from_bytes(s.span_id, "big"),
                            parent_id=int.from_bytes(s.parent_span_id, "big") if s.parent_span_id else 0,
                            name=s.name,
                            attributes=attributes,
                            error=s.status.code == 2,
                        )
                    )
        with self.lock:
            self.spans.extend(got)

    def of_trace(self, trace_id: int) -> list[Received]:
        with self.lock:
            return [s for s in self.spans if s.trace_id == trace_id]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


def test_a_run_is_one_trace_with_a_span_per_step_attempt_and_the_handlers_spans_inside(
    e2e: Env, receiver: Receiver
) -> None:
    e2e.cluster.env.update(
        {"STEPPE_TRACING__ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_SERVICE_NAME": ""}
    )
    e2e.cluster.start_coordinator()
    e2e.cluster.start_worker(queues=["default"], imports=["tests.e2e.traced_handlers"])
    e2e.cluster.wait_for_workers(e2e.redis, 1)
    run_id = e2e.submit(TRACED)
    assert_eventually(lambda: e2e.run(run_id)["status"] == "succeeded", timeout=60, message=e2e.log)
    trace_id, run_span_id = run_context(run_id)

    def complete() -> list[Received]:
        spans = receiver.of_trace(trace_id)
        names = [s.name for s in spans]
        wanted = ("run traced", "step first", "step second", "handler.sync_work", "handler.async_inner")
        return spans if all(n in names for n in wanted) and names.count("step broken") == 2 else []

    spans = assert_eventually(complete, timeout=30, message=lambda: f"{receiver.spans}\n{e2e.log()}")
    assert not [s for s in receiver.spans if s.trace_id != trace_id], "every span of the run is in its trace"
    by_name: dict[str, list[Received]] = {}
    for s in spans:
        by_name.setdefault(s.name, []).append(s)
    (run_span,) = by_name["run traced"]
    assert (run_span.service, run_span.span_id, run_span.parent_id) == ("steppe-coordinator", run_span_id, 0)
    assert run_span.attributes == {"steppe.run_id": run_id, "steppe.workflow": "traced", "steppe.status": "succeeded"}
    steps = [s for s in spans if s.name.startswith("step ")]
    assert sorted(s.name for s in steps) == ["step broken", "step broken", "step first", "step second"]
    for step in steps:
        assert step.service == "steppe-worker"
        assert step.parent_id == run_span_id, step
        assert step.attributes["steppe.run_id"] == run_id
        assert step.attributes["steppe.queue"] == "default"
    (first,) = by_name["step first"]
    assert first.attributes | {"steppe.worker": ""} == {
        "steppe.run_id": run_id,
        "steppe.workflow": "traced",
        "steppe.step": "first",
        "steppe.attempt": 1,
        "steppe.handler": "traced.sync_work",
        "steppe.kind": "step",
        "steppe.queue": "default",
        "steppe.worker": "",
        "steppe.outcome": "succeeded",
    }
    broken = sorted(by_name["step broken"], key=lambda s: s.attributes["steppe.attempt"])
    assert [(b.attributes["steppe.outcome"], b.error) for b in broken] == [("failed", True), ("succeeded", False)]
    # The handlers' own spans nest under their step's span (a sync handler on a thread, an async one).
    (second,) = by_name["step second"]
    (sync_span,) = by_name["handler.sync_work"]
    assert (sync_span.parent_id, sync_span.service, sync_span.attributes) == (
        first.span_id,
        "steppe-worker",
        {"work.n": 1},
    )
    (async_span,) = by_name["handler.async_work"]
    (inner,) = by_name["handler.async_inner"]
    assert (async_span.parent_id, inner.parent_id) == (second.span_id, async_span.span_id)
