"""The client contract (docs/spec.md §12.4): one suite, run against both transports.

`direct` talks to PostgreSQL and Redis; `http` talks to a real `steppe api` process. Both sit in
front of the same real cluster (a coordinator and a worker subprocess), shared by the module:
each test uses its own runs, workflow names and idempotency keys.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from orchestrator import AsyncClient, Client
from orchestrator.client import RunDocument
from orchestrator.errors import (
    ConfigError,
    RunFailedError,
    RunNotFoundError,
    RunTimeoutError,
    SpecValidationError,
    SteppeError,
    SubmitError,
)
from orchestrator.state import RunStatus, StepStatus
from tests.e2e.conftest import Env, make_env
from tests.e2e.test_api import TOKEN, ApiServer
from tests.helpers import assert_eventually

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

TRANSPORTS = ["direct", "http"]

ECHO = """
name: client-echo
inputs:
  who: {type: string, required: true}
steps:
  - id: greet
    handler: builtin.echo
    with: {greeting: "hello ${{ inputs.who }}"}
"""

AS_MAPPING: dict[str, Any] = {
    "name": "client-mapping",
    "inputs": {"n": {"type": "integer", "required": True}},
    "steps": [
        {"id": "first", "handler": "builtin.echo", "with": {"n": "${{ inputs.n }}"}},
        {
            "id": "second",
            "handler": "builtin.echo",
            "needs": ["first"],
            "with": {"seen": "${{ steps.first.output.n }}"},
        },
    ],
}

FAILING = """
name: client-failing
steps:
  - id: explode
    handler: builtin.fail
    with: {message: "boom: the disk is full", retryable: false}
"""

FLAKY = """
name: client-flaky
steps:
  - id: flaky
    handler: builtin.fail
    with: {message: "fails on its first attempt", times: 1}
    retry: {max_attempts: 1}
"""

SLEEPY = """
name: client-sleepy
steps:
  - id: nap
    handler: builtin.sleep
    with: {seconds: 30}
"""

# `handlr` is a typo on line 6, column 5.
BAD = """name: client-bad
steps:
  - id: ok
    handler: builtin.noop
  - id: typo
    handlr: builtin.noop
