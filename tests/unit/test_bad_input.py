"""Bad input is refused with a message where it enters: the pure checks behind the API's 4xx and the CLI's exit 2."""

from __future__ import annotations

from typing import Any

import orjson
import psycopg
import pytest
import redis

from orchestrator.api.config import ApiSettings
from orchestrator.api.query import query_problem
from orchestrator.api.readiness import failure_kind, message
from orchestrator.errors import DatabaseUnavailableError, SubmitError
from orchestrator.settings import Settings
from orchestrator.spec import load_workflow, parse_cli_inputs, validate_inputs
from orchestrator.spec.values import MAX_DEPTH, value_problem
from orchestrator.submit import Submitter
from orchestrator.wire import (
    FIELD,
    SCHEMA_VERSION,
    StepMessage,
    decode_control,
    decode_result,
    decode_step,
    encode,
    read_entry,
    version_problem,
)
from patterns.dead_letter import RAW_LIMIT, parse_args, unreadable_entry


def nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


# --- values: NUL, surrogates, depth -----------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "path", "words"),
    [
        ("a\x00b", "who", "holds a NUL character"),
        ({"k\x00": 1}, "who", "has a key that holds a NUL"),
        ({"tags": ["ok", "x\ud800"]}, "who.tags[1]", "unpaired surrogate"),
        (nested(MAX_DEPTH + 1), "who" + "[0]" * 5 + "…(89 more)…", "nests deeper than 100 levels"),
    ],
)
def test_value_problems_name_the_path(value: Any, path: str, words: str) -> None:
    found = value_problem(value, at=("who",))
    assert found is not None
    assert found[0].startswith(path)
    assert words in found[1]


def test_fine_values_and_the_depth_bound() -> None:
    assert value_problem({"a": [1, "text", None, {"b": 2.5}], "ünï": "çødé 😀"}) is None
    assert value_problem(nested(MAX_DEPTH)) is None
    deep = value_problem(nested(100_000))  # no recursion: a 100,000-level value is just refused
    assert deep is not None
    assert "…(" in deep[0]  # the path is shortened


def test_inputs_with_nul_or_deep_values_are_refused_with_exit_code_2() -> None:
    spec = load_workflow("name: wf\ninputs:\n  who: {type: any}\nsteps:\n  - {id: a, handler: builtin.echo}\n")
    for provided, words in (
        ({"who": "a\x00"}, "input who holds a NUL character"),
        ({"w\x00": 1}, "input name 'w\\x00' holds a NUL character"),
        ({"who": nested(100_000)}, "nests deeper than 100 levels"),
    ):
        with pytest.raises(SubmitError) as info:
            validate_inputs(spec, provided)
        assert words in str(info.value)
        assert info.value.exit_code == 2
    with pytest.raises(SubmitError, match="--input who nests deeper than 100 levels"):
        parse_cli_inputs(["who=" + "[" * 5000 + "]" * 5000])  # json.loads would raise RecursionError


def test_replayed_arguments_with_nul_are_refused() -> None:
    with pytest.raises(ValueError, match=r"args\.a holds a NUL character"):
        parse_args('{"a": "\\u0000"}', source="the payload file")


# --- the API's query strings and /readyz -----------------------------------------------------


def test_query_strings_with_nul_are_refused() -> None:
    assert query_problem(b"workflow=order&limit=5") is None
    assert query_problem(b"input=who%3Dx%2500") is None  # "%25" is a percent sign, "%2500" the text "%00"
    value = query_problem(b"limit=5&workflow=a%00b")
    assert value is not None
    assert "the value of query parameter 'workflow' holds a NUL character" in value
    name = query_problem(b"a%00=1")
    assert name is not None
    assert name.startswith("the name of query parameter 'a\\x00'")


