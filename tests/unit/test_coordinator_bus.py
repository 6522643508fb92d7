"""`CoordinatorBus`, every Redis call of the coordinator, against the real Redis the fixtures start;
`sort_entries` (pure) and `bus.send`, the one XADD of a wire message."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis

from orchestrator import bus
from orchestrator.coordinator_bus import CoordinatorBus, sort_entries
from orchestrator.keys import COORDINATOR_GROUP, WORKER_GROUP, Keys
from orchestrator.messages import Dispatch
from orchestrator.run_inputs import RunInputs
from orchestrator.wire import FIELD, ControlMessage, ResultMessage, StepMessage, decode_step, encode


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


def make_bus(client: redis.Redis, namespace: str, consumer: str = "c1") -> CoordinatorBus:
    return CoordinatorBus(client, Keys(namespace), consumer=consumer)


def result(run: str = "r1", step: str = "a") -> ResultMessage:
    return ResultMessage(run=run, step=step, attempt=1, status="succeeded", output={"ok": True})


def test_sort_entries_decodes_wake_ups_results_and_refuses_garbage() -> None:
    entries = [
        ("{ns:p0}:control", b"1-0", {FIELD: encode(ControlMessage(kind="submitted", run="r1"))}),
        ("{ns:p0}:control", b"1-1", {FIELD: encode(ControlMessage(kind="cancel", run="r2"))}),
        ("{ns:p0}:results", b"2-0", {FIELD: encode(result())}),
        ("{ns:p0}:results", b"2-1", {FIELD: b"not json"}),
        ("{ns:p0}:results", b"2-2", None),  # trimmed while pending: only acknowledged
    ]
    inbox = sort_entries(entries)
    assert inbox.count == 5
    assert inbox.acks == {"{ns:p0}:control": [b"1-0", b"1-1"], "{ns:p0}:results": [b"2-0", b"2-1", b"2-2"]}
    assert inbox.submitted == {"r1"}
    assert inbox.commands
    assert [(r.run, r.step) for r in inbox.results] == [("r1", "a")]
    [(stream, entry_id, fields, reason, _)] = inbox.unreadable
    assert (stream, entry_id, fields, reason) == ("{ns:p0}:results", b"2-1", {FIELD: b"not json"}, "UndecodableMessage")
    assert not inbox.groups_lost


def test_read_replays_unacknowledged_entries_until_they_are_acknowledged(client: redis.Redis, namespace: str) -> None:
    keys = Keys(namespace)
    coordinator = make_bus(client, namespace)
    coordinator.acquire([0, 1], gained=[0, 1])
    assert coordinator.read([0, 1], count=10, block_ms=10).count == 0  # nothing pending: caught up
    bus.send(client, [(keys.results_stream(1), result()), (keys.control_stream(0), ControlMessage("submitted", "r9"))])
    inbox = coordinator.read([0, 1], count=10, block_ms=10)
    assert (inbox.count, inbox.submitted, [r.run for r in inbox.results]) == (2, {"r9"}, ["r1"])
    assert coordinator.read([0, 1], count=10, block_ms=10).count == 0  # read once, by this consumer

    coordinator.forget()  # a failed write: the loop reloads, and reads what it did not acknowledge
    again = coordinator.read([0, 1], count=10, block_ms=10)
    assert again.acks == inbox.acks
    coordinator.publish([], again.acks)
    assert client.xpending(keys.results_stream(1), COORDINATOR_GROUP)["pending"] == 0
    coordinator.forget()
    assert coordinator.read([0, 1], count=10, block_ms=10).count == 0


def test_hand_back_moves_a_lost_partitions_pending_entries_to_the_new_owner_as_new_entries(
    client: redis.Redis, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = Keys(namespace)
    old, new = make_bus(client, namespace, "c-old"), make_bus(client, namespace, "c-new")
    old.acquire([0, 1], gained=[0, 1])
    assert old.read([0, 1], count=10, block_ms=10).count == 0
    new.acquire([0], gained=[0])  # the partition changed hands before the entries arrived
    assert new.read([0], count=10, block_ms=10).count == 0
    bus.send(
        client,
        [
            (keys.results_stream(0), result("r1")),
            (keys.results_stream(0), result("gone")),
            (keys.control_stream(0), ControlMessage("submitted", "r2")),
            (keys.results_stream(1), result("r3")),
        ],
    )
    read = old.read([0, 1], count=10, block_ms=10)  # ... and the old owner read them: a fenced batch
    assert read.count == 4
    client.xdel(keys.results_stream(0), read.acks[keys.results_stream(0)][1])  # trimmed while pending

    def broken(stream: str) -> int:
        raise redis.ConnectionError("Redis went away")

    monkeypatch.setattr(old, "_hand_back_stream", broken)
    with pytest.raises(redis.ConnectionError):
        old.hand_back([0])
    monkeypatch.undo()
    assert old.hand_back() == 2  # the next call finishes what the failed one left: the trimmed one only acked
    assert old.hand_back() == 0

    def pending(stream: str, consumer: str) -> int:
        return len(client.xpending_range(stream, COORDINATOR_GROUP, "-", "+", 10, consumername=consumer))

    assert pending(keys.results_stream(0), "c-old") == pending(keys.control_stream(0), "c-old") == 0
    assert pending(keys.results_stream(1), "c-old") == 1  # still held: replayed by its own next read
    inbox = new.read([0], count=10, block_ms=10)
    assert (inbox.count, inbox.submitted, [r.run for r in inbox.results]) == (2, {"r2"}, ["r1"])


def test_a_group_gone_with_its_stream_is_recreated_and_reported(client: redis.Redis, namespace: str) -> None:
    keys = Keys(namespace)
    coordinator = make_bus(client, namespace)
    coordinator.acquire([0], gained=[0])
    coordinator.read([0], count=10, block_ms=10)
    client.delete(keys.results_stream(0), keys.control_stream(0))  # FLUSHALL, a restart without AOF
    inbox = coordinator.read([0], count=10, block_ms=10)
    assert inbox.groups_lost
    assert inbox.count == 0
    for stream in (keys.results_stream(0), keys.control_stream(0)):
        assert [g["name"] for g in client.xinfo_groups(stream)] == [COORDINATOR_GROUP.encode()]


def test_publish_writes_inputs_keys_then_dispatches_then_acks_in_one_pipeline(
    client: redis.Redis, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = Keys(namespace)
    coordinator = make_bus(client, namespace)
    coordinator.acquire([0], gained=[0])
    coordinator.ensure_queues(["default"])
    coordinator.read([0], count=10, block_ms=10)
    bus.send(client, [(keys.results_stream(0), result())])
    inbox = coordinator.read([0], count=10, block_ms=10)
    inputs = RunInputs.of("r1", 0, {"n": 1})
    assert inputs is not None
    step = StepMessage(run="r1", step="b", attempt=1, handler="h", partition=0, inputs_digest=inputs.digest)
    sent: list[list[str]] = []
    real_execute = redis.client.Pipeline.execute

    def execute(self: redis.client.Pipeline, raise_on_error: bool = True) -> Any:
        sent.append([str(args[0]) for args, _ in self.command_stack])
        return real_execute(self, raise_on_error)

    monkeypatch.setattr(redis.client.Pipeline, "execute", execute)
    coordinator.publish([Dispatch(queue="default", priority="high", message=step, inputs=inputs)], inbox.acks)
    monkeypatch.undo()

    assert sent == [["SET", "EXPIRE", "XADD", "XACK"]]
    assert client.get(keys.run_inputs(0, "r1")) == inputs.encoded()
    [(_, fields)] = client.xrange(keys.queue_stream("default", "high"))
    assert decode_step(fields[FIELD]) == step
    assert client.xpending(keys.results_stream(0), COORDINATOR_GROUP)["pending"] == 0

    coordinator.run_finished("r1", 0)  # the key goes with the next publish, even without dispatches
    coordinator.publish([])
    assert client.get(keys.run_inputs(0, "r1")) is None


def test_a_finished_run_without_inputs_sends_nothing(
    client: redis.Redis, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    coordinator = make_bus(client, namespace)
    sent: list[list[str]] = []
    real_execute = redis.client.Pipeline.execute

    def execute(self: redis.client.Pipeline, raise_on_error: bool = True) -> Any:
        sent.append([str(args[0]) for args, _ in self.command_stack])
        return real_execute(self, raise_on_error)

    monkeypatch.setattr(redis.client.Pipeline, "execute", execute)
    coordinator.run_finished("r2", 0, has_inputs=False)  # no key was ever written for it
    coordinator.publish([])
    coordinator.run_finished("r3", 0)
    coordinator.publish([])
    assert sent == [["DEL"]]


def test_the_epoch_is_shared_and_its_loss_is_detected_then_restored(client: redis.Redis, namespace: str) -> None:
    keys = Keys(namespace)
    first, second = make_bus(client, namespace, "c1"), make_bus(client, namespace, "c2")
    first.claim_epoch()
    second.claim_epoch()
    assert not first.data_lost()
    assert not second.data_lost()
    client.delete(keys.epoch)
    assert first.data_lost()
    first.restore([0])
    assert not first.data_lost()
    assert not second.data_lost()  # the same epoch was written back
    assert client.xinfo_groups(keys.results_stream(0))


def test_queue_groups_are_created_once_until_forgotten(client: redis.Redis, namespace: str) -> None:
    keys = Keys(namespace)
    coordinator = make_bus(client, namespace)
    coordinator.ensure_queues(["io"])
    streams = keys.queue_streams("io")
    assert all(client.xinfo_groups(s)[0]["name"] == WORKER_GROUP.encode() for s in streams)
    client.delete(*streams)
    coordinator.ensure_queues(["io"])  # known: no round trip
    assert not any(client.exists(s) for s in streams)
    coordinator.forget_queues()
    coordinator.ensure_queues(["io"])
    assert all(client.xinfo_groups(s) for s in streams)


def test_cancel_set_registry_and_maintenance(client: redis.Redis, namespace: str) -> None:
    keys = Keys(namespace)
    coordinator = make_bus(client, namespace)
    coordinator.mark_cancelled("r1", 5.0)
    assert client.zscore(keys.cancelled, "r1") == 5.0
    coordinator.unmark_cancelled("r1")
    assert client.zscore(keys.cancelled, "r1") is None

    assert coordinator.heartbeat([0, 1], runs=3, now=100.0, ttl=10) == 1
    assert make_bus(client, namespace, "c2").heartbeat([], runs=0, now=100.0, ttl=10) == 2
    assert coordinator.heartbeat([0, 1], runs=3, now=111.0, ttl=10) == 1  # c2 missed a whole TTL
    [doc] = bus.live_members(client, keys.coordinators, keys.coordinator)
    assert (doc["id"], doc["partitions"], doc["runs"]) == ("c1", [0, 1], 3)
    coordinator.deregister()
    assert client.zrange(keys.coordinators, 0, -1) == []

    coordinator.ensure_queues(["default"])
    coordinator.acquire([0], gained=[0])
    coordinator.read([0], count=10, block_ms=10)
    bus.send(client, [(keys.results_stream(0), result("r1")), (keys.results_stream(0), result("r2"))])
    inbox = coordinator.read([0], count=10, block_ms=10)
    assert coordinator.attempts_in_redis({"default"}, [0]) == {("r1", "a", 1), ("r2", "a", 1)}
    coordinator.publish([], inbox.acks)
    coordinator.trim([0])  # acknowledged entries go
    assert client.xlen(keys.results_stream(0)) == 0
    assert coordinator.attempts_in_redis({"default"}, [0]) == set()
    coordinator.export_metrics(live_since=0.0)


def test_send_appends_one_entry_or_pipelines_several(client: redis.Redis, namespace: str) -> None:
    keys = Keys(namespace)
    bus.send(client, [])
    bus.send(client, [(keys.control_stream(0), ControlMessage("submitted", "r1"))])
    bus.send(client, [(keys.control_stream(0), ControlMessage("cancel", "r1")), (keys.results_stream(0), result())])
    assert [f[FIELD] for _, f in client.xrange(keys.control_stream(0))] == [
        encode(ControlMessage("submitted", "r1")),
        encode(ControlMessage("cancel", "r1")),
    ]
    assert client.xlen(keys.results_stream(0)) == 1
