"""The HTTP API end to end: a real `steppe api` process, over real HTTP, in front of a real cluster."""

from __future__ import annotations

import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.dev.cluster import steppe_argv
from orchestrator.errors import SpecValidationError
from orchestrator.spec import load_workflow
from tests.e2e.conftest import Env
from tests.helpers import assert_eventually

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

TOKEN = "test-token-" + uuid.uuid4().hex
BODY_LIMIT = 64 * 1024
TERMINAL = {"succeeded", "failed", "cancelled", "compensated", "compensation_failed"}
YAML = {"Content-Type": "application/yaml"}

HELLO = """
name: api-hello
inputs:
  who: {type: string, required: true}
steps:
  - id: greet
    handler: builtin.echo
    with: {greeting: "hello ${{ inputs.who }}"}
  - id: shout
    handler: builtin.echo
    needs: [greet]
    with: {text: "${{ steps.greet.output.greeting }}", loud: true}
"""

SLEEPY = """
name: api-sleepy
steps:
  - id: nap
    handler: builtin.sleep
    with: {seconds: 30}
"""

FLAKY = """
name: api-flaky
steps:
  - id: flaky
    handler: builtin.fail
    with: {message: "fails on its first attempt", times: 1}
    retry: {max_attempts: 1}
"""

# `handlr` is a typo on line 6, column 5: the API must report it where the CLI would.
BAD = """name: api-bad
steps:
  - id: ok
    handler: builtin.noop
  - id: typo
    handlr: builtin.noop
"""


