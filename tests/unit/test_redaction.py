"""Secrets are resolved only in the worker and never leave it: errors, outputs, logs, dead letters."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import structlog

from orchestrator.engine import RunEngine
from orchestrator.logging import configure_logging
from orchestrator.spec import load_workflow
from orchestrator.state import RunProjection
from orchestrator.wire import FIELD, ResultMessage, StepMessage, encode
from orchestrator.workflow import compile_workflow
from patterns.dead_letter import DeadLetter
from workers.context import StepContext
from workers.registry import HandlerRegistry
from workers.runner import REDACTED, Redactor, StepRunner
from workers.secrets import SecretStore

SECRET = "tok-9f8e7d6c5b4a"
ENV = {"API_TOKEN": SECRET, "SHORT": "ab"}


@pytest.fixture
def restore_logging() -> Iterator[None]:
    saved = structlog.get_config()
    processors = list(saved["processors"])
    factory, streams = logging.getLogRecordFactory(), (sys.stdout, sys.stderr)  # install_log_processors sets them
    yield
    structlog.configure(**{**saved, "processors": processors})
    logging.setLogRecordFactory(factory)
    sys.stdout, sys.stderr = streams


def redactor(*values: str) -> Redactor:
    r = Redactor()
    r.add({f"S{i}": v for i, v in enumerate(values)})
    return r


def test_text_is_redacted_everywhere_longest_secret_first_and_tiny_values_are_ignored() -> None:
    r = redactor(SECRET, SECRET[:8], "ab")
    assert r(f"a {SECRET} b {SECRET}") == f"a {REDACTED} b {REDACTED}"
    assert r(f"{SECRET[:8]}!") == f"{REDACTED}!"
    assert r("ab ab") == "ab ab"  # 1-2 characters would redact half of every text
    assert Redactor()("nothing to hide") == "nothing to hide"


def test_values_are_redacted_recursively_keys_included() -> None:
    r = redactor(SECRET)
    value = {"token": SECRET, SECRET: 1, "list": [f"Bearer {SECRET}", 3, None], "tuple": (SECRET,), "n": 1.5}
    assert r.redact_value(value) == {
        "token": REDACTED,
        REDACTED: 1,
        "list": [f"Bearer {REDACTED}", 3, None],
        "tuple": (REDACTED,),
        "n": 1.5,
    }


def _log_everything(log: Any, secret: str) -> None:
    class Client:
        def __str__(self) -> str:
            return f"Client(token={secret})"

    log.info("calling_upstream", token=secret, nested={"auth": [f"Bearer {secret}"]}, client=Client())
    try:
        raise RuntimeError(f"upstream refused {secret}")
    except RuntimeError:
        log.exception("upstream_failed")


@pytest.mark.parametrize("json_logs", [True, False], ids=["json", "console"])
def test_structlog_output_of_the_worker_is_redacted(
    json_logs: bool, restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging(json=json_logs)
    early = structlog.get_logger("early")
    early.info("cached_before_install")  # a logger cached before the redactor was installed
    r = Redactor()
    r.install_log_processors()
    r.install_log_processors()  # idempotent
    tricky = 'pa"ss\\word-42'  # escaped by the JSON renderer
    r.add({"API_TOKEN": SECRET, "DB": tricky})
    _log_everything(early, SECRET)
    _log_everything(structlog.get_logger("late").bind(step="s"), tricky)
    err = capsys.readouterr().err
    assert "upstream_failed" in err
    assert "calling_upstream" in err
    assert "Traceback" in err or "exc_type" in err or "exception" in err
    assert SECRET not in err
    assert tricky not in err
    assert json.dumps(tricky)[1:-1] not in err
    assert REDACTED in err
    assert structlog.get_config()["processors"].count(r.processor) == 1


def run_step(message: StepMessage, handler: Any, *, redactor_: Redactor | None = None) -> ResultMessage:
    registry = HandlerRegistry()
    registry.register(message.handler, handler)

    async def main() -> ResultMessage:
        with ThreadPoolExecutor(max_workers=1) as executor:
            runner = StepRunner(
                registry=registry,
                executor=executor,
                worker_id="w1",
                payload_limit=1 << 20,
                redactor=redactor_ or Redactor(),
                secrets=SecretStore(names=frozenset(ENV), env=ENV),
            )
            return await runner.run(message, on_heartbeat=lambda: None, cancelled=asyncio.Event())

    return asyncio.run(main())


def step(handler: str) -> StepMessage:
    return StepMessage(
        run="r1",
        step="call",
        attempt=1,
        handler=handler,
        partition=0,
        args={"token": "${{ secrets.API_TOKEN }}", "header": "Bearer ${{ secrets.API_TOKEN }}"},
    )


def test_step_errors_and_tracebacks_are_redacted() -> None:
    async def refuse(ctx: StepContext, token: str, header: str) -> None:
        assert header == f"Bearer {SECRET}"  # the handler itself sees the real value
        raise RuntimeError(f"upstream refused {token}")

    result = run_step(step("t.refuse"), refuse)
    assert result.status == "failed"
    assert result.error.message == f"upstream refused {REDACTED}"
    assert "upstream refused" in result.error.traceback
    assert SECRET not in encode(result).decode()


def test_step_outputs_are_redacted_before_they_reach_the_event_log() -> None:
    def leak(ctx: StepContext, token: str, header: str) -> dict[str, Any]:
        return {"echo": token, "headers": [header], "ok": True}

    result = run_step(step("t.leak"), leak)
    assert result.status == "succeeded"
    assert result.output == {"echo": REDACTED, "headers": [f"Bearer {REDACTED}"], "ok": True}


def test_handler_logs_are_redacted(restore_logging: None, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(json=True)
    shared = Redactor()
    shared.install_log_processors()

    async def chatty(ctx: StepContext, token: str, header: str) -> dict[str, Any]:
        ctx.log.info("using_token", token=token, header=header)
        return {}

    assert run_step(step("t.chatty"), chatty, redactor_=shared).status == "succeeded"
    err = capsys.readouterr().err
    assert "using_token" in err
    assert SECRET not in err


def test_dispatched_and_dead_lettered_messages_carry_references_never_values() -> None:
    wf = compile_workflow(
        load_workflow(
            "name: s\nsteps:\n  - id: call\n    handler: t.x\n    with: {token: '${{ secrets.API_TOKEN }}', n: 1}\n"
        )
    )
    engine = RunEngine(
        workflow=wf,
        projection=RunProjection(run_id="r1"),
        inputs={},
        partition=0,
        clock=lambda: 0.0,
        rng=random.Random(1),
    )
    engine.start()
    (dispatch,) = engine.drain().dispatches
    raw = encode(dispatch.message)
    assert dispatch.message.args == {"token": "${{ secrets.API_TOKEN }}", "n": 1}
    record = DeadLetter.from_stream_entry(
        b"1700000000000-0",
        {
            b"stream": b"{t:q:default}:normal",
            b"id": b"1699999999999-0",
            b"queue": b"default",
            b"deliveries": b"4",
            b"reason": b"MaxDeliveriesExceeded",
            b"error": b"delivered 4 times",
            FIELD: raw,
        },
    )
    assert record.payload is not None
    assert record.payload["args"]["token"] == "${{ secrets.API_TOKEN }}"
    assert (record.run_id, record.step_key, record.attempt) == ("r1", "call", 1)
    assert SECRET not in json.dumps(record, default=str)