"""


@pytest.fixture(scope="module")
def cluster(
    redis_url: str, postgres_server: Any, template_database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Env, ApiServer]]:
    name = f"steppe_client_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_server.url_for("postgres"), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    env = make_env(redis_url, postgres_server.url_for(name), f"t{uuid.uuid4().hex[:12]}", tmp_path_factory.mktemp("c"))
    api = None
    try:
        env.start(workers=1)
        api = ApiServer(env.env, env.home)
        yield env, api
    finally:
        if api is not None:
            api.stop()
        env.close()
        with psycopg.connect(postgres_server.url_for("postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def options(kind: str, cluster: tuple[Env, ApiServer]) -> dict[str, Any]:
    env, api = cluster
    return {"settings": env.settings} if kind == "direct" else {"api_url": api.url, "token": TOKEN}


@pytest.fixture(params=TRANSPORTS)
def client(request: pytest.FixtureRequest, cluster: tuple[Env, ApiServer]) -> Iterator[Client]:
    with Client(**options(request.param, cluster), timeout=30) as c:
        yield c


@pytest.fixture
def env(cluster: tuple[Env, ApiServer]) -> Env:
    return cluster[0]


def test_a_mapping_runs_to_its_result(client: Client, env: Env) -> None:
    run = client.submit(AS_MAPPING, inputs={"n": 5})
    assert run.created
    assert run.workflow == "client-mapping"
    outputs = run.result(timeout=60)
    assert outputs == env.run(run.id)["outputs"]
    doc = run.status()
    assert isinstance(doc, RunDocument)
    assert (doc.status, doc.finished, doc.succeeded) == (RunStatus.SUCCEEDED, True, True)
    assert doc.steps["second"].status is StepStatus.SUCCEEDED
    assert doc.steps["second"].output == {"seen": 5}
    assert doc.inputs == {"n": 5}
    assert doc.finished_at is not None
    assert doc.finished_at >= doc.created_at
    assert client.get(run.id).workflow == "client-mapping"
    listed = client.runs(workflow="client-mapping")
    assert run.id in {r.run_id for r in listed}
    assert all(r.status is RunStatus.SUCCEEDED for r in client.runs(status="succeeded", limit=5))
    types = [e.type for e in run.history()]
    assert types[0] == "run.submitted"
    assert types[-1] == "run.succeeded"
    assert [e.seq for e in client.history(run.id, after=2)] == list(range(3, len(types) + 1))


def test_yaml_text_runs_to_its_result(client: Client) -> None:
    run = client.submit(ECHO, inputs={"who": "text"})
    run.result(timeout=60)
    assert run.status().steps["greet"].output == {"greeting": "hello text"}


def test_a_path_runs_to_its_result(client: Client, tmp_path: Path) -> None:
    path = tmp_path / "echo.yaml"
    path.write_text(ECHO)
    for source in (path, str(path)):
        run = client.submit(source, inputs={"who": "file"})
        run.result(timeout=60)
        assert run.status().steps["greet"].output == {"greeting": "hello file"}
    with pytest.raises(SubmitError, match="no workflow file"):
        client.submit(str(tmp_path / "missing.yaml"))
    with pytest.raises(SubmitError, match="no deployed workflow 'client-undeployed'"):
        client.submit("client-undeployed@3")


def test_a_deployed_version_runs_by_name_and_version(client: Client, env: Env) -> None:
    from orchestrator import deployed

    name = f"client-deployed-{uuid.uuid4().hex[:6]}"
    first = deployed.deploy(env.submitter, ECHO.replace("client-echo", name), filename="d.yaml", base_dir=None)
    second = deployed.deploy(
        env.submitter, ECHO.replace("client-echo", name).replace("hello", "hi"), filename="d.yaml", base_dir=None
    )
    assert (first.version, second.version) == (1, 2)
    old = client.submit(f"{name}@1", inputs={"who": "v1"})
    new = client.submit(name, inputs={"who": "latest"})
    assert old.workflow == new.workflow == name
    old.result(timeout=60)
    new.result(timeout=60)
    assert old.status().steps["greet"].output == {"greeting": "hello v1"}
    assert new.status().steps["greet"].output == {"greeting": "hi latest"}
    with pytest.raises(SubmitError, match=f"workflow '{name}' has no version 9"):
        client.submit(f"{name}@9")


def test_a_failing_run_raises_run_failed_error_with_the_step_error(client: Client) -> None:
    run = client.submit(FAILING)
    with pytest.raises(RunFailedError) as failed:
        run.result(timeout=60)
    error = failed.value
    assert (error.run_id, error.status) == (run.id, "failed")
    assert "boom: the disk is full" in error.step_errors["explode"]["message"]
    assert "explode" in str(error)
    assert "boom: the disk is full" in str(error)
    assert isinstance(error.document, RunDocument)
    assert error.document.steps["explode"].status is StepStatus.FAILED


def test_cancel_stops_a_running_run(client: Client, env: Env) -> None:
    run = client.submit(SLEEPY)
    assert_eventually(
        lambda: run.status().steps.get("nap") and run.status().steps["nap"].status is StepStatus.RUNNING,
        timeout=30,
        message=env.log,
    )
    client.cancel(run.id)
    with pytest.raises(RunFailedError) as cancelled:
        run.result(timeout=30)
    assert cancelled.value.status == "cancelled"
    with pytest.raises(SubmitError, match="already cancelled"):
        run.cancel()


def test_retry_resumes_a_failed_run(client: Client) -> None:
    run = client.submit(FLAKY)
    with pytest.raises(RunFailedError):
        run.result(timeout=60)
    client.retry(run.id)
    assert run.result(timeout=60) is not None
    assert run.status().steps["flaky"].output == {"attempts": 2}
    with pytest.raises(SubmitError, match="only failed or cancelled runs"):
        run.retry()


def test_an_idempotency_key_returns_the_same_run(client: Client) -> None:
    key = f"order-{uuid.uuid4().hex}"
    first = client.submit(ECHO, inputs={"who": "once"}, idempotency_key=key)
    second = client.submit(ECHO, inputs={"who": "once"}, idempotency_key=key)
    assert (second.id, first.created, second.created) == (first.id, True, False)


def test_unknown_runs_raise_run_not_found(client: Client) -> None:
    for call in (client.status, client.result, client.cancel, client.retry, client.history, client.get):
        with pytest.raises(RunNotFoundError, match="no run 'r-missing'"):
            call("r-missing")
    with pytest.raises(RunNotFoundError):
        client.status("not a run id!")


def test_an_invalid_workflow_raises_spec_validation_error_with_positions(client: Client, tmp_path: Path) -> None:
    with pytest.raises(SpecValidationError) as text:
        client.submit(BAD)
    assert any((p.file, p.line, p.column) == ("<workflow>", 6, 5) for p in text.value.problems), text.value.problems
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    with pytest.raises(SpecValidationError) as file:
        client.submit(path)
    assert any((p.file, p.line, p.column) == (str(path), 6, 5) for p in file.value.problems)
    with pytest.raises(SubmitError, match="who"):
        client.submit(ECHO, inputs={})  # a required input is missing


def test_result_times_out_while_the_run_keeps_going(client: Client) -> None:
    run = client.submit(SLEEPY)
    with pytest.raises(RunTimeoutError, match="still") as timed_out:
        run.result(timeout=0.5)
    assert isinstance(timed_out.value, TimeoutError)
    assert isinstance(timed_out.value, SteppeError)
    assert not run.status().finished
    run.cancel()


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_the_async_client_keeps_the_same_contract(kind: str, cluster: tuple[Env, ApiServer]) -> None:
    async def scenario() -> None:
        async with AsyncClient(**options(kind, cluster), timeout=30) as client:
            runs = [await client.submit(ECHO, inputs={"who": str(i)}) for i in range(3)]
            await asyncio.gather(*(run.result(timeout=60) for run in runs))
            assert [(await r.status()).steps["greet"].output for r in runs] == [
                {"greeting": f"hello {i}"} for i in range(3)
            ]
            failing = await client.submit(FAILING)
            with pytest.raises(RunFailedError, match="boom"):
                await failing.result(timeout=60)
            with pytest.raises(SpecValidationError):
                await client.submit(BAD)
            with pytest.raises(RunNotFoundError):
                await client.status("r-missing")
            sleepy = await client.submit(SLEEPY)
            with pytest.raises(RunTimeoutError):
                await sleepy.result(timeout=0.3)
            await sleepy.cancel()

    asyncio.run(scenario())


def test_client_reads_steppe_settings_from_the_environment(
    cluster: tuple[Env, ApiServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    env = cluster[0]
    for name in ("STEPPE_REDIS_URL", "STEPPE_DATABASE_URL", "STEPPE_NAMESPACE", "STEPPE_HOME"):
        monkeypatch.setenv(name, env.env[name])
    with Client() as client:
        assert client.submit(ECHO, inputs={"who": "env"}).result(timeout=60) is not None


def test_http_refuses_a_wrong_token_and_bounds_the_long_poll(cluster: tuple[Env, ApiServer]) -> None:
    api = cluster[1]
    with Client(api_url=api.url, token="wrong") as client, pytest.raises(ConfigError, match="refused the token"):
        client.runs()
    with api.client() as http:
        run_id = http.post("/v1/runs", json={"workflow": SLEEPY}).json()["run_id"]
        too_long = http.get(f"/v1/runs/{run_id}/wait", params={"timeout": 10_000})
        assert too_long.status_code == 422
        assert "STEPPE_API_MAX_WAIT" in too_long.text
        started = time.monotonic()
        doc = http.get(f"/v1/runs/{run_id}/wait", params={"timeout": 0.5}).json()
        assert doc["status"] in ("pending", "running")
        assert 0.4 < time.monotonic() - started < 10
        assert http.get("/v1/runs/r-missing/wait", params={"timeout": 5}).status_code == 404
        events = http.get(f"/v1/runs/{run_id}/events", params={"after": 0}).json()["events"]
        assert events[0]["type"] == "run.submitted"
        assert events[0]["seq"] == 1
        http.post(f"/v1/runs/{run_id}/cancel")