class ApiServer:
    """`steppe api` in a subprocess on a free loopback port; stopped by its pid."""

    def __init__(self, env: dict[str, str], log_dir: Path, **extra_env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"api-{self.port}.log"
        self._log = self.log_path.open("wb")
        env = {**env, "STEPPE_API_TOKEN": TOKEN, "STEPPE_API_MAX_BODY_BYTES": str(BODY_LIMIT), **extra_env}
        argv = [*steppe_argv(), "api", "--host", "127.0.0.1", "--port", str(self.port)]
        self.proc = subprocess.Popen(argv, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        try:
            assert_eventually(self._alive, timeout=30, message=self.log)
        except BaseException:
            self.stop()
            raise

    def _alive(self) -> bool:
        if self.proc.poll() is not None:
            pytest.fail(f"steppe api exited with code {self.proc.returncode}:\n{self.log()}")
        return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def client(self, *, token: str | None = TOKEN) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(e2e: Env) -> Iterator[ApiServer]:
    api = ApiServer(e2e.env, e2e.home)
    yield api
    api.stop()


@pytest.fixture
def api(server: ApiServer) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


def finish(api: httpx.Client, run_id: str, e2e: Env, timeout: float = 30) -> dict[str, Any]:
    def terminal() -> dict[str, Any] | None:
        doc = api.get(f"/v1/runs/{run_id}").raise_for_status().json()
        return doc if doc["status"] in TERMINAL else None

    return assert_eventually(terminal, timeout=timeout, interval=0.1, message=e2e.log)


def test_yaml_and_json_submissions_run_to_success_and_are_listed(e2e: Env, api: httpx.Client) -> None:
    e2e.start(workers=2)

    r = api.post("/v1/runs", content=HELLO, headers=YAML, params={"wait": 30, "input": "who=yaml"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["created"] is True
    assert r.headers["location"] == f"/v1/runs/{body['run_id']}"
    assert body["status"] == "succeeded", e2e.log()
    assert body["run"]["steps"]["shout"]["output"] == {"text": "hello yaml", "loud": True}
    yaml_run = body["run_id"]

    as_mapping = {
        "name": "api-hello",
        "inputs": {"who": {"type": "string", "required": True}},
        "steps": [{"id": "greet", "handler": "builtin.echo", "with": {"greeting": "hi ${{ inputs.who }}"}}],
    }
    r = api.post("/v1/runs", json={"workflow": as_mapping, "inputs": {"who": "mapping"}})
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "pending"
    mapping_run = r.json()["run_id"]
    r = api.post("/v1/runs", json={"workflow": HELLO, "inputs": {"who": "text"}})
    assert r.status_code == 201, r.text
    text_run = r.json()["run_id"]

    doc = finish(api, mapping_run, e2e)
    assert doc["status"] == "succeeded"
    assert doc["steps"]["greet"] == {**doc["steps"]["greet"], "status": "succeeded", "attempts": 1}
    assert doc["steps"]["greet"]["output"] == {"greeting": "hi mapping"}
    assert "definition" not in doc
    assert finish(api, text_run, e2e)["steps"]["shout"]["output"]["text"] == "hello text"
    full = api.get(f"/v1/runs/{text_run}", params={"include_definition": True}).json()
    assert full["definition"]["name"] == "api-hello"

    listed = api.get("/v1/runs", params={"workflow": "api-hello"}).json()["runs"]
    assert {r["run_id"] for r in listed} == {yaml_run, mapping_run, text_run}
    assert all(r["status"] == "succeeded" and r["finished_at"] for r in listed)
    created = [r["created_at"] for r in listed]
    assert created == sorted(created, reverse=True)
    assert len(api.get("/v1/runs", params={"status": "succeeded", "limit": 1}).json()["runs"]) == 1
    assert api.get("/v1/runs", params={"status": "running"}).json()["runs"] == []
    assert api.get("/v1/runs", params={"status": "nonsense"}).status_code == 422


def test_cancel_and_retry(e2e: Env, api: httpx.Client) -> None:
    e2e.start(workers=1)
    run_id = api.post("/v1/runs", content=SLEEPY, headers=YAML).json()["run_id"]
    assert_eventually(
        lambda: api.get(f"/v1/runs/{run_id}").json()["steps"].get("nap", {}).get("status") == "running",
        timeout=20,
        message=e2e.log,
    )

    r = api.post(f"/v1/runs/{run_id}/cancel")
    assert r.status_code == 202
    assert r.json() == {"run_id": run_id, "requested": "cancel"}
    assert finish(api, run_id, e2e, timeout=20)["status"] == "cancelled"
    again = api.post(f"/v1/runs/{run_id}/cancel")
    assert again.status_code == 409
    assert "already cancelled" in again.json()["errors"][0]["message"]

    flaky = api.post("/v1/runs", content=FLAKY, headers=YAML, params={"wait": 30}).json()
    assert flaky["status"] == "failed", e2e.log()
    r = api.post(f"/v1/runs/{flaky['run_id']}/retry")
    assert r.status_code == 202
    # The run stays `failed` until the coordinator takes the request, so wait for the new outcome.
    resumed = assert_eventually(
        lambda: (doc := api.get(f"/v1/runs/{flaky['run_id']}").json())["status"] == "succeeded" and doc,
        timeout=30,
        message=e2e.log,
    )
    assert resumed["steps"]["flaky"]["output"] == {"attempts": 2}
    refused = api.post(f"/v1/runs/{flaky['run_id']}/retry")
    assert refused.status_code == 409
    assert "only failed or cancelled runs" in refused.json()["errors"][0]["message"]


def test_unknown_runs_are_404(api: httpx.Client) -> None:
    for method, path in (
        ("GET", "/v1/runs/r-missing"),
        ("POST", "/v1/runs/r-missing/cancel"),
        ("POST", "/v1/runs/r-missing/retry"),
    ):
        r = api.request(method, path)
        assert r.status_code == 404, (method, path, r.text)
        assert "no run 'r-missing'" in r.json()["errors"][0]["message"]


def test_idempotency_key_returns_the_existing_run(api: httpx.Client) -> None:
    body = {"workflow": HELLO, "inputs": {"who": "once"}, "idempotency_key": "order-42"}
    first = api.post("/v1/runs", json=body, params={"check_handlers": False})
    assert first.status_code == 201, first.text
    second = api.post("/v1/runs", json=body, params={"check_handlers": False})
    assert second.status_code == 200
    assert second.json()["created"] is False
    assert second.json()["run_id"] == first.json()["run_id"]

    by_header = api.post(
        "/v1/runs",
        content=HELLO,
        params={"check_handlers": False, "input": "who=once"},
        headers={**YAML, "Idempotency-Key": "order-42"},
    )
    assert (by_header.status_code, by_header.json()["run_id"]) == (200, first.json()["run_id"])
    clash = api.post("/v1/runs", json=body, headers={"Idempotency-Key": "order-43"})
    assert clash.status_code == 422
    assert len(api.get("/v1/runs", params={"workflow": "api-hello"}).json()["runs"]) == 1


def test_invalid_documents_are_422_with_the_cli_messages_and_positions(api: httpx.Client) -> None:
    with pytest.raises(SpecValidationError) as cli:
        load_workflow(BAD, filename="flow.yaml")
    expected = [{"message": p.message, "file": p.file, "line": p.line, "column": p.column} for p in cli.value.problems]
    assert any((p["line"], p["column"]) == (6, 5) for p in expected), expected

    r = api.post("/v1/runs", content=BAD, headers=YAML, params={"filename": "flow.yaml"})
    assert r.status_code == 422
    assert r.json() == {"errors": expected}
    r = api.post("/v1/runs", json={"workflow": BAD}, params={"filename": "flow.yaml"})
    assert (r.status_code, r.json()) == (422, {"errors": expected})

    r = api.post(
        "/v1/runs", content=b'{"workflow": "name: x",\n  "inputs": [1,}', headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 422
    [error] = r.json()["errors"]
    assert error["message"].startswith("invalid JSON")
    assert (error["file"], error["line"]) == ("<request body>", 2)

    r = api.post("/v1/runs", json={"workflow": HELLO, "inputs": ["who"]})
    assert r.status_code == 422
    assert r.json()["errors"][0]["message"].startswith("body.inputs")

    r = api.post("/v1/runs", json={"workflow": HELLO, "inputs": {}}, params={"check_handlers": False})
    assert r.status_code == 422
    assert "who" in r.json()["errors"][0]["message"]

    r = api.post("/v1/runs", json={"workflow": HELLO.replace("builtin.echo", "shop.nothing"), "inputs": {"who": "x"}})
    assert r.status_code == 422
    assert "shop.nothing" in r.json()["errors"][0]["message"]

    r = api.post("/v1/runs", content=b"name: x", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415
    assert "application/yaml" in r.json()["errors"][0]["message"]


def test_bearer_token_guards_the_v1_routes_but_not_the_probes(server: ApiServer) -> None:
    with server.client(token=None) as anonymous, server.client(token="wrong") as wrong, server.client() as right:
        for client in (anonymous, wrong):
            r = client.get("/v1/runs")
            assert r.status_code == 401
            assert r.headers["www-authenticate"] == "Bearer"
            assert "STEPPE_API_TOKEN" in r.json()["errors"][0]["message"]
            assert client.post("/v1/runs", content=HELLO, headers=YAML).status_code == 401
        assert right.get("/v1/runs").status_code == 200
        assert anonymous.get("/healthz").json() == {"status": "ok"}
        assert anonymous.get("/readyz").status_code == 200
        assert anonymous.get("/docs").status_code == 200
        paths = anonymous.get("/openapi.json").json()["paths"]
        assert {
            "/v1/runs",
            "/v1/runs/{run_id}",
            "/v1/runs/{run_id}/cancel",
            "/v1/runs/{run_id}/retry",
            "/healthz",
            "/readyz",
        } <= set(paths)


def test_oversize_bodies_are_413_before_being_read(server: ApiServer, api: httpx.Client) -> None:
    big = "name: big\n# " + "x" * BODY_LIMIT + "\nsteps: []\n"
    r = api.post("/v1/runs", content=big, headers=YAML)
    assert r.status_code == 413
    assert "STEPPE_API_MAX_BODY_BYTES" in r.json()["errors"][0]["message"]

    def chunks() -> Iterator[bytes]:
        for _ in range(3):  # just over the limit: the server reads all of it before refusing
            yield b"#" * (BODY_LIMIT // 2)

    r = api.post("/v1/runs", content=chunks(), headers=YAML)  # chunked: no Content-Length to check up front
    assert r.status_code == 413

    # A declared 1 GiB body is refused from its headers alone: nothing of it is ever sent.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
        raw.sendall(
            b"POST /v1/runs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/yaml\r\n"
            + f"Authorization: Bearer {TOKEN}\r\nContent-Length: {2**30}\r\n\r\n".encode()
        )
        head = raw.recv(4096).decode()
    assert head.startswith("HTTP/1.1 413"), head


def test_readyz_names_the_server_that_is_down(e2e: Env, server: ApiServer) -> None:
    with server.client() as client:
        r = client.get("/readyz")
    assert r.status_code == 200
    assert r.json()["checks"] == {"redis": "ok", "postgres": "ok"}

    no_redis = ApiServer(e2e.env, e2e.home, STEPPE_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    try:
        with no_redis.client() as client:
            r = client.get("/readyz")
            assert r.status_code == 503
            body = r.json()
            assert body["status"] == "unavailable"
            assert body["checks"]["postgres"] == "ok"
            assert body["checks"]["redis"] != "ok"
            assert [e["message"].split(" ")[0] for e in body["errors"]] == ["redis"]
            submit = client.post("/v1/runs", json={"workflow": HELLO, "inputs": {"who": "x"}})
            assert submit.status_code == 503
            assert "Redis" in submit.json()["errors"][0]["message"]
            assert client.get("/v1/runs").status_code == 200  # reads need PostgreSQL only
    finally:
        no_redis.stop()
