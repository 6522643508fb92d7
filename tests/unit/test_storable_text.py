"""Handler text that PostgreSQL cannot store is escaped where it crosses the wire (issue 14, case 2)."""

from __future__ import annotations

import msgspec
import orjson
import pytest

from orchestrator.sanitize import storable, storable_text
from orchestrator.wire import (
    ControlMessage,
    ResultMessage,
    StepErrorInfo,
    decode_control,
    decode_result,
    encode,
)


@pytest.mark.parametrize(
    ("text", "stored"),
    [
        ("a\x00b", "a\\u0000b"),
        ("\x00", "\\u0000"),
        ("lone \ud800 high", "lone \\ud800 high"),
        ("lone \udfff low", "lone \\udfff low"),
        ("plain ascii", "plain ascii"),
        ("ok 😀 é \u202e", "ok 😀 é \u202e"),  # valid Unicode, RTL override included, is kept
    ],
)
def test_storable_text_escapes_only_nul_and_unpaired_surrogates(text: str, stored: str) -> None:
    assert storable_text(text) == stored
    assert "\x00" not in orjson.loads(orjson.dumps(stored))  # encodable, and no NUL that jsonb refuses


def test_storable_walks_keys_values_and_lists() -> None:
    value = {"k\x00": ["x\x00", {"\ud800": 1.5}, None, True, 7], "n": {"deep": ("t\x00",)}}
    assert storable(value) == {"k\\u0000": ["x\\u0000", {"\\ud800": 1.5}, None, True, 7], "n": {"deep": ["t\\u0000"]}}


def test_storable_does_not_recurse_without_bound() -> None:
    deep: list[object] = ["\x00"]
    for _ in range(5000):
        deep = [deep]
    storable(deep)  # no RecursionError: beyond MAX_DEPTH a value is returned as it is


def _result_bytes(**fields: object) -> bytes:
    return orjson.dumps({"run": "r1", "step": "a", "attempt": 1, "status": "failed", **fields})


def test_a_nul_in_an_error_message_traceback_and_output_is_escaped_on_decode() -> None:
    raw = _result_bytes(
        output={"text\x00key": "va\x00lue"},
        error={"type": "ValueError", "message": "a\x00b", "traceback": "line\x00"},
        worker="w\x00",
    )
    assert b"\\u0000" in raw  # what a worker publishes for raise ValueError("a\x00b")
    result = decode_result(raw)
    assert result.error == StepErrorInfo(type="ValueError", message="a\\u0000b", traceback="line\\u0000")
    assert result.output == {"text\\u0000key": "va\\u0000lue"}
    assert result.worker == "w\\u0000"
    builtins = msgspec.to_builtins(result)
    assert storable(builtins) == builtins  # nothing unstorable left


def test_a_clean_result_decodes_unchanged() -> None:
    raw = _result_bytes(output={"path": "C:\\\\u0000dir"}, error={"type": "E", "message": "m"})
    result = decode_result(raw)
    assert result.output == {"path": "C:\\\\u0000dir"}  # an escaped backslash is not a NUL
    assert result.error == StepErrorInfo(type="E", message="m")


def test_a_nul_in_a_control_message_run_id_is_escaped() -> None:
    assert decode_control(orjson.dumps({"kind": "submitted", "run": "r\x00"})) == ControlMessage(
        kind="submitted", run="r\\u0000"
    )


def test_garbage_still_raises_the_decode_errors_the_coordinator_handles() -> None:
    with pytest.raises(msgspec.ValidationError):
        decode_result(orjson.dumps({"run": "r\x00", "step": 3}))
    with pytest.raises(msgspec.DecodeError):
        decode_result(_result_bytes()[:-1] + b',"output":' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    with pytest.raises(msgspec.DecodeError):  # the same through the escaping path
        decode_result(_result_bytes(worker="\x00")[:-1] + b',"output":' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    with pytest.raises(msgspec.DecodeError):
        decode_result(b'{"run": "r", "step": "a", "attempt": 1, "status": "failed", "worker": "\\ud800"}')


def test_encoding_a_result_with_an_unpaired_surrogate_escapes_it() -> None:
    # A handler raising ValueError("\ud800"): the worker's publish must not fail on it.
    result = ResultMessage(
        run="r1",
        step="a",
        attempt=1,
        status="failed",
        output={"k\ud800": "v\udc00"},
        error=StepErrorInfo(type="ValueError", message="bad \ud800", traceback="tb \udfff"),
    )
    decoded = decode_result(encode(result))
    assert decoded.error == StepErrorInfo(type="ValueError", message="bad \\ud800", traceback="tb \\udfff")
    assert decoded.output == {"k\\ud800": "v\\udc00"}
    assert (decoded.run, decoded.step, decoded.attempt, decoded.status) == ("r1", "a", 1, "failed")
