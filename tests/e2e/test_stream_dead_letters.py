"""Stream entries no process may act on are dead-lettered with the reason, and listed by `steppe dlq`:
step messages of an unknown schema version (never executed), garbage and unknown versions on the
results and control streams (never applied)."""

from __future__ import annotations

import msgspec
import orjson
import pytest

from orchestrator.keys import WORKER_GROUP, Keys
from orchestrator.store.leases import partition_of
from orchestrator.wire import FIELD, decode_step, encode
from patterns.dead_letter import RAW_LIMIT
from tests.e2e.conftest import Env
from tests.e2e.test_breaker_dlq import steppe_json
from tests.helpers import assert_eventually

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

# Its step waits on a queue nobody serves until the test has put its forged message there.
LATER = """
name: later
steps:
  - id: a
    handler: test.witness
    queue: later
"""
NOW = """
name: now
steps:
  - {id: a, handler: builtin.noop}
"""


def dlq_entries(e2e: Env) -> dict[tuple[str, str], dict[str, str]]:
    """`{ns}:dlq` as (original stream, id) → its fields (text); ids repeat across streams."""
    out = {}
    for _, fields in e2e.redis.xrange(Keys(e2e.settings.namespace).dlq_stream):
        entry = {k.decode(): v.decode(errors="backslashreplace") for k, v in fields.items()}
        out[entry["stream"], entry["id"]] = entry
    return out


def test_unknown_versions_and_garbage_are_dead_lettered_never_run_or_applied(e2e: Env) -> None:
    keys = Keys(e2e.settings.namespace)
    e2e.start(workers=1)
    run_id = e2e.submit(LATER)
    queue = keys.queue_stream("later")
    assert_eventually(lambda: e2e.redis.xlen(queue) == 1, timeout=20, message=e2e.log)
    [(original_id, fields)] = e2e.redis.xrange(queue)
    step = decode_step(fields[FIELD])

    results = keys.results_stream(partition_of(run_id, e2e.settings.coordinator.partitions))
    control = keys.control_stream(partition_of(run_id, e2e.settings.coordinator.partitions))

    def add(stream: str, fields: dict[str, bytes]) -> str:
        return str(e2e.redis.xadd(stream, fields).decode())  # type: ignore[arg-type]

    forged = {"run": run_id, "step": "a", "attempt": step.attempt, "status": "succeeded", "output": 1, "v": 99}
    big = b"\x80" + b"g" * (3 * RAW_LIMIT)
    sent = {
        (results, add(results, {FIELD: orjson.dumps(forged)})): "UnknownSchemaVersion",
        (results, add(results, {FIELD: b"\x80\x81 not json"})): "UndecodableMessage",
        (results, add(results, {FIELD: big})): "UndecodableMessage",
        (results, add(results, {"x": b"no m field", "y": b"2"})): "UndecodableMessage",
        (control, add(control, {FIELD: b'{"kind": "submitted", "run": "r-x", "v": 99}'})): "UnknownSchemaVersion",
        (control, add(control, {FIELD: b"[]"})): "UndecodableMessage",
    }
    # The coordinator keeps serving other runs meanwhile.
    innocent = e2e.submit(NOW)
    assert_eventually(lambda: e2e.run(innocent)["status"] == "succeeded", timeout=20, message=e2e.log)
    assert_eventually(lambda: set(sent) <= set(dlq_entries(e2e)), timeout=20, message=e2e.log)
    dead = dlq_entries(e2e)
    for key, reason in sent.items():
        assert dead[key]["reason"] == reason, dead[key]
        assert dead[key]["queue"] == key[0]
        assert dead[key]["deliveries"] == "1"
    assert "schema version 99" in dead[next(iter(sent))]["error"]
    assert '"v":99' in dead[next(iter(sent))]["m"]
    cut = next(e for e in dead.values() if e["m"].startswith("\\x80g"))
    assert len(cut["m"]) == RAW_LIMIT + 3  # the first RAW_LIMIT bytes; "\x80" shows as 4 characters
    assert "cut to the first" in cut["error"]
    assert "no m field" in next(e for e in dead.values() if '"x"' in e["m"])["m"]
    # The forged success was not applied: the step still waits for a worker.
    assert e2e.run(run_id)["steps"]["a"]["status"] == "dispatched"

    # A step message of a version this worker does not read replaces the real one on the queue.
    e2e.redis.xdel(queue, original_id)
    future = msgspec.structs.replace(step, v=99)
    future_id = e2e.redis.xadd(queue, {FIELD: encode(future)}).decode()
    e2e.start_worker(queues=["later"])
    assert_eventually(lambda: e2e.run(run_id)["status"] == "failed", timeout=30, message=e2e.log)
    doc = e2e.run(run_id)
    assert doc["steps"]["a"]["status"] == "dead_lettered"
    assert doc["steps"]["a"]["error"]["type"] == "UnknownSchemaVersion"
    assert "schema version 99" in doc["steps"]["a"]["error"]["message"]
    assert e2e.witness("calls") == {}, "the message was executed"
    assert dlq_entries(e2e)[queue, future_id]["reason"] == "UnknownSchemaVersion"
    assert not e2e.redis.xpending(queue, WORKER_GROUP)["pending"]

    # `steppe dlq list` shows every one of them.
    listed = {(r["queue"], r["stream_id"]): r for r in steppe_json(e2e, "dlq", "list")}
    assert {**dict.fromkeys(sent), ("later", future_id): None}.keys() <= listed.keys()
    assert listed["later", future_id]["run_id"] == run_id
    assert {listed[key]["reason"] for key in sent} == {"UnknownSchemaVersion", "UndecodableMessage"}
