"""What a worker makes of the entries it is handed and what its outbox holds (workers/entries.py,
`choose_claims` in workers/streams.py): pure, no Redis."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.wire import FIELD, ResultMessage, StepMessage, decode_result, encode
from patterns.dead_letter import DeadLetterReason
from workers import entries
from workers.entries import Delivery, Outgoing, Refused
from workers.streams import choose_claims

STREAM = "{t:q:default}:normal"
MESSAGE = StepMessage(run="r1", step="a", attempt=2, handler="test.echo", partition=3)


def delivery(message: bytes | None, deliveries: int = 1) -> Delivery:
    return Delivery(STREAM, b"1-1", None if message is None else {FIELD: message}, deliveries)


def test_a_readable_entry_decodes_to_its_step_message() -> None:
    assert delivery(encode(MESSAGE)).decode() == MESSAGE


@pytest.mark.parametrize(
    ("raw", "reason", "keeps_message"),
    [
        (None, DeadLetterReason.TRIMMED, False),  # deleted from the stream while pending
        (b"not json", DeadLetterReason.UNDECODABLE, False),
        (b'{"run": "r1"}', DeadLetterReason.UNDECODABLE, False),  # fields missing
        (encode(StepMessage(run="r1", step="a", attempt=1, handler="h", partition=0, v=99)), "v99", True),
    ],
)
def test_entries_a_worker_must_not_run_are_refused_with_the_reason(
    raw: bytes | None, reason: Any, keeps_message: bool
) -> None:
    refused = delivery(raw).decode()
    assert isinstance(refused, Refused)
    if reason == "v99":  # a version this worker does not read: never run, but its step fails
        assert refused.reason is DeadLetterReason.UNKNOWN_VERSION
        assert "99" in refused.error
    else:
        assert refused.reason is reason
    assert (refused.message is not None) is keeps_message
    assert refused.raw == raw


def test_a_finished_attempt_and_a_dead_letter_are_acknowledged_a_started_report_is_not() -> None:
    started = entries.started(STREAM, b"1-1", MESSAGE, worker="w1")
    assert started.partition == 3
    assert started.result is not None
    assert started.result.status == "started"
    assert not started.acks
    assert not started.finishes
    done = Outgoing(STREAM, b"1-1", 3, ResultMessage(run="r1", step="a", attempt=2, status="succeeded"))
    assert done.acks
    assert done.finishes
    trimmed = delivery(None)
    refused = trimmed.decode()
    assert isinstance(refused, Refused)
    dead = entries.dead_letter(trimmed, refused, queue="default", worker="w1", error=refused.error)
    assert dead.acks
    assert not dead.finishes
    assert dead.result is None
    assert dead.dead is not None
    assert dead.dead["reason"] == "TrimmedEntry"


def test_a_dead_lettered_step_fails_its_run_with_the_redacted_error() -> None:
    d = delivery(encode(MESSAGE), deliveries=6)
    refused = Refused(MESSAGE, d.raw, DeadLetterReason.MAX_DELIVERIES, "delivered 6 times, token s3cret")
    out = entries.dead_letter(d, refused, queue="default", worker="w1", error="delivered 6 times, token ***")
    assert out.finishes
    assert out.acks
    assert out.partition == 3
    assert out.dead is not None
    assert out.dead["stream"] == STREAM
    assert out.dead["id"] == b"1-1"
    assert out.dead["deliveries"] == 6
    assert out.dead["m"] == encode(MESSAGE)
    assert out.dead["worker"] == "w1"
    assert out.result is not None
    result = decode_result(encode(out.result))
    assert (result.run, result.step, result.attempt, result.status) == ("r1", "a", 2, "dead_lettered")
    assert result.error is not None
    assert result.error.type == "MaxDeliveriesExceeded"
    assert "s3cret" not in result.error.message
    assert "s3cret" not in str(out.dead["error"])
    assert (result.deliveries, result.stream_id, result.queue) == (6, "1-1", "default")


def rows(*delivered: tuple[bytes, int]) -> list[dict[str, Any]]:
    return [{"message_id": i, "times_delivered": n} for i, n in delivered]


def test_entries_that_lost_one_worker_are_all_taken_up_to_the_free_slots() -> None:
    wanted, suspect = choose_claims(rows((b"1-1", 1), (b"1-2", 1), (b"1-3", 1)), 2, False)
    assert wanted == {b"1-1": 2, b"1-2": 2}
    assert not suspect


def test_a_possible_poison_entry_runs_alone_fewest_deliveries_first() -> None:
    pending = rows((b"1-1", 4), (b"1-2", 2), (b"1-3", 1), (b"1-4", 3))
    wanted, suspect = choose_claims(pending, 5, False)
    assert wanted == {b"1-3": 2, b"1-2": 3}
    assert suspect
    wanted, suspect = choose_claims(pending, 5, True)  # a suspect already runs here
    assert wanted == {b"1-3": 2}
    assert suspect
    wanted, suspect = choose_claims(rows((b"1-1", 1), (b"1-2", 3)), 1, False)
    assert wanted == {b"1-1": 2}
    assert not suspect
