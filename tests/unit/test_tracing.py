"""orchestrator/tracing.py: a run's derived trace context, the settings that turn tracing on, the wire
field old and new processes both read, and that nothing is imported or propagated while it is off."""

from __future__ import annotations

import os
import subprocess
import sys

import msgspec
import pytest

from orchestrator import tracing
from orchestrator.settings import Settings
from orchestrator.wire import SCHEMA_VERSION, StepMessage, decode_step, encode


def test_a_runs_trace_context_is_derived_from_its_id() -> None:
    trace_id, span_id = tracing.run_context("r-0123abcd")
    assert (trace_id, span_id) == tracing.run_context("r-0123abcd")
    assert tracing.run_context("r-0123abce")[0] != trace_id
    assert 0 < trace_id < 2**128
    assert 0 < span_id < 2**64
    assert tracing.traceparent("r-0123abcd") == f"00-{trace_id:032x}-{span_id:016x}-01"


@pytest.mark.parametrize(
    ("environment", "endpoint", "console"),
    [
        ({}, None, False),
        ({"STEPPE_TRACING": "console"}, None, True),
        ({"STEPPE_TRACING": "off"}, None, False),
        ({"STEPPE_TRACING": "http://127.0.0.1:4318"}, "http://127.0.0.1:4318", False),
        ({"STEPPE_TRACING__ENDPOINT": "http://c:4318", "STEPPE_TRACING__CONSOLE": "true"}, "http://c:4318", True),
    ],
)
def test_tracing_settings(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], endpoint: str | None, console: bool
) -> None:
    for name in ("STEPPE_TRACING", *tracing.ENDPOINT_VARIABLES):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert (settings.tracing.endpoint, settings.tracing.console) == (endpoint, console)
    assert tracing.enabled(settings) is bool(endpoint or console)


def test_the_standard_otlp_variable_turns_it_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    assert tracing.enabled(Settings())


def test_the_wire_field_is_optional_both_ways() -> None:
    plain = StepMessage(run="r-1", step="a", attempt=1, handler="h", partition=0)
    assert b"traceparent" not in encode(plain)  # off: not a byte more on the wire
    assert decode_step(encode(plain)).traceparent == ""
    traced = msgspec.structs.replace(plain, traceparent=tracing.traceparent("r-1"))
    assert decode_step(encode(traced)).traceparent == tracing.traceparent("r-1")

    class Before(msgspec.Struct, forbid_unknown_fields=False):  # a worker that predates the field
        run: str
        v: int = SCHEMA_VERSION

    assert msgspec.json.decode(encode(traced), type=Before) == Before(run="r-1", v=SCHEMA_VERSION)
    assert SCHEMA_VERSION == 2


def test_off_means_no_sdk_import_and_no_trace_context() -> None:
    script = """
import sys
import orchestrator.coordinator, orchestrator.messages, workers.consumer, orchestrator.cli.processes
from orchestrator import tracing
from orchestrator.settings import Settings
assert tracing.configure(Settings(), tracing.WORKER) is None
assert tracing.run_traceparent("r-1") == ""
loaded = [m for m in sys.modules if m.startswith(("opentelemetry.sdk.trace", "opentelemetry.exporter"))]
assert not loaded, loaded
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STEPPE_TRACING", "OTEL_EXPORTER_OTLP"))}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
