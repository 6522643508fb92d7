"""Bad input to the HTTP API is a 4xx with the error document, never a 500: NUL, deep JSON, hooks, /readyz."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import orjson
import pytest

from tests.e2e.conftest import Env
from tests.e2e.test_api import HELLO, YAML, ApiServer, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

UNCHECKED = {"check_handlers": False}
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def module_server(redis_url: str, database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """One `steppe api` for the module: these tests only submit, and each looks at its own answers."""
    from tests.e2e.conftest import process_env

    home = tmp_path_factory.mktemp("api-bad-input")
    # A body limit above the 200 KB of a 100,000-level body, so that its depth is what is refused.
    server = ApiServer(
        process_env(redis_url, database_url, "bad-input", home), home, STEPPE_API_MAX_BODY_BYTES="1048576"
    )
    yield server
    server.stop()


@pytest.fixture
def api(module_server: ApiServer) -> Iterator[httpx.Client]:
    with module_server.client() as client:
        yield client


def error_of(r: httpx.Response, status: int = 422) -> dict[str, Any]:
    """The single entry of the error document of a refused request (status checked first)."""
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"errors"}, body
    assert body["errors"], body
    for entry in body["errors"]:
        assert set(entry) == {"message", "file", "line", "column"}, entry
    return dict(body["errors"][0])


def nested(depth: int, leaf: str = "[]") -> str:
    return "[" * depth + leaf + "]" * depth


def test_nul_in_yaml_values_and_keys_is_422_at_its_position(api: httpx.Client) -> None:
    value = 'name: nul-value\nsteps:\n  - id: a\n    handler: builtin.echo\n    with: {text: "a\\0b"}\n'
    error = error_of(api.post("/v1/runs", content=value, headers=YAML, params={**UNCHECKED, "filename": "f.yaml"}))
    assert "NUL" in error["message"], error
    assert (error["file"], error["line"], error["column"]) == ("f.yaml", 5, 18)

    key = 'name: nul-key\nsteps:\n  - id: a\n    handler: builtin.echo\n    with: {"k\\x00": 1}\n'
    error = error_of(api.post("/v1/runs", content=key, headers=YAML, params=UNCHECKED))
    assert "NUL" in error["message"], error
    assert error["line"] == 5, error

    # The same document given as a JSON mapping: rendered as YAML, refused by the same check.
    mapping = {"name": "nul-map", "steps": [{"id": "a", "handler": "builtin.echo", "with": {"t": "x\u0000"}}]}
    error = error_of(api.post("/v1/runs", json={"workflow": mapping}, params=UNCHECKED))
    assert "NUL" in error["message"], error


def test_nul_in_json_inputs_keys_and_values_is_422(api: httpx.Client) -> None:
    for inputs in ({"who": "a\u0000b"}, {"who": "x", "k\u0000": 1}, {"who": {"deep": ["\u0000"]}}):
        error = error_of(api.post("/v1/runs", json={"workflow": HELLO, "inputs": inputs}, params=UNCHECKED))
        assert "NUL" in error["message"], (inputs, error)
        assert "inputs" in error["message"], error
    error = error_of(api.post("/v1/runs", json={"workflow": HELLO, "inputs": {"who": "x"}, "idempotency_key": "k\0"}))
    assert "NUL" in error["message"], error


def test_nul_in_query_strings_is_422(api: httpx.Client) -> None:
    error = error_of(api.post("/v1/runs", content=HELLO, headers=YAML, params={**UNCHECKED, "input": "who=a\0b"}))
    assert "NUL" in error["message"], error
    error = error_of(api.post("/v1/runs", content=HELLO, headers=YAML, params={**UNCHECKED, "input": 'who="\\u0000"'}))
    assert "NUL" in error["message"], error
    error = error_of(api.get("/v1/runs", params={"workflow": "a\0b"}))
    assert "NUL" in error["message"], error
    error = error_of(api.post("/v1/runs", content=HELLO, headers=YAML, params={**UNCHECKED, "filename": "f\0.yaml"}))
    assert "NUL" in error["message"], error


@pytest.mark.parametrize("depth", [400, 100_000])
def test_deeply_nested_json_is_422(api: httpx.Client, depth: int) -> None:
    body = '{"workflow": ' + orjson.dumps(HELLO).decode() + ', "inputs": {"who": ' + nested(depth) + "}}"
    error = error_of(api.post("/v1/runs", content=body, headers=JSON, params=UNCHECKED))
    assert "nest" in error["message"], error
    deep_workflow = '{"workflow": {"name": "deep", "steps": ' + nested(depth) + "}}"
    error = error_of(api.post("/v1/runs", content=deep_workflow, headers=JSON, params=UNCHECKED))
    assert "nest" in error["message"], error
    error = error_of(
        # At most 5,000 levels in a URL (the HTTP server limits its length); json.loads recurses at 1,000.
        api.post(
            "/v1/runs", content=HELLO, headers=YAML, params={**UNCHECKED, "input": "who=" + nested(min(depth, 5000))}
        )
    )
    assert "nest" in error["message"], error


def test_unknown_hook_handlers_are_refused_at_submit(e2e: Env) -> None:
    e2e.start(workers=1)
    hooked = HELLO + "hooks:\n  - on: run.finished\n    handler: ops.nowhere\n"
    # The module's server uses another namespace: talk to one in front of this test's cluster.
    server = ApiServer(e2e.env, e2e.home)
    try:
        with server.client() as client:
            r = client.post("/v1/runs", json={"workflow": hooked, "inputs": {"who": "x"}})
            error = error_of(r)
            assert "ops.nowhere" in error["message"], error
            ok = client.post("/v1/runs", json={"workflow": HELLO, "inputs": {"who": "x"}})
            assert ok.status_code == 201, ok.text
    finally:
        server.stop()


def test_readyz_names_the_backend_that_is_down_but_no_user(e2e: Env) -> None:
    user = "alice_ops"
    down = f"redis://{user}:pw@127.0.0.1:{free_port()}/0"
    db = urlsplit(e2e.settings.resolved_database_url())
    bad_db = urlunsplit(db._replace(netloc=f"{user}:secret@{db.hostname}:{db.port}"))
    server = ApiServer(e2e.env, e2e.home, STEPPE_REDIS_URL=down, STEPPE_DATABASE_URL=bad_db)
    try:
        with server.client(token=None) as anonymous:
            r = anonymous.get("/readyz")
        log = server.log()
    finally:
        server.stop()
    assert r.status_code == 503, r.text + log
    body = r.json()
    assert body["status"] == "unavailable"
    assert set(body["checks"]) == {"redis", "postgres"}
    assert body["checks"]["redis"] != "ok"
    assert body["checks"]["postgres"] != "ok"
    assert sorted(e["message"].split(" ")[0] for e in body["errors"]) == ["postgres", "redis"]
    assert user not in r.text, r.text
    assert "secret" not in r.text, r.text
    assert "pw@" not in r.text, r.text