@pytest.mark.parametrize(
    ("error", "phrase"),
    [
        (redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused."), "unreachable"),
        (redis.exceptions.AuthenticationError("invalid username-password pair"), "authentication"),
        (psycopg.OperationalError('FATAL:  role "alice_ops" does not exist'), "authentication"),
        (redis.exceptions.BusyLoadingError("LOADING Redis is loading the dataset in memory"), "starting up"),
        (RuntimeError("something else at postgresql://alice_ops@db/x"), "failed (RuntimeError)"),
    ],
)
def test_readiness_failures_are_fixed_phrases_without_server_text(error: Exception, phrase: str) -> None:
    kind = failure_kind(error)
    assert phrase in kind
    assert "alice" not in kind
    assert "127.0.0.1" not in kind
    assert message("redis", kind).startswith(f"redis is not ready: {kind}; check STEPPE_REDIS_URL")


def test_readiness_looks_through_wrapped_errors() -> None:
    cause = psycopg.OperationalError('password authentication failed for user "alice_ops"')
    wrapped = DatabaseUnavailableError("cannot connect to PostgreSQL at postgresql://alice_ops@db")
    wrapped.__cause__ = cause
    assert failure_kind(wrapped) == "authentication or authorisation refused"


def test_openapi_response_schemas_are_their_models_alone() -> None:
    from orchestrator.api.app import create_app

    settings = Settings(redis_url="redis://127.0.0.1:1/0", database_url="postgresql://x@127.0.0.1:1/x")
    document = create_app(settings, ApiSettings()).openapi()
    mixed = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            if "$ref" in node and len(node) > 1:
                mixed.append((path, node))
            for key, child in node.items():
                walk(child, f"{path}/{key}")
        elif isinstance(node, list):
            for i, child in enumerate(node):
                walk(child, f"{path}/{i}")

    walk(document, "")
    assert mixed == []
    created = document["paths"]["/v1/runs"]["post"]["responses"]["201"]["content"]["application/json"]
    assert created["schema"] == {"$ref": "#/components/schemas/SubmitResponse"}


# --- submit checks hook handlers -------------------------------------------------------------


def test_submit_checks_the_handlers_of_hooks_too() -> None:
    spec = load_workflow(
        "name: wf\nsteps:\n  - {id: a, handler: builtin.echo}\n"
        "hooks:\n  - {on: run.finished, handler: ops.notify}\n  - {on: step.dispatching, kind: pre, handler: ops.vet}\n"
    )
    definition = spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert Submitter.handlers_of(definition) == {"builtin.echo", "ops.notify", "ops.vet"}


# --- stream entries: unknown schema versions and garbage ------------------------------------


def test_unknown_schema_versions_are_refused_with_the_reason() -> None:
    step = StepMessage(run="r-1", step="a", attempt=1, handler="builtin.echo", partition=0)
    assert version_problem(step) is None
    assert version_problem(decode_step(b'{"run":"r","step":"a","attempt":1,"handler":"h","partition":0,"v":1}')) is None
    future = decode_step(encode(StepMessage(run="r-1", step="a", attempt=1, handler="h", partition=0, v=99)))
    problem = version_problem(future)
    assert problem is not None
    assert "schema version 99" in problem
    assert "same Steppe version" in problem

    result, refused = read_entry(
        {FIELD: b'{"run":"r","step":"a","attempt":1,"status":"succeeded","v":7}'}, decode_result
    )
    assert result is None
    assert refused is not None
    assert refused[0] == "UnknownSchemaVersion"
    control, refused = read_entry({FIELD: b"\x80garbage"}, decode_control)
    assert control is None
    assert refused is not None
    assert refused[0] == "UndecodableMessage"
    ok, refused = read_entry({FIELD: f'{{"kind":"wake","v":{SCHEMA_VERSION}}}'.encode()}, decode_control)
    assert refused is None
    assert ok is not None
    assert ok.kind == "wake"


def test_unreadable_entries_keep_their_raw_fields_bounded() -> None:
    big = unreadable_entry(
        "{ns:p0}:results", b"1-0", {FIELD: b"x" * (RAW_LIMIT * 3)}, "UndecodableMessage", "bad", by="c"
    )
    assert big["m"] == b"x" * RAW_LIMIT
    assert "cut to the first 8,192" in big["error"]
    assert (big["queue"], big["id"], big["deliveries"], big["worker"]) == ("{ns:p0}:results", b"1-0", 1, "c")
    other = unreadable_entry("s", b"1-1", {b"x": b"\xff", b"y": b"2"}, "UndecodableMessage", "bad", by="c")
    assert orjson.loads(other["m"]) == {"x": "\\xff", "y": "2"}
    assert other["error"] == "bad"
