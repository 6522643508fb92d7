"""Dead-letter reasons: one enum whose values are what rows have always stored, the old spellings
mapped onto it, and the rows each source builds (issue 15)."""

from __future__ import annotations

import pytest

from orchestrator.wire import FIELD, UNDECODABLE, UNKNOWN_VERSION, ResultMessage, StepErrorInfo
from patterns.dead_letter import DeadLetter, DeadLetterReason, stream_entry, unreadable_entry

# What `dead_letters.reason` holds in existing databases, and what `steppe dlq list` shows.
STORED = {
    "MaxDeliveriesExceeded": DeadLetterReason.MAX_DELIVERIES,
    "UndecodableMessage": DeadLetterReason.UNDECODABLE,
    "UnknownSchemaVersion": DeadLetterReason.UNKNOWN_VERSION,
    "TrimmedEntry": DeadLetterReason.TRIMMED,
    "compensation_failed": DeadLetterReason.COMPENSATION_FAILED,
    "unknown": DeadLetterReason.UNKNOWN,
}


def test_the_values_are_the_texts_rows_already_hold() -> None:
    assert {reason.value: reason for reason in DeadLetterReason} == STORED
    assert DeadLetterReason(UNDECODABLE) is DeadLetterReason.UNDECODABLE  # the wire's reason texts
    assert DeadLetterReason(UNKNOWN_VERSION) is DeadLetterReason.UNKNOWN_VERSION


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        *STORED.items(),
        ("max_deliveries", DeadLetterReason.MAX_DELIVERIES),  # what the coordinator wrote without an error
        ("max-deliveries", DeadLetterReason.MAX_DELIVERIES),
        ("MAX_DELIVERIES", DeadLetterReason.MAX_DELIVERIES),
        ("maxdeliveriesexceeded", DeadLetterReason.MAX_DELIVERIES),
        ("undecodable", DeadLetterReason.UNDECODABLE),
        ("undecodable_message", DeadLetterReason.UNDECODABLE),
        ("unknown_version", DeadLetterReason.UNKNOWN_VERSION),
        ("trimmed", DeadLetterReason.TRIMMED),
        ("CompensationFailed", DeadLetterReason.COMPENSATION_FAILED),
        (" compensation-failed ", DeadLetterReason.COMPENSATION_FAILED),
        ("", DeadLetterReason.UNKNOWN),
        (None, DeadLetterReason.UNKNOWN),
        ("SomethingNewer", DeadLetterReason.UNKNOWN),
    ],
)
def test_every_spelling_maps_onto_one_reason(text: str | None, reason: DeadLetterReason) -> None:
    assert DeadLetterReason.parse(text) is reason


def test_a_filter_matches_the_older_spellings_too() -> None:
    assert DeadLetterReason.spellings("max_deliveries") == ["MaxDeliveriesExceeded", "max_deliveries"]
    assert DeadLetterReason.spellings("MaxDeliveriesExceeded") == ["MaxDeliveriesExceeded", "max_deliveries"]
    assert DeadLetterReason.spellings("undecodable") == ["UndecodableMessage"]
    assert DeadLetterReason.spellings("no-such-reason") == ["no-such-reason"]


def _result(error: StepErrorInfo | None) -> ResultMessage:
    return ResultMessage(
        run="r1", step="a", attempt=2, status="dead_lettered", worker="w", error=error, deliveries=6, queue="default"
    )


def test_a_dead_lettered_result_keeps_the_workers_reason() -> None:
    row = DeadLetter.from_result(_result(StepErrorInfo(type="MaxDeliveriesExceeded", message="delivered 6 times")))
    assert row.reason is DeadLetterReason.MAX_DELIVERIES
    assert (row.run_id, row.step_key, row.attempt, row.queue) == ("r1", "a", 2, "default")
    assert (row.stream_id, row.delivery_count, row.error) == ("r1/a/2", 6, "delivered 6 times")


def test_a_result_without_an_error_is_max_deliveries_in_the_stored_spelling() -> None:
    row = DeadLetter.from_result(_result(None))
    assert (row.reason.value, row.error) == ("MaxDeliveriesExceeded", "dead-lettered")  # was "max_deliveries"


def test_a_reason_this_version_does_not_know_stays_readable_in_the_error() -> None:
    row = DeadLetter.from_result(_result(StepErrorInfo(type="QuotaExhausted", message="no more")))
    assert (row.reason, row.error) == (DeadLetterReason.UNKNOWN, "QuotaExhausted: no more")
    entry = DeadLetter.from_stream_entry(b"1-0", {b"queue": b"q", b"reason": b"QuotaExhausted", b"error": b"x"})
    assert (entry.reason, entry.error) == (DeadLetterReason.UNKNOWN, "QuotaExhausted: x")


def test_a_stream_entry_without_a_reason_is_unknown() -> None:
    row = DeadLetter.from_stream_entry(b"1700000000000-3", {b"queue": b"default", FIELD: b"not json"})
    assert (row.reason, row.error, row.run_id, row.payload) == (DeadLetterReason.UNKNOWN, "", None, None)
    assert (row.stream_id, row.raw, row.delivery_count) == ("1700000000000-3", "not json", 0)
    assert row.created_at is not None
    assert row.created_at.timestamp() == 1_700_000_000


def test_a_failed_compensation_is_compensation_failed() -> None:
    row = DeadLetter.compensation(
        run_id="r1", step_key="pay:compensate", attempt=3, queue="default", error={"type": "Boom", "message": "down"}
    )
    assert row.reason is DeadLetterReason.COMPENSATION_FAILED
    assert (row.stream_id, row.error) == ("compensation:r1/pay:compensate/3", "Boom: down")


def test_workers_and_the_coordinator_write_stream_entries_of_one_shape() -> None:
    worker = stream_entry(
        stream="s",
        entry_id=b"1-1",
        queue="default",
        deliveries=6,
        reason=DeadLetterReason.MAX_DELIVERIES,
        error="e",
        raw=b"m",
        by="w",
    )
    coordinator = unreadable_entry("{ns:p0}:results", b"2-0", {FIELD: b"?"}, UNDECODABLE, "bad", by="c")
    assert set(worker) == set(coordinator) == {"stream", "id", "queue", "deliveries", "reason", "error", "m", "worker"}
    assert (worker["reason"], coordinator["reason"]) == ("MaxDeliveriesExceeded", "UndecodableMessage")
    assert type(worker["reason"]) is str  # Redis and the metrics see the stored text
    fields = {k.encode(): (v if isinstance(v, bytes) else str(v).encode()) for k, v in worker.items()}
    back = DeadLetter.from_stream_entry(b"1-2", fields)
    assert (back.reason, back.stream_id, back.queue, back.delivery_count) == (
        DeadLetterReason.MAX_DELIVERIES,
        "1-1",
        "default",
        6,
    )
