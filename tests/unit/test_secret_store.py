"""A worker exposes only the secrets it was told to (workers.secrets), and what handlers print or log is redacted."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import structlog

from orchestrator.errors import ConfigError
from orchestrator.logging import configure_logging
from orchestrator.settings import Settings
from orchestrator.wire import ResultMessage, StepMessage
from workers.context import StepContext
from workers.registry import HandlerRegistry
from workers.runner import REDACTED, Redactor, StepRunner
from workers.secrets import SecretNotExposedError, SecretStore

TOKEN = "tok-" + "5e1f" * 6
ENV = {"API_TOKEN": TOKEN, "STEPPE_REDIS_URL": "redis://:hunter2hunter2@127.0.0.1:1/0", "HOME_DIR": "/home/x"}


def store(names: str = "API_TOKEN", directory: Path | None = None, env: dict[str, str] | None = None) -> SecretStore:
    settings = Settings(secrets=names, secrets_dir=directory)
    return SecretStore.from_settings(settings, env=ENV if env is None else env)


# -- which secrets are exposed ------------------------------------------------------------------------


def test_steppe_secrets_is_a_comma_separated_list_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEPPE_SECRETS", " API_TOKEN, DB_PASSWORD,,OTHER ")
    monkeypatch.setenv("STEPPE_SECRETS_DIR", "/run/secrets")
    settings = Settings()
    assert settings.secrets == ["API_TOKEN", "DB_PASSWORD", "OTHER"]
    assert settings.secrets_dir == Path("/run/secrets")
    assert Settings().model_copy(update={"secrets": []}).secrets == []


def test_only_listed_names_are_exposed_and_unexposed_ones_fail_with_what_to_set() -> None:
    s = store()
    assert s.lookup(["API_TOKEN"]) == {"API_TOKEN": TOKEN}
    assert s.exposed() == ["API_TOKEN"]
    with pytest.raises(SecretNotExposedError) as e:
        s.lookup(["STEPPE_REDIS_URL", "HOME_DIR", "API_TOKEN"], worker="w7")
    message = str(e.value)
    assert "on worker w7" in message
    assert "'HOME_DIR' is not exposed" in message
    assert "add HOME_DIR to STEPPE_SECRETS" in message
    assert "STEPPE_SECRETS_DIR" in message
    assert "'STEPPE_REDIS_URL' is not exposed" in message
    assert "Steppe's own settings" in message
    assert "hunter2" not in message
    assert "/home/x" not in message
    assert e.value.non_retryable
    assert SecretStore().exposed() == []  # nothing configured: nothing exposed


def test_a_listed_name_missing_from_the_environment_says_so() -> None:
    with pytest.raises(SecretNotExposedError, match="listed in STEPPE_SECRETS but the environment variable"):
        store("API_TOKEN,DB_PASSWORD").lookup(["DB_PASSWORD"])


@pytest.mark.parametrize(
    ("names", "message"),
    [
        ("STEPPE_REDIS_URL", "Steppe's own settings"),
        ("API-TOKEN", "not a secret name"),
        ("1ABC", "not a secret name"),
    ],
)
def test_bad_secret_settings_are_refused_at_start(names: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        store(names)


def test_a_missing_secrets_dir_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a directory"):
        store("", directory=tmp_path / "nope")


def test_secrets_dir_one_file_per_secret_read_when_needed(tmp_path: Path) -> None:
    (tmp_path / "DB_PASSWORD").write_text("s3cr3t-from-file\n")  # `echo value > file`
    (tmp_path / "PEM").write_text("-----BEGIN-----\nabc\n-----END-----\n\n")
    (tmp_path / "..data").mkdir()  # Kubernetes' own entries are not secrets
    (tmp_path / "db-password").write_text("not referenceable")
    (tmp_path / "BINARY").write_bytes(b"\xff\xfe")
    (tmp_path / "HUGE").write_bytes(b"x" * ((1 << 20) + 1))
    s = store("", directory=tmp_path)
    assert s.exposed() == ["BINARY", "DB_PASSWORD", "HUGE", "PEM"]
    assert s.lookup(["DB_PASSWORD", "PEM"]) == {
        "DB_PASSWORD": "s3cr3t-from-file",
        "PEM": "-----BEGIN-----\nabc\n-----END-----\n",
    }
    (tmp_path / "DB_PASSWORD").write_text("rotated-value")
    assert s.lookup(["DB_PASSWORD"]) == {"DB_PASSWORD": "rotated-value"}  # no restart needed
    with pytest.raises(SecretNotExposedError, match="not UTF-8"):
        s.lookup(["BINARY"])
    with pytest.raises(SecretNotExposedError, match="over the 1048576-byte limit"):
        s.lookup(["HUGE"])
    with pytest.raises(SecretNotExposedError, match=f"create a file {tmp_path / 'API_TOKEN'}"):
        s.lookup(["API_TOKEN"])  # in the environment, but neither listed nor a file
    assert set(s.values()) == {"DB_PASSWORD", "PEM"}  # unreadable ones are skipped


# -- the runner ---------------------------------------------------------------------------------------


@pytest.fixture
def restore_output() -> Iterator[None]:
    saved = structlog.get_config()
    processors = list(saved["processors"])
    factory = logging.getLogRecordFactory()
    streams = sys.stdout, sys.stderr
    yield
    structlog.configure(**{**saved, "processors": processors})
    logging.setLogRecordFactory(factory)
    sys.stdout, sys.stderr = streams


def run_steps(
    handler: Any, messages: list[StepMessage], *, secrets: SecretStore, redactor: Redactor | None = None
) -> list[ResultMessage]:
    registry = HandlerRegistry()
    for name in {m.handler for m in messages}:
        registry.register(name, handler)

    async def main() -> list[ResultMessage]:
        with ThreadPoolExecutor(max_workers=4) as executor:
            runner = StepRunner(
                registry=registry,
                executor=executor,
                worker_id="w1",
                payload_limit=1 << 20,
                redactor=redactor or Redactor(),
                secrets=secrets,
            )
            return list(
                await asyncio.gather(
                    *(runner.run(m, on_heartbeat=lambda: None, cancelled=asyncio.Event()) for m in messages)
                )
            )

    return asyncio.run(main())


def message(step: str = "call", handler: str = "t.h", secret: str = "API_TOKEN", **args: Any) -> StepMessage:
    return StepMessage(
        run="r1",
        step=step,
        attempt=1,
        handler=handler,
        partition=0,
        args={"token": f"${{{{ secrets.{secret} }}}}", **args},
    )


def test_a_step_referencing_an_unexposed_secret_fails_without_retry_and_without_calling_the_handler() -> None:
    calls: list[str] = []

    async def handler(ctx: StepContext, token: str) -> dict[str, Any]:
        calls.append(token)
        return {}

    [result] = run_steps(handler, [message(secret="STEPPE_REDIS_URL")], secrets=store())
    assert result.status == "failed"
    assert result.error is not None
    assert result.error.type == "SecretNotExposedError"
    assert not result.error.retryable
    assert "'STEPPE_REDIS_URL' is not exposed to handlers" in result.error.message
    assert "hunter2" not in result.error.message + result.error.traceback
    assert calls == []


def test_an_exposed_secret_reaches_the_handler_and_its_output_is_redacted_and_noted() -> None:
    async def handler(ctx: StepContext, token: str) -> dict[str, Any]:
        return {"echo": token, "b64": base64.b64encode(token.encode()).decode(), "n": 1}

    [result] = run_steps(handler, [message()], secrets=store())
    assert result.status == "succeeded"
    assert result.output == {"echo": REDACTED, "b64": REDACTED, "n": 1}
    assert result.redacted == ["API_TOKEN"]
    [clean] = run_steps(lambda ctx, token: {"length": len(token)}, [message()], secrets=store())
    assert clean.output == {"length": len(TOKEN)}
    assert clean.redacted == []


def _log_lines(err: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in err.splitlines() if line.startswith("{")]


def test_print_and_stderr_of_handlers_are_captured_per_step_and_logged_redacted(
    restore_output: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging(json=True)
    redactor = Redactor()
    redactor.install_log_processors()

    async def chatty(ctx: StepContext, token: str, lines: int) -> dict[str, Any]:
        for i in range(lines):
            print(f"{ctx.step_key} line {i}: {token!r}")
            await asyncio.sleep(0)  # interleave with the other step
        print("partial", token, end="")
        sys.stderr.write(f"warning for {ctx.step_key}: {base64.b64encode(token.encode()).decode()}\n")
        return {}

    results = run_steps(
        chatty,
        [message("a", lines=3), message("b", lines=3)],
        secrets=store(),
        redactor=redactor,
    )
    assert [r.status for r in results] == ["succeeded", "succeeded"]
    out, err = capsys.readouterr()
    assert TOKEN not in out + err
    assert base64.b64encode(TOKEN.encode()).decode() not in err
    captured = [e for e in _log_lines(err) if e["event"] == "handler_output"]
    for step in ("a", "b"):
        mine = [e for e in captured if e["step"] == step]
        assert [e["text"] for e in mine if e["stream"] == "stdout"] == [
            *(f"{step} line {i}: '{REDACTED}'" for i in range(3)),
            f"partial {REDACTED}",
        ], "each line is attributed to the step (task) that printed it"
        assert [e["text"] for e in mine if e["stream"] == "stderr"] == [f"warning for {step}: {REDACTED}"]
        assert all(e["run_id"] == "r1" for e in mine)
    print(f"outside a step {TOKEN}")  # the worker's own writes pass through, redacted
    assert capsys.readouterr().out == f"outside a step {REDACTED}\n"


def test_sync_handlers_their_stdlib_logging_and_unreferenced_exposed_secrets_are_redacted(
    restore_output: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging(json=True)
    redactor = Redactor()
    redactor.install_log_processors()
    lib = logging.StreamHandler(sys.stderr)  # the proxy installed above
    logging.getLogger("handler.lib").addHandler(lib)
    env = {**ENV, "OTHER": "other-secret-" + "9" * 8}

    def sync_handler(ctx: StepContext, token: str) -> dict[str, Any]:
        print("from a thread", token)
        logging.getLogger("handler.lib").warning("auth header %s", f"Bearer {token}")
        print("read by the handler itself:", os.environ.get("X", env["OTHER"]))
        time.sleep(0.01)
        return {}

    try:
        [result] = run_steps(sync_handler, [message()], secrets=store("API_TOKEN,OTHER", env=env), redactor=redactor)
    finally:
        logging.getLogger("handler.lib").removeHandler(lib)
    assert result.status == "succeeded"
    out, err = capsys.readouterr()
    assert TOKEN not in out + err
    assert env["OTHER"] not in out + err
    texts = [e["text"] for e in _log_lines(err) if e["event"] == "handler_output" and e["step"] == "call"]
    assert f"from a thread {REDACTED}" in texts
    assert f"auth header Bearer {REDACTED}" in texts  # the stdlib handler wrote to the captured stderr
    assert f"read by the handler itself: {REDACTED}" in texts


def test_the_step_event_says_when_its_output_was_redacted() -> None:
    from orchestrator.engine import RunEngine
    from orchestrator.spec import load_workflow
    from orchestrator.state import RunProjection
    from orchestrator.workflow import compile_workflow

    wf = compile_workflow(load_workflow("name: s\nsteps:\n  - {id: a, handler: t.h}\n  - {id: b, handler: t.h}\n"))
    engine = RunEngine(workflow=wf, projection=RunProjection(run_id="r1"), inputs={}, partition=0, clock=lambda: 0.0)
    engine.start()
    engine.drain()
    engine.on_result(ResultMessage(run="r1", step="a", attempt=1, status="succeeded", output=REDACTED, redacted=["T"]))
    engine.on_result(ResultMessage(run="r1", step="b", attempt=1, status="succeeded", output={"ok": 1}))
    events = {e.step: e.data for e in engine.drain().events if e.type.value == "step.succeeded"}
    assert events["a"]["output_redacted"] == {
        "secrets": ["T"],
        "note": "secret values in the output were replaced by ***",
    }
    assert "output_redacted" not in events["b"]
