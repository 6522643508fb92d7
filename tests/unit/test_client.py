"""The client's pure parts (what submit() accepts, error documents → SteppeErrors, argument checks)
and its failures without a server: nothing listening, a server that never answers."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from orchestrator import Client
from orchestrator.client import sources
from orchestrator.client.http import error_for
from orchestrator.client.transport import check_run_id, poll_delays
from orchestrator.errors import (
    ConfigError,
    InfrastructureError,
    RunNotFoundError,
    SpecValidationError,
    SteppeError,
    SubmitError,
)
from orchestrator.settings import Settings
from orchestrator.spec import load_workflow


def body(*problems: dict[str, object]) -> bytes:
    return orjson.dumps({"errors": list(problems)})


def test_a_mapping_is_rendered_as_the_yaml_the_api_renders() -> None:
    doc = sources.resolve({"name": "m", "steps": [{"id": "a", "handler": "builtin.noop", "with": {"x": "on"}}]})
    assert (doc.filename, doc.base_dir) == ("<workflow>", None)
    spec = load_workflow(doc.text)
    assert spec.steps[0].with_ == {"x": "on"}  # quoted: not read back as the boolean true


def test_text_paths_and_references_are_told_apart(tmp_path: Path) -> None:
    flow = tmp_path / "flow"  # a file without a suffix still counts when it exists
    flow.write_text("name: f\nsteps: []\n")
    assert sources.resolve(str(flow)) == sources.Document("name: f\nsteps: []\n", str(flow), tmp_path)
    assert sources.resolve(flow).base_dir == tmp_path
    assert sources.resolve("name: x\nsteps: []\n").filename == "<workflow>"
    assert sources.resolve("{name: x, steps: []}").text == "{name: x, steps: []}"
    with pytest.raises(SubmitError, match=r"no workflow file 'nowhere\.yaml'"):
        sources.resolve("nowhere.yaml")
    for ref in ("orders", "orders@3", "orders@latest"):  # deployed workflows (docs/spec.md §12.3)
        assert sources.resolve(ref) == sources.Document("", filename=ref, ref=ref)
    with pytest.raises(SubmitError, match="cannot submit a int"):
        sources.resolve(3)  # type: ignore[arg-type]


def test_positioned_422s_become_spec_validation_errors_with_the_same_positions() -> None:
    error = error_for(
        422,
        body({"message": "unknown field 'handlr'", "file": "flow.yaml", "line": 6, "column": 5}),
        base_url="http://x",
        what="submit",
    )
    assert isinstance(error, SpecValidationError)
    assert [(p.file, p.line, p.column, p.message) for p in error.problems] == [
        ("flow.yaml", 6, 5, "unknown field 'handlr'")
    ]
    assert str(error) == "flow.yaml:6:5: unknown field 'handlr'"


@pytest.mark.parametrize(
    ("status", "message", "kind", "text"),
    [
        (422, "unknown handler(s): x.y", SubmitError, "unknown handler"),
        (409, "run r-1 is already failed; there is nothing to cancel", SubmitError, "already failed"),
        (413, "request body over the limit", SubmitError, "over the limit"),
        (404, "no run 'r-1'; list runs with `steppe runs`", RunNotFoundError, "no run 'r-1'"),
        (404, "Not Found", SteppeError, "has no route for submit"),
        (401, "missing or wrong bearer token", ConfigError, "pass token="),
        (503, "Redis is unreachable", InfrastructureError, "Redis is unreachable"),
        (500, "boom", InfrastructureError, "failed submit"),
        (418, "teapot", SteppeError, "HTTP 418"),
    ],
)
def test_error_documents_map_back_to_the_steppe_error_tree(
    status: int, message: str, kind: type[SteppeError], text: str
) -> None:
    error = error_for(status, body({"message": message}), base_url="http://x", what="submit")
    assert type(error) is kind
    assert text in str(error)


def test_a_non_json_error_body_is_quoted() -> None:
    error = error_for(502, b"<html>bad gateway</html>", base_url="http://x", what="get run")
    assert isinstance(error, InfrastructureError)
    assert "bad gateway" in str(error)


def test_arguments_are_checked_before_any_connection() -> None:
    with pytest.raises(RunNotFoundError):
        check_run_id("../../etc")
    with pytest.raises(ConfigError, match="api_url"):
        Client(token="t")
    with pytest.raises(ConfigError, match="http:// or https://"):
        Client(api_url="steppe:8080")
    with Client(api_url="http://127.0.0.1:9") as client:
        with pytest.raises(ConfigError, match="unknown run status 'done'"):
            client.runs(status="done")
        with pytest.raises(ConfigError, match="limit"):
            client.runs(limit=0)
        with pytest.raises(ConfigError, match="at least 0"):
            client.result("r-1", timeout=-1)


def test_polls_back_off_from_5_ms_to_the_cap() -> None:
    delays = poll_delays()
    first = [next(delays) for _ in range(20)]
    assert first[0] == 0.005
    assert first == sorted(first)
    assert first[-1] == 1.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_nothing_listening_is_an_infrastructure_error_naming_the_url() -> None:
    port = free_port()
    unreachable = pytest.raises(InfrastructureError, match=f"cannot reach the Steppe API at http://127.0.0.1:{port}")
    with Client(api_url=f"http://127.0.0.1:{port}", connect_timeout=2) as client, unreachable:
        client.status("r-1")
    direct = Client(settings=Settings(redis_url=f"redis://127.0.0.1:{port}/0", database_url="postgresql://x@h/db"))
    with direct, pytest.raises(InfrastructureError, match="cannot reach Redis"):
        direct.status("r-1")


@pytest.fixture
def silent_server() -> Iterator[int]:
    """Accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(listener.getsockname()[1])
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    listener.close()


def test_a_server_that_never_answers_times_out_after_the_request_timeout(silent_server: int) -> None:
    with Client(api_url=f"http://127.0.0.1:{silent_server}", timeout=0.5) as client:
        started = time.monotonic()
        with pytest.raises(InfrastructureError, match=r"did not answer get run within 0\.5s"):
            client.status("r-1")
        assert time.monotonic() - started < 5
